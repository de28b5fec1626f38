//! `fanout --sweep --past-saturation` against the real server (in this process, port 0): it
//! runs every step it was asked for, whatever fails, and each step reports the refused
//! publishes, the server's shed publishes (`--stats-url`), members closed and why, and losses.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_saturation_runs_every_step_and_reports_sheds_and_closes() {
    let config = common::load_test_config();
    let server = switchboard_server::spawn(config).await.unwrap();
    let addr = server.addr;
    let stats_url = format!("http://{addr}/api/stats");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"));
    cmd.arg("fanout")
        .args(["--addr", &addr.to_string()])
        .args(["--server-pid", &std::process::id().to_string()])
        .args(["--ip-base", "237", "--max-secs", "60"])
        .args([
            "--members",
            "20",
            "--payload",
            "100",
            "--sweep",
            "--past-saturation",
        ])
        .args([
            "--rate-start",
            "50",
            "--rate-factor",
            "4",
            "--max-steps",
            "3",
        ])
        .args(["--step-secs", "0.5", "--drain-secs", "0.5"])
        .args(["--stats-url", &stats_url, "--stuck", "2"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fanout failed: {stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["past_saturation"], true, "{summary}");
    assert_eq!(summary["stuck_members"], 2, "{summary}");
    let steps = summary["steps"].as_array().unwrap();
    // Every step runs (no stopping at a failure, no bisecting), at rates 50, 200, 800.
    assert_eq!(steps.len(), 3, "{summary}");
    let (mut closed, mut refused, mut shed) = (0, 0, 0);
    for (step, rate) in steps.iter().zip([50.0, 200.0, 800.0]) {
        assert_eq!(step["rate"], rate, "{summary}");
        for key in [
            "sent",
            "refused",
            "received",
            "deliveries_per_sec",
            "offset_gaps_lost",
            "recovered_lost",
            "members_closed",
            "server_rss_kib_max",
        ] {
            assert!(step[key].is_number(), "{key}: {step}");
        }
        assert!(step["close_reasons"].is_object(), "{step}");
        assert!(step["latency"]["p99_ms"].is_number(), "{step}");
        // The server's view, from its stats API.
        let node = &step["stats"][0];
        assert!(node["shed_publishes"].is_number(), "{step}");
        assert!(node["shed_deliveries"].is_number(), "{step}");
        assert!(node["lagging_members"].is_number(), "{step}");
        assert!(step["received"].as_u64().unwrap() > 0, "{step}");
        closed += step["members_closed"].as_u64().unwrap();
        refused += step["refused"].as_u64().unwrap();
        shed += node["shed_publishes"].as_u64().unwrap();
    }
    // Every refusal the publisher was told of is a publish the server shed (a refusal may be
    // read a step late, hence the totals).
    assert!(refused <= shed, "{summary}");
    // The first step is far below saturation: everything arrives.
    assert_eq!(steps[0]["pass"], true, "{summary}");
    assert_eq!(steps[0]["received"], 20 * 25, "{summary}");
    assert_eq!(
        summary["members_open_at_end"].as_u64().unwrap() + closed,
        20,
        "{summary}"
    );
    // The human table on stderr: a header, a rule and one row per step.
    assert!(stderr.contains("| msg/s offered |"), "{stderr}");
    assert!(stderr.contains("| 800 |"), "{stderr}");
    server.shutdown().await.unwrap();
}
