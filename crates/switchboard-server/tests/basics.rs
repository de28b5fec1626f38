//! Basic end-to-end flow.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn welcome_broadcast_and_clean_close() {
    let server = server(|_| {}).await;
    let mut a = connect(server.addr, "l1", "alice").await;
    assert_eq!(a.welcome["user_id"], "alice");
    assert_eq!(a.welcome["lobby"], "l1");
    assert_eq!(a.welcome["protocol"], 1);
    assert_eq!(a.welcome["presence_events"], true);
    assert_eq!(a.welcome["ping_interval_ms"], 20000);
    assert!(a.welcome["server_time"].as_u64().unwrap() > 1_600_000_000_000);
    let mut b = connect(server.addr, "l1", "bob").await;
    a.expect("member_joined", "bob's join").await;
    b.send(broadcast(json!({"hello": 1}))).await;
    for c in [&mut a, &mut b] {
        let m = c.expect("message", "bob's broadcast").await;
        assert_eq!(
            m,
            json!({"type":"message","lobby":"l1","from":"bob","data":{"hello":1},"offset":1})
        );
    }
    b.close().await;
    let left = a.expect("member_left", "bob's leave").await;
    assert_eq!(left["user_id"], "bob");
    a.close().await;
    all_clean(&server).await;
    assert!(server.shutdown().await.unwrap());
}

/// Join events are batched (written with the next frame or within `events_batch`), yet a new
/// member's message never overtakes its `member_joined`: with a batch far longer than the
/// test, the message itself carries the event out, in order.
#[tokio::test]
async fn a_message_carries_the_pending_join_event_out_first() {
    let server =
        server(|c| c.manager.presence.events_batch = std::time::Duration::from_secs(600)).await;
    let mut alice = connect(server.addr, "l1", "alice").await;
    let mut bob = connect(server.addr, "l1", "bob").await;
    bob.send(broadcast(json!({"hi": "alice"}))).await;
    let joined = alice
        .expect("member_joined", "bob's join, before his message")
        .await;
    assert_eq!(joined["user_id"], "bob");
    let message = alice.expect("message", "bob's message").await;
    assert_eq!(message["from"], "bob");
    bob.close().await;
    alice.close().await;
    all_clean(&server).await;
}

/// With the default batch, a join with nothing else to carry it still arrives (within the
/// batch delay, well inside the test's wait).
#[tokio::test]
async fn a_lone_join_event_is_flushed_by_the_batch() {
    let server = server(|_| {}).await;
    let mut alice = connect(server.addr, "l1", "alice").await;
    let bob = connect(server.addr, "l1", "bob").await;
    assert_eq!(
        alice.expect("member_joined", "bob's join").await["user_id"],
        "bob"
    );
    bob.close().await;
    assert_eq!(
        alice.expect("member_left", "bob's leave").await["user_id"],
        "bob"
    );
    alice.close().await;
    all_clean(&server).await;
}
