//! Recovery after reconnect: offsets, epoch, replay exactly once and in order.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::Skip;

async fn reconnect(addr: std::net::SocketAddr, user: &str, since: u64, epoch: &str) -> Client {
    let path = format!("/ws/room?token={user}&since={since}&epoch={epoch}");
    let ws = raw_connect(addr, &path, ip(1)).await;
    let mut c = Client {
        ws,
        welcome: Value::Null,
    };
    c.welcome = c.expect("welcome", "welcome on reconnect").await;
    c
}

#[tokio::test]
async fn welcome_and_messages_carry_offsets_and_the_epoch() {
    let server = server(|_| {}).await;
    let mut a = connect(server.addr, "room", "a").await;
    assert_eq!(a.welcome["offset"], 0);
    let epoch = a.welcome["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    for i in 1..=3 {
        server
            .manager
            .broadcast("room", &json!(i), Skip::Nobody)
            .unwrap();
        assert_eq!(a.expect("message", "a broadcast").await["offset"], i);
    }
    let b = connect(server.addr, "room", "b").await;
    assert_eq!(
        (b.welcome["offset"].as_u64(), b.welcome["epoch"].as_str()),
        (Some(3), Some(epoch.as_str()))
    );
    // Another lobby has its own offsets.
    let c = connect(server.addr, "other", "c").await;
    assert_eq!(c.welcome["offset"], 0);
    assert_ne!(c.welcome["epoch"], json!(epoch));
}

/// A client drops abruptly while 100 messages go out; it comes back with `since` and gets
/// exactly those, in order, then `recovered`, then live traffic without a gap or a duplicate,
/// while a publisher keeps publishing through the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gets_exactly_what_it_missed() {
    let server = server(|c| c.manager.history.size = 1_000).await;
    let _anchor = connect(server.addr, "room", "anchor").await; // keeps the lobby alive
    let mut b = connect(server.addr, "room", "bob").await;
    let epoch = b.welcome["epoch"].as_str().unwrap().to_owned();
    server
        .manager
        .broadcast("room", &json!("first"), Skip::Nobody)
        .unwrap();
    let last_seen = b.expect("message", "the first message").await["offset"]
        .as_u64()
        .unwrap();
    drop(b); // abrupt: no close frame
    eventually("bob is gone", || {
        server.manager.stats().total_connections == 1
    })
    .await;
    for i in 0..100 {
        server
            .manager
            .broadcast("room", &json!({"missed": i}), Skip::Nobody)
            .unwrap();
    }
    // Keep publishing while bob reconnects: the switch from replay to live must be seamless.
    let manager = server.manager.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..200 {
            manager
                .broadcast("room", &json!({"live": i}), Skip::Nobody)
                .unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut b = reconnect(server.addr, "bob", last_seen, &epoch).await;
    publisher.await.unwrap();
    let end = last_seen + 100 + 200;
    let mut expected = last_seen + 1;
    let mut recovered = 0;
    // Depending on timing the replay may include everything published, so `recovered` can
    // also come after the last message.
    while expected <= end || recovered == 0 {
        let frame = b.next_json("replayed and live messages").await;
        match frame["type"].as_str() {
            Some("recovered") => {
                assert_eq!(frame["ok"], true);
                assert!(
                    expected > last_seen + 100,
                    "all 100 missed ones come before `recovered`"
                );
                recovered += 1;
            }
            Some("message") => {
                assert_eq!(frame["offset"], expected, "in order, no gap, no duplicate");
                if expected <= last_seen + 100 {
                    assert_eq!(frame["data"]["missed"], expected - last_seen - 1);
                }
                expected += 1;
            }
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
    assert_eq!(recovered, 1);
    // And nothing more.
    b.send(json!({"type": "presence"})).await;
    b.expect("presence", "no duplicate after the last message")
        .await;
}

#[tokio::test]
async fn recovery_fails_cleanly_when_history_cannot_help() {
    let server = server(|c| c.manager.history.size = 5).await;
    let mut a = connect(server.addr, "room", "a").await;
    let epoch = a.welcome["epoch"].as_str().unwrap().to_owned();
    for i in 0..10 {
        server
            .manager
            .broadcast("room", &json!(i), Skip::Nobody)
            .unwrap();
        a.expect("message", "a broadcast").await;
    }
    // Too old: offsets 1..5 are gone from a ring of 5.
    let mut stale = reconnect(server.addr, "s", 2, &epoch).await;
    assert_eq!(
        stale.next_json("recovered").await,
        json!({"type":"recovered","ok":false})
    );
    // Another epoch (history lost, e.g. a restart).
    let mut other = reconnect(server.addr, "o", 9, "0000000000000000").await;
    assert_eq!(
        other.next_json("recovered").await,
        json!({"type":"recovered","ok":false})
    );
    // From the future.
    let mut future = reconnect(server.addr, "f", 99, &epoch).await;
    assert_eq!(
        future.next_json("recovered").await,
        json!({"type":"recovered","ok":false})
    );
    // Just in range: the last 5, then ok.
    let mut fine = reconnect(server.addr, "g", 5, &epoch).await;
    for offset in 6..=10 {
        assert_eq!(fine.expect("message", "replayed").await["offset"], offset);
    }
    assert_eq!(
        fine.next_json("recovered").await,
        json!({"type":"recovered","ok":true})
    );
    // A malformed pair is refused before the upgrade.
    let err = try_raw_connect(server.addr, "/ws/room?token=x&since=3", ip(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    let err = try_raw_connect(server.addr, "/ws/room?token=x&since=no&epoch=e", ip(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn the_last_one_out_can_still_recover_until_the_ttl() {
    let server = server(|c| c.manager.history.ttl = Duration::from_secs(60)).await;
    let mut a = connect(server.addr, "room", "a").await;
    let epoch = a.welcome["epoch"].as_str().unwrap().to_owned();
    server
        .manager
        .broadcast("room", &json!("x"), Skip::Nobody)
        .unwrap();
    let seen = a.expect("message", "x").await["offset"].as_u64().unwrap();
    a.close().await;
    all_clean(&server).await;
    // The lobby is empty, but its history lives on: a backend message still counts...
    server
        .manager
        .broadcast("room", &json!("while away"), Skip::Nobody)
        .unwrap();
    let mut back = reconnect(server.addr, "a", seen, &epoch).await;
    assert_eq!(
        back.expect("message", "the message sent while away").await["data"],
        "while away"
    );
    assert_eq!(back.next_json("recovered").await["ok"], true);
}

async fn reconnect_to(
    addr: std::net::SocketAddr,
    lobby: &str,
    user: &str,
    since: u64,
    epoch: &str,
) -> Client {
    let path = format!("/ws/{lobby}?token={user}&since={since}&epoch={epoch}");
    let ws = raw_connect(addr, &path, ip(1)).await;
    let mut c = Client {
        ws,
        welcome: Value::Null,
    };
    c.welcome = c.expect("welcome", "welcome on reconnect").await;
    c
}

/// A client hops over fresh lobbies filling each with 100 large broadcasts: the history of the
/// whole server stays within `history.max_bytes`, the server's oldest broadcasts go first, and
/// recovering an evicted range answers `ok: false` as for any `since` too old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_for_the_whole_server() {
    const MAX_BYTES: usize = 1024 * 1024;
    const LOBBIES: usize = 30;
    let server = server(|c| c.manager.history.max_bytes = MAX_BYTES).await;
    let pad = "x".repeat(8 * 1024);
    // The first lobby keeps a member, so its history (and epoch) stays while others flood.
    let mut first = connect(server.addr, "hop0", "anchor").await;
    let first_epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    let mut peak = 0;
    let mut last = None;
    for n in 0..LOBBIES {
        let lobby = format!("hop{n}");
        let mut c = connect(server.addr, &lobby, "hopper").await;
        for i in 0..100 {
            c.send(json!({"type":"broadcast","exclude_self":true,"data":{"i":i,"pad":pad}}))
                .await;
        }
        // Frames are handled in order: once `presence` is answered, all 100 were kept.
        c.send(json!({"type":"presence"})).await;
        c.expect("presence", "the answer after 100 broadcasts")
            .await;
        let bytes = server.manager.stats().history_bytes;
        assert!(bytes <= MAX_BYTES, "lobby {n}: {bytes} > {MAX_BYTES}");
        peak = peak.max(bytes);
        last = Some((lobby, c.welcome["epoch"].as_str().unwrap().to_owned()));
        c.close().await;
    }
    assert!(
        peak > MAX_BYTES / 2,
        "the flood filled the history ({peak} bytes), it was not just small"
    );
    // The anchor saw all 100 of its lobby's broadcasts; they are the server's oldest: evicted.
    let mut seen = 0;
    while seen < 100 {
        if first.next_json("hop0's broadcasts").await["type"] == "message" {
            seen += 1;
        }
    }
    let mut late = reconnect_to(server.addr, "hop0", "late", 0, &first_epoch).await;
    assert_eq!(late.welcome["epoch"], json!(first_epoch), "same epoch");
    assert_eq!(late.welcome["offset"], 100);
    assert_eq!(
        late.next_json("recovered").await,
        json!({"type":"recovered","ok":false})
    );
    // The newest lobby's last broadcasts are still there.
    let (lobby, epoch) = last.unwrap();
    let mut recent = reconnect_to(server.addr, &lobby, "recent", 98, &epoch).await;
    for offset in 99..=100 {
        assert_eq!(recent.expect("message", "replayed").await["offset"], offset);
    }
    assert_eq!(
        recent.next_json("recovered").await,
        json!({"type":"recovered","ok":true})
    );
    // /metrics tells it too.
    let metrics = http(server.addr, "GET", "/metrics", None, None).await;
    let gauge = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_history_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("switchboard_history_bytes in /metrics");
    assert!(gauge as usize <= MAX_BYTES, "{gauge}");
}
