//! Health: frozen clients are closed as stale within the bound; slow consumers are closed (or
//! dropped from) without delaying anyone else.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use switchboard::Skip;
use switchboard::SlowConsumerPolicy;
use tokio_tungstenite::tungstenite::Message;

const PING: Duration = Duration::from_millis(300);
const PONG_TIMEOUT: Duration = Duration::from_millis(300);

/// Reads a client forever in the background (answering pings as any client does), counting
/// the frames it gets; returns how to stop it.
fn keep_reading(mut client: Client) -> tokio::task::JoinHandle<(Client, usize)> {
    tokio::spawn(async move {
        let mut frames = 0;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(PING * 8, client.ws.next()).await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            frames += 1;
        }
        (client, frames)
    })
}

#[tokio::test]
async fn frozen_client_is_closed_as_stale_while_healthy_ones_stay() {
    let server = server(|c| {
        c.manager.ping_interval = PING;
        c.manager.pong_timeout = PONG_TIMEOUT;
    })
    .await;
    let healthy: Vec<_> = futures_util::future::join_all((0..3).map(|i| {
        connect(
            server.addr,
            "l1",
            Box::leak(format!("h{i}").into_boxed_str()),
        )
    }))
    .await;
    let readers: Vec<_> = healthy.into_iter().map(keep_reading).collect();
    let started = Instant::now();
    let mut frozen = connect(server.addr, "l1", "frozen").await; // then never reads nor writes
    eventually("only the healthy remain", || {
        server.manager.stats().total_connections == 3
    })
    .await;
    let elapsed = started.elapsed();
    let bound = PING + PONG_TIMEOUT + Duration::from_secs(1);
    assert!(
        elapsed >= PING + PONG_TIMEOUT - Duration::from_millis(50),
        "not before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed <= bound,
        "stale close took {elapsed:?}, bound {bound:?}"
    );
    assert_eq!(server.manager.stats().stale_closed, 1);
    assert_eq!(server.manager.presence("l1").await.unwrap().len(), 3);
    // The frozen client, reading again, finds health pings, the goodbye and 4004.
    frozen
        .ending_skipping_data("the stale close")
        .await
        .assert(4004, "stale", true);
    // Healthy clients stayed through several more ping rounds.
    tokio::time::sleep(PING * 3).await; // let health checks run: the thing under test
    assert_eq!(server.manager.stats().total_connections, 3);
    assert_eq!(server.manager.stats().stale_closed, 1);
    server.shutdown().await.unwrap();
    for r in readers {
        let (_, frames) = r.await.unwrap();
        assert!(
            frames >= 3,
            "healthy clients received pings and frames: {frames}"
        );
    }
}

#[tokio::test]
async fn health_pings_carry_a_timestamp_and_pongs_give_latency() {
    let server = server(|c| c.manager.ping_interval = Duration::from_millis(100)).await;
    let mut a = connect(server.addr, "l1", "a").await;
    let ping = loop {
        let msg = tokio::time::timeout(WAIT, a.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "health_ping" {
                break v;
            }
        }
    };
    let ts = ping["timestamp"].as_u64().expect("integer timestamp");
    a.send(json!({"type": "health_pong", "timestamp": ts}))
        .await;
    let id = a.id().to_owned();
    eventually("latency is measured", || {
        server.manager.latency(&id).is_some()
    })
    .await;
    let reader = keep_reading(a);
    let rtt = server.manager.ping(&id, WAIT).await.expect("pong");
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    reader.abort();
}

#[tokio::test]
async fn slow_consumer_is_closed_without_delaying_others() {
    let server = server(|c| {
        c.manager.queue_capacity = 32;
        // Closed once its socket has stopped taking bytes for this long.
        c.manager.slow_grace = Duration::from_millis(200);
    })
    .await;
    let mut slow = connect(server.addr, "l1", "slow").await; // never reads during the flood
    let mut fast = connect(server.addr, "l1", "fast").await;
    let payload = "x".repeat(16 * 1024);
    // Lockstep: each broadcast is read by the fast client before the next one, so only the
    // slow client falls behind; 4,000 x 16 KiB is far more than the socket buffers hold.
    let mut slow_left = false;
    for i in 0..4_000 {
        server
            .manager
            .broadcast("l1", &json!({"i": i, "p": payload}), Skip::Nobody)
            .unwrap();
        let m = loop {
            let m = fast.next_json("the flood, in order").await;
            if m["type"] == "member_left" && !slow_left {
                assert_eq!(m["user_id"], "slow");
                slow_left = true;
                continue;
            }
            break m;
        };
        assert_eq!(m["type"], "message");
        assert_eq!(m["data"]["i"], i);
        if slow_left {
            break;
        }
    }
    assert!(slow_left, "the slow client was closed and left");
    assert_eq!(server.manager.stats().total_connections, 1);
    assert_eq!(server.manager.presence("l1").await.unwrap().len(), 1);
    eventually("the close is counted", || {
        server.manager.stats().closes.get("slow_consumer") == Some(&1)
    })
    .await;
    let ending = slow.ending_skipping_data("the slow consumer's close").await;
    ending.assert(4008, "slow_consumer", true);
    fast.close().await;
    all_clean(&server).await;
}

#[tokio::test]
async fn drop_policy_keeps_the_slow_consumer_and_counts_drops() {
    let server = server(|c| {
        c.manager.queue_capacity = 4;
        c.manager.on_full = SlowConsumerPolicy::Drop;
    })
    .await;
    let mut slow = connect(server.addr, "l1", "slow").await;
    let payload = "y".repeat(64 * 1024);
    for i in 0..400 {
        server
            .manager
            .broadcast("l1", &json!({"i": i, "p": payload}), Skip::Nobody)
            .unwrap();
    }
    assert!(server.manager.stats().messages_dropped > 0);
    assert_eq!(
        server.manager.stats().total_connections,
        1,
        "not closed under drop"
    );
    // A direct send to the full queue says so, rather than that the connection is gone.
    let dropped = server.manager.stats().messages_dropped;
    let sent = server
        .manager
        .send_to_connection(slow.id(), &json!("direct"))
        .await;
    assert!(
        matches!(sent, Err(switchboard::Error::QueueFull)),
        "{sent:?}"
    );
    assert_eq!(server.manager.stats().messages_dropped, dropped + 1);
    // Once it reads again it gets what was queued, in order, and stays usable. The backend
    // repeats an end marker until the reader, draining, has room for one.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let m = slow.next_json("queued messages, then the end marker").await;
            if m["data"] == "end" {
                return (slow, seen);
            }
            seen.push(m["data"]["i"].as_i64().unwrap());
        }
    });
    let deadline = Instant::now() + WAIT;
    while !reader.is_finished() && Instant::now() < deadline {
        server
            .manager
            .broadcast("l1", &json!("end"), Skip::Nobody)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_slow, seen) = reader.await.unwrap();
    assert!(
        !seen.is_empty() && seen.len() < 400,
        "some delivered, some dropped: {}",
        seen.len()
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(server.manager.stats().total_connections, 1);
}

/// A member that falls behind while members join is not closed for it: the join events it
/// could not take are replaced by one fresh `presence` list once it catches up.
#[tokio::test]
async fn a_member_behind_on_join_events_gets_a_fresh_presence_list() {
    let server = server(|c| {
        c.manager.queue_capacity = 4;
        c.manager.on_full = SlowConsumerPolicy::Drop;
    })
    .await;
    let mut watcher = connect(server.addr, "l1", "watcher").await; // stops reading for now
    // Fill the watcher's socket buffers, then its queue (the drop policy keeps it open): go on
    // until 20 broadcasts in a row found the queue full, i.e. its writer is stuck.
    let payload = "z".repeat(64 * 1024);
    let mut full_in_a_row = 0;
    for i in 0..5_000 {
        let before = server.manager.stats().queue_overflows;
        server
            .manager
            .broadcast("l1", &json!({"i": i, "p": payload}), Skip::Nobody)
            .unwrap();
        if server.manager.stats().queue_overflows > before {
            full_in_a_row += 1;
            if full_in_a_row == 20 {
                break;
            }
        } else {
            full_in_a_row = 0;
        }
        tokio::task::yield_now().await; // let the writer push what it can
    }
    assert_eq!(full_in_a_row, 20, "the watcher's writer never got stuck");
    let overflows_before_joins = server.manager.stats().queue_overflows;
    let mut joiners = Vec::new();
    for i in 0..10 {
        joiners.push(connect(server.addr, "l1", &format!("j{i}")).await);
    }
    assert_eq!(
        server.manager.stats().total_connections,
        11,
        "nobody closed"
    );
    assert!(
        server.manager.stats().queue_overflows > overflows_before_joins,
        "join events dropped"
    );
    // Reading again, the watcher finds the list with everyone (after what was queued).
    let users = loop {
        let frame = watcher.next_json("the fresh presence list").await;
        if frame["type"] == "presence" {
            break frame["users"].clone();
        }
    };
    assert_eq!(users.as_array().unwrap().len(), 11, "{users}");
}
