//! The load generator cannot rot unseen: each scenario runs at tiny counts against the real
//! server (in this process, port 0) and its JSON summary is checked. One test, the scenarios one
//! after another (they measure the server process, so they must not overlap): one server for
//! them all, then one with webhooks posting to the `webhook` scenario's receiver.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// Runs `switchboard-bench SCENARIO` against `addr` and returns its JSON summary.
/// A one-second fan-out to `members` at 20 broadcasts a second, with `more` arguments.
fn short_fanout<'a>(members: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--members",
        members,
        "--rate",
        "20",
        "--duration",
        "1",
        "--drain-secs",
        "1",
    ];
    args.extend_from_slice(more);
    args
}

async fn bench(addr: SocketAddr, ip_base: u8, scenario: &str, args: &[&str]) -> Value {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"));
    cmd.arg(scenario)
        .args(["--addr", &addr.to_string()])
        .args(["--server-pid", &std::process::id().to_string()])
        .args(["--ip-base", &ip_base.to_string(), "--max-secs", "60"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{scenario} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{scenario} printed no JSON ({e}): {stdout:?} {stderr}"));
    assert_eq!(summary["scenario"], scenario, "{summary}");
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_the_real_server() {
    let mut config = common::load_test_config();
    config.manager.ping_interval = Duration::from_millis(500);
    config.manager.pong_timeout = Duration::from_millis(500);
    let server = switchboard_server::spawn(config).await.unwrap();
    let addr = server.addr;

    let idle = bench(
        addr,
        231,
        "idle",
        &[
            "--conns",
            "40",
            "--lobbies",
            "2",
            "--hold",
            "1",
            "--settle",
            "1",
        ],
    )
    .await;
    assert_eq!(idle["connect"]["ok"], 40, "{idle}");
    assert_eq!(idle["connect"]["errors"], 0, "{idle}");
    assert_eq!(idle["open_at_end"], 40, "{idle}");
    assert!(idle["rss_kib_per_conn"].is_number(), "{idle}");

    let fanout = bench(
        addr,
        232,
        "fanout",
        &short_fanout("20", &["--payload", "100"]),
    )
    .await;
    let best = &fanout["best"];
    assert_eq!(best["lost"], 0, "{fanout}");
    assert_eq!(best["received"], best["expected"], "{fanout}");
    assert!(best["received"].as_u64().unwrap() >= 20 * 15, "{fanout}");
    assert!(
        best["deliveries_per_sec"].as_f64().unwrap() > 0.0,
        "{fanout}"
    );

    // `--deflate`: the members negotiate permessage-deflate and inflate what they read; the
    // 2 KB broadcasts go out compressed, once each.
    let deflated_before = server.manager.stats().messages_deflated;
    let args = short_fanout("20", &["--payload", "2000", "--deflate"]);
    let fanout = bench(addr, 238, "fanout", &args).await;
    let best = &fanout["best"];
    assert_eq!(best["lost"], 0, "{fanout}");
    assert_eq!(best["received"], best["expected"], "{fanout}");
    let deflated = server.manager.stats().messages_deflated - deflated_before;
    let published = best["expected"].as_u64().unwrap() / 20;
    assert!(
        deflated > 0 && deflated <= published + 5,
        "once per broadcast: {deflated} compressions for {published} broadcasts"
    );

    // `--payload-kind chat`: ~1 KiB chat message objects; the members count the bytes they
    // read, and with `--deflate` they read fewer per delivery (every message compressed
    // alone: no context takeover).
    let mut per_delivery = Vec::new();
    for (ip_base, deflate) in [(239, false), (240, true)] {
        let chat_args = ["--payload-kind", "chat", "--payload", "1024"];
        let mut args = short_fanout("10", &chat_args);
        if deflate {
            args.push("--deflate");
        }
        let chat = bench(addr, ip_base, "fanout", &args).await;
        let best = &chat["best"];
        assert_eq!(best["lost"], 0, "{chat}");
        assert_eq!(chat["payload_kind"], "chat", "{chat}");
        assert_eq!(chat["deflate_offered"], deflate, "{chat}");
        // The members and the publisher.
        assert_eq!(
            chat["deflate_negotiated"],
            if deflate { 11 } else { 0 },
            "{chat}"
        );
        let bytes = best["member_bytes_read"].as_u64().unwrap();
        let per = best["wire_bytes_per_delivery"].as_f64().unwrap();
        assert!(bytes >= best["received"].as_u64().unwrap() * 100, "{chat}");
        per_delivery.push(per);
    }
    // Plain: the ~1 KiB object in its envelope; compressed: clearly smaller, not padding-small.
    assert!(per_delivery[0] > 1024.0, "{per_delivery:?}");
    assert!(
        per_delivery[1] < per_delivery[0] * 0.8 && per_delivery[1] > 200.0,
        "{per_delivery:?}"
    );

    let churn = bench(
        addr,
        233,
        "churn",
        &[
            "--cycles",
            "200",
            "--secs",
            "20",
            "--workers",
            "4",
            "--warmup",
            "20",
        ],
    )
    .await;
    assert_eq!(churn["cycles_ok"], 200, "{churn}");
    assert_eq!(churn["errors"], 0, "{churn}");
    assert!(churn["cycles_per_sec"].as_f64().unwrap() > 0.0, "{churn}");

    // Removal observed through the stats API (the open files of this process are not only
    // the server's).
    let stats_url = format!("http://{addr}/api/stats");
    let stale = bench(
        addr,
        234,
        "stale",
        &[
            "--healthy",
            "4",
            "--frozen",
            "2",
            "--rate",
            "10",
            "--payload",
            "100",
            "--window",
            "4",
            "--expect-within",
            "2",
            "--stats-url",
            &stats_url,
        ],
    )
    .await;
    assert_eq!(stale["frozen_removed"], 2, "{stale}");
    assert_eq!(stale["healthy_dropped"], 0, "{stale}");
    assert_eq!(stale["healthy_lost"], 0, "{stale}");
    assert_eq!(stale["within_expectation"], true, "{stale}");

    // Protocol v2: 20 connections in no lobby, each joining 3 of 5 lobbies (12 members each).
    let lobbies = bench(
        addr,
        235,
        "lobbies",
        &[
            "--conns",
            "20",
            "--lobbies",
            "5",
            "--per-conn",
            "3",
            "--settle",
            "1",
        ],
    )
    .await;
    assert_eq!(lobbies["connect"]["ok"], 20, "{lobbies}");
    assert_eq!(lobbies["connect"]["errors"], 0, "{lobbies}");
    assert_eq!(lobbies["members_per_lobby"], 12.0, "{lobbies}");
    let joins = &lobbies["joins"];
    assert_eq!(joins["target"], 60, "{lobbies}");
    assert_eq!(joins["ok"], 60, "{lobbies}");
    assert_eq!(joins["refused"], 0, "{lobbies}");
    assert_eq!(joins["latency"]["count"], 60, "{lobbies}");
    assert!(joins["per_sec"].as_f64().unwrap() > 0.0, "{lobbies}");
    assert!(joins["server_cpu_us_per_join"].is_number(), "{lobbies}");
    assert_eq!(lobbies["closed"], 0, "{lobbies}");
    assert!(lobbies["rss_kib_per_conn"].is_number(), "{lobbies}");
    assert!(lobbies["bytes_per_membership"].is_number(), "{lobbies}");

    server.shutdown().await.unwrap();

    // Webhooks: the server posts `message` events to the load generator's receiver, whose
    // port must be known before the server starts: a free one, bound and let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = common::load_test_config();
    config.manager.node_id = "hooks".into();
    let url = format!("http://127.0.0.1:{port}/hook");
    for (key, value) in [
        ("webhook.url", url.as_str()),
        ("webhook.secret", "old,s"),
        ("webhook.events", "connect,message"),
        ("webhook.batch_max", "10"),
        ("webhook.batch_ms", "5"),
    ] {
        config.set(key, value).unwrap();
    }
    let server = switchboard_server::spawn(config).await.unwrap();
    // 20 clients in 2 lobbies, two steps: 50 and 100 messages/s for 1 s.
    let hooks = bench(
        server.addr,
        236,
        "webhook",
        &[
            "--clients",
            "20",
            "--lobbies",
            "2",
            "--rates",
            "50,100",
            "--secs",
            "1",
            "--drain-secs",
            "3",
            "--receiver",
            &format!("127.0.0.1:{port}"),
            "--secret",
            "s",
        ],
    )
    .await;
    assert_eq!(hooks["connect"]["ok"], 20, "{hooks}");
    assert_eq!(hooks["server_errors"], serde_json::json!({}), "{hooks}");
    let steps = hooks["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{hooks}");
    for (step, planned) in steps.iter().zip([50, 100]) {
        // Every message posted exactly once, every batch signed (by one of two secrets).
        assert_eq!(step["planned"], planned, "{hooks}");
        assert_eq!(step["sent"], planned, "{hooks}");
        assert_eq!(step["received"], planned, "{hooks}");
        assert_eq!(step["missing"], 0, "{hooks}");
        assert_eq!(step["duplicates"], 0, "{hooks}");
        assert_eq!(step["repeated_messages"], 0, "{hooks}");
        assert_eq!(step["bad_signatures"], 0, "{hooks}");
        assert_eq!(step["unreadable"], 0, "{hooks}");
        assert_eq!(step["events_by_type"]["message"], planned, "{hooks}");
        assert_eq!(step["latency"]["count"], planned, "{hooks}");
        let batches = step["batches"].as_u64().unwrap();
        assert!((planned / 10..=planned).contains(&batches), "{hooks}");
        assert!(step["events_per_sec"].as_f64().unwrap() > 0.0, "{hooks}");
        assert!(step["server_cpu_us_per_event"].is_number(), "{hooks}");
        assert_eq!(step["pass"], true, "{hooks}");
    }
    assert_eq!(hooks["pass"], true, "{hooks}");

    server.shutdown().await.unwrap();
}
