//! Capacity limits: each refusal is a goodbye and a 4002 close with its reason, and no burst of
//! concurrent connects exceeds a limit.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;
use switchboard::UserPolicy;

#[tokio::test]
async fn server_full() {
    let server = server(|c| c.manager.limits.max_connections = 2).await;
    let _a = connect(server.addr, "l1", "a").await;
    let _b = connect(server.addr, "l2", "b").await;
    connect_refused(server.addr, "l3", "c", ip(1))
        .await
        .assert(4002, "server_full", true);
    assert_eq!(server.manager.stats().rejections["server_full"], 1);
    assert_eq!(server.manager.stats().total_connections, 2);
}

#[tokio::test]
async fn lobby_full_leaves_other_lobbies_open() {
    let server = server(|c| c.manager.limits.max_per_lobby = 2).await;
    let _a = connect(server.addr, "l1", "a").await;
    let _b = connect(server.addr, "l1", "b").await;
    connect_refused(server.addr, "l1", "c", ip(1))
        .await
        .assert(4002, "lobby_full", true);
    let _c = connect(server.addr, "l2", "c").await;
}

#[tokio::test]
async fn ip_limit_counts_per_client_ip() {
    let server = server(|c| c.manager.limits.max_per_ip = 2).await;
    let _a = connect_from(server.addr, "l1", "a", ip(2)).await;
    let _b = connect_from(server.addr, "l1", "b", ip(2)).await;
    connect_refused(server.addr, "l1", "c", ip(2))
        .await
        .assert(4002, "ip_limit", true);
    let _c = connect_from(server.addr, "l1", "c", ip(3)).await;
}

#[tokio::test]
async fn user_limit_under_multi() {
    let server = server(|c| {
        c.manager.user_policy = UserPolicy::Multi;
        c.manager.limits.max_per_user = 2;
    })
    .await;
    let _a1 = connect(server.addr, "l1", "a").await;
    let _a2 = connect(server.addr, "l2", "a").await;
    connect_refused(server.addr, "l3", "a", ip(1))
        .await
        .assert(4002, "user_limit", true);
}

#[tokio::test]
async fn retry_after_is_jittered_across_refused_clients() {
    let server = server(|c| c.manager.limits.max_per_lobby = 1).await;
    let _a = connect(server.addr, "l1", "a").await;
    let mut retries = std::collections::HashSet::new();
    for i in 0..8 {
        let ending = connect_refused(server.addr, "l1", &format!("u{i}"), ip(1)).await;
        ending.assert(4002, "lobby_full", true);
        retries.insert(ending.goodbye.unwrap()["retry_after_ms"].as_u64().unwrap());
    }
    assert!(
        retries.len() > 1,
        "retry_after_ms must differ between clients: {retries:?}"
    );
}

/// Many concurrent connects into a small lobby, from several IPs, under a small global cap:
/// the number accepted equals the tightest limit exactly, never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_burst_never_exceeds_limits() {
    let server = server(|c| {
        c.manager.limits.max_per_lobby = 10;
        c.manager.limits.max_connections = 25;
        c.manager.limits.max_per_ip = 1000;
    })
    .await;
    let addr = server.addr;
    let mut tasks = Vec::new();
    for i in 0..60u32 {
        let lobby = if i % 2 == 0 { "even" } else { "odd" };
        tasks.push(tokio::spawn(async move {
            let path = format!("/ws/{lobby}?token=user{i}");
            let ws = raw_connect(addr, &path, ip(2 + (i % 5) as u8)).await;
            let mut client = Client {
                ws,
                welcome: serde_json::Value::Null,
            };
            let first = client.next_json("welcome or goodbye").await;
            (first["type"] == "welcome", client)
        }));
    }
    let mut accepted = 0;
    let mut clients = Vec::new();
    for t in tasks {
        let (ok, client) = t.await.unwrap();
        accepted += ok as usize;
        clients.push(client);
    }
    assert_eq!(accepted, 20, "10 per lobby in two lobbies");
    let stats = server.manager.stats();
    assert_eq!(stats.total_connections, 20);
    assert_eq!(stats.rejections["lobby_full"], 40);
    for lobby in server.manager.lobbies().await {
        assert_eq!(lobby.connections, 10, "{lobby:?}");
    }
    drop(clients);
    all_clean(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_burst_respects_global_and_ip_limits() {
    let server = server(|c| {
        c.manager.limits.max_per_lobby = 1000;
        c.manager.limits.max_connections = 15;
        c.manager.limits.max_per_ip = 4;
    })
    .await;
    let addr = server.addr;
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        tasks.push(tokio::spawn(async move {
            let path = format!("/ws/l{}?token=user{i}", i % 3);
            let ws = raw_connect(addr, &path, ip(10 + (i % 5) as u8)).await;
            let mut client = Client {
                ws,
                welcome: serde_json::Value::Null,
            };
            let first = client.next_json("welcome or goodbye").await;
            (first, client)
        }));
    }
    let mut clients = Vec::new();
    let mut accepted = 0;
    for t in tasks {
        let (first, client) = t.await.unwrap();
        if first["type"] == "welcome" {
            accepted += 1;
        } else {
            assert_eq!(first["type"], "goodbye");
            assert!(
                matches!(first["reason"].as_str(), Some("ip_limit" | "server_full")),
                "{first}"
            );
        }
        clients.push(client);
    }
    // 5 IPs x 4 = 20 allowed by IP, 15 by the global cap.
    assert_eq!(accepted, 15);
    assert_eq!(server.manager.stats().total_connections, 15);
}
