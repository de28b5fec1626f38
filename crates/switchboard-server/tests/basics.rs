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
