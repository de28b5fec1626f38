//! Broadcast with exclusions, backend publishing, presence and its events.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::Skip;
use switchboard::UserPolicy;

#[tokio::test]
async fn exclude_self_skips_only_the_sending_connection() {
    let server = server(|c| c.manager.user_policy = UserPolicy::Multi).await;
    let mut tab1 = connect(server.addr, "l1", "alice").await;
    let mut tab2 = connect(server.addr, "l1", "alice").await;
    let mut bob = connect(server.addr, "l1", "bob").await;
    tab1.expect("member_joined", "bob joined").await;
    tab2.expect("member_joined", "bob joined").await;
    tab1.send(json!({"type": "broadcast", "data": "x", "exclude_self": true}))
        .await;
    tab2.expect("message", "alice's other tab gets it").await;
    bob.expect("message", "bob gets it").await;
    // tab1 must not: the next frame it sees is the answer to its own presence request.
    tab1.send(json!({"type": "presence"})).await;
    tab1.expect("presence", "tab1 skipped its own broadcast")
        .await;
}

#[tokio::test]
async fn backend_broadcast_can_exclude_a_user() {
    let server = server(|_| {}).await;
    let mut alice = connect(server.addr, "l1", "alice").await;
    let mut bob = connect(server.addr, "l1", "bob").await;
    alice.expect("member_joined", "bob joined").await;
    let reached = server
        .manager
        .broadcast("l1", &json!({"k": 1}), Skip::User("alice"))
        .unwrap();
    assert_eq!(reached, 1);
    let m = bob.expect("message", "backend broadcast").await;
    assert_eq!(
        m,
        json!({"type": "message", "lobby": "l1", "from": null, "data": {"k": 1}, "offset": 1})
    );
    assert_eq!(
        server
            .manager
            .broadcast("l1", &json!(2), Skip::Nobody)
            .unwrap(),
        2
    );
    let m = alice.expect("message", "the second broadcast only").await;
    assert_eq!(m["data"], 2);
    assert_eq!(
        server
            .manager
            .broadcast("empty", &json!(3), Skip::Nobody)
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn presence_events_and_queries() {
    let server = server(|_| {}).await;
    let mut a = connect(server.addr, "l1", "a").await;
    let b = connect(server.addr, "l1", "b").await;
    let j = a.expect("member_joined", "b's join").await;
    assert_eq!(
        j,
        json!({"type": "member_joined", "lobby": "l1", "user_id": "b"})
    );
    a.send(json!({"type": "presence"})).await;
    let p = a.expect("presence", "presence answer").await;
    assert_eq!(
        p,
        json!({"type": "presence", "lobby": "l1", "users": ["a", "b"]})
    );
    drop(b); // abrupt: no close frame
    let l = a.expect("member_left", "b's abrupt leave").await;
    assert_eq!(l["user_id"], "b");
    assert_eq!(server.manager.presence("l1").await.unwrap().len(), 1);
}

#[tokio::test]
async fn presence_events_can_be_turned_off() {
    let server = server(|c| c.manager.presence.events = false).await;
    let mut a = connect(server.addr, "l1", "a").await;
    assert_eq!(a.welcome["presence_events"], false);
    connect(server.addr, "l1", "b").await.close().await;
    a.send(json!({"type": "presence"})).await;
    let p = a
        .expect("presence", "no join/leave before the presence answer")
        .await;
    assert_eq!(p["users"], json!(["a"]));
}

#[tokio::test]
async fn presence_events_stop_above_the_member_threshold() {
    let server = server(|c| c.manager.presence.events_max_members = 2).await;
    let mut a = connect(server.addr, "l1", "a").await;
    assert_eq!(a.welcome["presence_events"], true);
    let _b = connect(server.addr, "l1", "b").await;
    a.expect("member_joined", "b's join (2 members)").await;
    let c = connect(server.addr, "l1", "c").await;
    assert_eq!(c.welcome["presence_events"], false, "3 members > 2");
    a.send(json!({"type": "presence"})).await;
    let p = a.expect("presence", "no join event for c").await;
    assert_eq!(p["users"], json!(["a", "b", "c"]));
}

#[tokio::test]
async fn leave_grace_hides_a_quick_reconnect() {
    let server = server(|c| c.manager.presence.leave_grace = Duration::from_millis(400)).await;
    let mut watcher = connect(server.addr, "l1", "watcher").await;
    let alice = connect(server.addr, "l1", "alice").await;
    watcher.expect("member_joined", "alice's join").await;
    alice.close().await;
    eventually("alice's connection gone", || {
        server.manager.stats().total_connections == 1
    })
    .await;
    assert_eq!(
        server.manager.presence("l1").await.unwrap().len(),
        2,
        "alice present during grace"
    );
    let alice = connect(server.addr, "l1", "alice").await;
    // Back within the grace: no leave and no join; then leaving for good shows one leave.
    alice.close().await;
    let l = watcher
        .expect("member_left", "alice's leave after the grace")
        .await;
    assert_eq!(l["user_id"], "alice");
    assert_eq!(server.manager.presence("l1").await.unwrap().len(), 1);
    watcher.close().await;
    all_clean(&server).await;
}
