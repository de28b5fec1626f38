//! User policies: replace, multi, reject; and direct messages to every connection of a user.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;
use switchboard::UserPolicy;

#[tokio::test]
async fn replace_closes_the_older_connection_without_presence_churn() {
    let server = server(|_| {}).await;
    let mut watcher = connect(server.addr, "l1", "watcher").await;
    let mut old = connect(server.addr, "l1", "alice").await;
    watcher.expect("member_joined", "alice's join").await;
    let mut new = connect(server.addr, "l1", "alice").await;
    old.ending("the replaced connection")
        .await
        .assert(4003, "replaced", false);
    // No leave/join pair for a replacement: the next thing the watcher sees is this message.
    new.send(broadcast(json!("after replace"))).await;
    let m = watcher
        .expect("message", "broadcast after the replacement")
        .await;
    assert_eq!(m["data"], "after replace");
    new.expect("message", "the sender's own broadcast").await;
    let stats = server.manager.stats();
    assert_eq!((stats.total_connections, stats.users), (2, 2));
    // Disconnecting the old connection never removed the new one.
    assert_eq!(server.manager.user_connections("alice").len(), 1);
    assert_eq!(
        server.manager.user_connections("alice")[0].id.as_str(),
        new.id()
    );
    assert_eq!(server.manager.send_to_user("alice", &json!(1)).unwrap(), 1);
    new.expect("direct", "direct to the new connection").await;
}

#[tokio::test]
async fn replace_spans_lobbies() {
    let server = server(|_| {}).await;
    let mut watcher = connect(server.addr, "l1", "watcher").await;
    let mut old = connect(server.addr, "l1", "alice").await;
    watcher.expect("member_joined", "alice's join").await;
    let _new = connect(server.addr, "l2", "alice").await;
    old.ending("the replaced connection")
        .await
        .assert(4003, "replaced", false);
    let left = watcher.expect("member_left", "alice left l1 for l2").await;
    assert_eq!(left["user_id"], "alice");
    assert_eq!(server.manager.presence("l2").await.unwrap().len(), 1);
}

#[tokio::test]
async fn reject_refuses_the_newer_connection() {
    let server = server(|c| c.manager.user_policy = UserPolicy::Reject).await;
    let mut first = connect(server.addr, "l1", "alice").await;
    connect_refused(server.addr, "l2", "alice", ip(1))
        .await
        .assert(4002, "user_limit", true);
    first.send(json!({"type": "presence"})).await;
    let p = first
        .expect("presence", "first connection still works")
        .await;
    assert_eq!(p["users"], json!(["alice"]));
    first.close().await;
    // Once the first is gone, the user may connect again.
    connect(server.addr, "l2", "alice").await;
}

#[tokio::test]
async fn multi_keeps_every_tab_and_direct_reaches_all() {
    let server = server(|c| {
        c.manager.user_policy = UserPolicy::Multi;
        c.manager.limits.max_per_user = 3;
    })
    .await;
    let mut tab1 = connect(server.addr, "l1", "alice").await;
    let mut tab2 = connect(server.addr, "l2", "alice").await;
    let mut bob = connect(server.addr, "l3", "bob").await;
    bob.send(json!({"type": "direct", "to": "alice", "data": {"n": 1}}))
        .await;
    for tab in [&mut tab1, &mut tab2] {
        let d = tab.expect("direct", "bob's direct to alice").await;
        assert_eq!(
            d,
            json!({"type": "direct", "from": "bob", "data": {"n": 1}})
        );
    }
    assert_eq!(server.manager.stats().users, 2);
    // Closing one tab leaves the other fully registered.
    tab1.close().await;
    eventually("one alice connection left", || {
        server.manager.user_connections("alice").len() == 1
    })
    .await;
    bob.send(json!({"type": "direct", "to": "alice", "data": 2}))
        .await;
    tab2.expect("direct", "direct after a tab closed").await;
}

#[tokio::test]
async fn multi_presence_is_per_user_not_per_tab() {
    let server = server(|c| c.manager.user_policy = UserPolicy::Multi).await;
    let mut watcher = connect(server.addr, "l1", "watcher").await;
    let tab1 = connect(server.addr, "l1", "alice").await;
    watcher.expect("member_joined", "alice's first tab").await;
    let tab2 = connect(server.addr, "l1", "alice").await;
    assert_eq!(
        server.manager.presence("l1").await.unwrap().len(),
        2,
        "alice listed once"
    );
    tab1.close().await;
    eventually("tab1 gone", || {
        server.manager.stats().total_connections == 2
    })
    .await;
    watcher.send(json!({"type": "presence", "id": 9})).await;
    let p = watcher
        .expect("presence", "presence with one tab left")
        .await;
    assert_eq!(
        p["users"],
        json!(["alice", "watcher"]),
        "no leave while a tab remains"
    );
    tab2.close().await;
    let left = watcher.expect("member_left", "alice's last tab").await;
    assert_eq!(left["user_id"], "alice");
}
