//! The real binary as an operator runs it: metrics, config file, admin listener, JSON logs,
//! handshake deadline, and a graceful shutdown with many clients.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchboard::DisconnectReason;
use tokio::io::AsyncReadExt;

/// Parses Prometheus text into `name{labels}` -> value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Every counter an alert may watch is on the first scrape, with each label value, at zero:
/// an alert on it can be written (and tested) before the first incident.
#[tokio::test]
async fn every_counter_is_exported_at_zero_from_the_first_scrape() {
    let p = Process::start(&[], None);
    let m = parse_metrics(&http(p.addr, "GET", "/metrics", None, None).await.body);
    let mut expected = vec![
        r#"switchboard_webhook_events_total{outcome="dropped"}"#.to_owned(),
        r#"switchboard_webhook_events_total{outcome="failed"}"#.to_owned(),
        r#"switchboard_proxy_calls_total{kind="connect",outcome="unavailable"}"#.to_owned(),
        r#"switchboard_proxy_calls_total{kind="join",outcome="refused"}"#.to_owned(),
        r#"switchboard_rpc_calls_total{outcome="failed"}"#.to_owned(),
        r#"switchboard_http_refused_total{reason="max_pending"}"#.to_owned(),
        "switchboard_queue_overflows_total".to_owned(),
        "switchboard_messages_dropped_total".to_owned(),
    ];
    for reason in DisconnectReason::ALL {
        let word = reason.as_str();
        let code = reason
            .close_code()
            .map_or("none".to_owned(), |c| c.to_string());
        expected.push(format!(
            r#"switchboard_rejections_total{{reason="{word}"}}"#
        ));
        expected.push(format!(
            r#"switchboard_closes_total{{code="{code}",reason="{word}"}}"#
        ));
    }
    for series in &expected {
        assert_eq!(m.get(series), Some(&0.0), "{series} at zero");
    }
    // Redis's counters are there in cluster mode only (tests/cluster.rs checks them).
    assert!(!m.contains_key("switchboard_redis_errors_total"));
}

#[tokio::test]
async fn metrics_reflect_real_traffic() {
    let p = Process::start(
        &[
            ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "2"),
            ("SWITCHBOARD_HEALTH__PING_INTERVAL_MS", "50"),
        ],
        None,
    );
    let mut a = connect(p.addr, "l1", "alice").await;
    let mut b = connect(p.addr, "l1", "bob").await;
    a.expect("member_joined", "bob's join").await;
    connect_refused(p.addr, "l1", "carol", ip(1))
        .await
        .assert(4002, "lobby_full", true);
    for i in 0..3 {
        a.send(broadcast(json!(i))).await;
        a.expect("message", "alice's own broadcast").await;
        b.expect("message", "alice's broadcast").await;
    }
    b.close().await;
    a.expect("member_left", "bob's leave").await;
    // Let a few health checks round-trip so the RTT histogram has samples.
    let mut seen = 0;
    while seen < 3 {
        let msg = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut a.ws))
            .await
            .unwrap();
        if let Some(Ok(
            tokio_tungstenite::tungstenite::Message::Pong(_)
            | tokio_tungstenite::tungstenite::Message::Ping(_),
        )) = msg
        {
            seen += 1;
        }
    }
    let text = http(p.addr, "GET", "/metrics", None, None).await;
    assert_eq!(text.status, 200);
    let m = parse_metrics(&text.body);
    assert_eq!(m["switchboard_connections"], 1.0);
    assert_eq!(m["switchboard_lobbies"], 1.0);
    assert_eq!(m["switchboard_users"], 1.0);
    assert_eq!(m["switchboard_messages_in_total"], 3.0);
    assert!(
        m["switchboard_messages_out_total"] >= 6.0,
        "{}",
        m["switchboard_messages_out_total"]
    );
    assert!(m["switchboard_bytes_in_total"] > 0.0);
    assert!(m["switchboard_bytes_out_total"] > 0.0);
    assert_eq!(
        m["switchboard_rejections_total{reason=\"lobby_full\"}"],
        1.0
    );
    assert_eq!(
        m["switchboard_closes_total{code=\"none\",reason=\"client_closed\"}"],
        1.0
    );
    assert_eq!(m["switchboard_queue_overflows_total"], 0.0);
    assert!(m["switchboard_broadcast_fanout_seconds_count"] >= 3.0);
    assert!(
        m["switchboard_ping_rtt_seconds_count"] >= 1.0,
        "{}",
        text.body
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("switchboard_ping_rtt_seconds_bucket{le="))
    );
}

#[tokio::test]
async fn config_file_with_environment_overrides() {
    let dir = std::env::temp_dir().join(format!("sb-prod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("switchboard.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_per_lobby = 1\nmax_connections = 5\n[api]\nkey = \"file-key\"\n",
    )
    .unwrap();
    let p = Process::start(&[("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "7")], Some(&file));
    let _a = connect(p.addr, "l1", "a").await;
    connect_refused(p.addr, "l1", "b", ip(1))
        .await
        .assert(4002, "lobby_full", true);
    let stats = http(p.addr, "GET", "/api/stats", Some("file-key"), None)
        .await
        .json();
    assert_eq!(
        stats["max_connections"], 7,
        "the environment wins over the file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The command line people expect: `--help` and `--version` answer and exit 0; a misspelt
/// option exits 2 naming it and suggesting the right one.
#[test]
fn help_version_and_a_misspelt_option() {
    let run = |arg: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg(arg)
            .output()
            .unwrap()
    };
    let help = run("--help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{text}");
    for needle in [
        "--config <FILE>",
        "--dev",
        "SWITCHBOARD_LIMITS__MAX_PER_LOBBY",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let version = run("--version");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("switchboard {}", env!("CARGO_PKG_VERSION"))
    );
    let typo = run("--deb");
    let text = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        text.contains("'--deb'") && text.contains("'--dev'"),
        "{text}"
    );
}

#[test]
fn a_bad_config_file_stops_the_server_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("sb-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[queue]\non_full = \"explode\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&file)
        .env("SWITCHBOARD_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("queue.on_full") && err.contains("close or drop"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn admin_bind_moves_api_and_metrics_off_the_public_listener() {
    let p = Process::start(
        &[
            ("SWITCHBOARD_ADMIN_BIND", "127.0.0.1:0"),
            ("SWITCHBOARD_API__KEY", "k"),
        ],
        None,
    );
    let admin = p.admin_addr.unwrap();
    assert_ne!(admin, p.addr);
    assert_eq!(
        http(p.addr, "GET", "/api/stats", Some("k"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        http(p.addr, "GET", "/metrics", None, None).await.status,
        404
    );
    assert_eq!(
        http(admin, "GET", "/api/stats", Some("k"), None)
            .await
            .status,
        200
    );
    assert_eq!(http(admin, "GET", "/metrics", None, None).await.status, 200);
    // Clients and probes stay on the public listener.
    assert_eq!(http(p.addr, "GET", "/readyz", None, None).await.status, 200);
    connect(p.addr, "l1", "a").await;
    assert_eq!(
        http(admin, "GET", "/ws/l1?token=a", None, None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn json_logs_record_connects_and_disconnects_without_secrets() {
    let p = Process::start(
        &[
            ("SWITCHBOARD_LOG__FORMAT", "json"),
            ("SWITCHBOARD_API__KEY", "sekrit-api-key"),
            ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "2"),
            ("SWITCHBOARD_CAPACITY_WARN_PERCENT", "50"),
        ],
        None,
    );
    let a = connect(p.addr, "l1", "alice").await;
    a.close().await;
    // A refused token (too long for a user id) is not logged either.
    let token = format!("token-{}", "x".repeat(200));
    connect_refused(p.addr, "l1", &token, ip(1))
        .await
        .assert(4001, "unauthorized", false);
    let _ = http(p.addr, "GET", "/api/stats", Some("wrong-key-value"), None).await;
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !lines
        .iter()
        .any(|l| l["fields"]["message"] == "disconnected")
    {
        assert!(
            Instant::now() < deadline,
            "no disconnect log in {}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        lines = p
            .logs()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
            .collect();
    }
    let connected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "connected")
        .unwrap();
    assert_eq!(connected["fields"]["user"], "alice");
    let warning = lines
        .iter()
        .find(|l| {
            l["level"] == "WARN"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("capacity"))
        })
        .unwrap_or_else(|| panic!("no capacity warning in {}", p.logs()));
    assert_eq!(warning["fields"]["max"], 2);
    let gone = lines
        .iter()
        .find(|l| l["fields"]["message"] == "disconnected")
        .unwrap();
    assert_eq!(gone["fields"]["reason"], "client_closed");
    assert!(gone["fields"]["duration_ms"].as_u64().is_some());
    let all = p.logs();
    assert!(!all.contains("sekrit-api-key") && !all.contains("wrong-key-value"));
    assert!(!all.contains("token-xxx"), "the token is never logged");
}

#[tokio::test]
async fn a_silent_tcp_connection_is_dropped_after_the_handshake_timeout() {
    let p = Process::start(&[("SWITCHBOARD_HANDSHAKE_TIMEOUT_MS", "300")], None);
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("server closes it");
    // hyper may answer 408 before closing; either way the socket ends.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    if let Ok(n) = n
        && n > 0
    {
        assert!(String::from_utf8_lossy(&buf[..n]).contains("408"));
    }
    // Other clients are unaffected.
    connect(p.addr, "l1", "a").await;
}

#[tokio::test]
async fn sigterm_drains_many_clients_within_the_window_and_exits_zero() {
    const CLIENTS: usize = 200;
    let mut p = Process::start(
        &[
            ("SWITCHBOARD_SHUTDOWN__DRAIN_MS", "1000"),
            ("SWITCHBOARD_SHUTDOWN__DEADLINE_MS", "4000"),
            ("SWITCHBOARD_RATE__CONNECTS_PER_IP_PER_SEC", "0"),
            ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "1000"),
            ("SWITCHBOARD_LIMITS__MAX_PER_IP", "1000"),
        ],
        None,
    );
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(connect(p.addr, &format!("l{}", i % 4), &format!("u{i}")).await);
    }
    let started = Instant::now();
    p.signal("TERM");
    let deadline = Instant::now() + WAIT;
    while http(p.addr, "GET", "/readyz", None, None).await.status != 503 {
        assert!(Instant::now() < deadline, "readyz never turned 503");
    }
    let ready_after = started.elapsed();
    assert!(
        ready_after < Duration::from_millis(500),
        "readiness failed late: {ready_after:?}"
    );
    // Each client notes when its own close arrives.
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                c.ending_skipping_data("the drain")
                    .await
                    .assert(1001, "server_shutdown", true);
                started.elapsed()
            })
        })
        .collect();
    let mut spread = Vec::new();
    for close in closes {
        spread.push(close.await.unwrap());
    }
    let last = spread.iter().max().unwrap();
    assert!(
        *last < Duration::from_millis(1000 + 700),
        "every client closed within the drain window: {last:?}"
    );
    let first = spread.iter().min().unwrap();
    assert!(
        *last - *first > Duration::from_millis(300),
        "closes are spread, not all at once"
    );
    let status = p.wait(Duration::from_secs(4)).await;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "exited before the deadline"
    );
}

#[tokio::test]
async fn pages_are_served_in_dev_mode_and_the_dashboard_follows_the_api() {
    let dev = Process::start(&[], None);
    let index = http(dev.addr, "GET", "/", None, None).await;
    assert_eq!(index.status, 200);
    assert!(
        index
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with("text/html"))
    );
    assert_eq!(
        http(dev.addr, "GET", "/dashboard", None, None).await.status,
        200
    );
    assert_eq!(
        http(dev.addr, "GET", "/assets/switchboard.js", None, None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(dev.addr, "GET", "/assets/nope.js", None, None)
            .await
            .status,
        404
    );
    // Not in production mode unless asked for.
    let prod = Process::start(&[("SWITCHBOARD_AUTH__JWT_SECRET", TEST_SECRET)], None);
    assert_eq!(http(prod.addr, "GET", "/", None, None).await.status, 404);
    // Asked for, with an admin listener: the dashboard moves there with the API.
    let split = Process::start(
        &[
            ("SWITCHBOARD_AUTH__JWT_SECRET", TEST_SECRET),
            ("SWITCHBOARD_PAGES__ENABLED", "true"),
            ("SWITCHBOARD_ADMIN_BIND", "127.0.0.1:0"),
        ],
        None,
    );
    let admin = split.admin_addr.unwrap();
    assert_eq!(http(split.addr, "GET", "/", None, None).await.status, 200);
    assert_eq!(
        http(split.addr, "GET", "/dashboard", None, None)
            .await
            .status,
        404
    );
    assert_eq!(
        http(admin, "GET", "/dashboard", None, None).await.status,
        200
    );
    assert_eq!(
        http(admin, "GET", "/assets/dashboard.js", None, None)
            .await
            .status,
        200
    );
}
