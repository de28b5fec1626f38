//! Protocol v2: one connection in many lobbies (join, leave, acks, recovery per lobby,
//! limits per join, presence per lobby), against the real server with real clients; v1
//! clients keep their protocol.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchboard::Skip;

/// `welcome` has no lobby fields in v2; the URL's lobby gets its own `joined`.
#[tokio::test]
async fn a_v2_connection_starts_in_no_lobby_or_in_the_urls() {
    let server = server(|_| {}).await;
    let bare = connect_v2(server.addr, "/ws?token=alice").await;
    assert_eq!(bare.welcome["protocol"], 2);
    assert_eq!(bare.welcome["max_lobbies"], 64);
    assert!(bare.welcome.get("lobby").is_none(), "{}", bare.welcome);
    assert!(bare.welcome.get("offset").is_none());

    let mut in_room = connect_v2(server.addr, "/ws/room?token=bob").await;
    let joined = in_room.expect("joined", "the URL's lobby").await;
    assert_eq!(joined["lobby"], "room");
    assert_eq!(joined["offset"], 0);
    assert!(joined["epoch"].is_string());
    assert!(joined.get("id").is_none(), "no request, no id");
    assert_eq!(
        server.manager.lobbies_of(in_room.id()).unwrap()[0].as_str(),
        "room"
    );
    assert!(server.manager.lobbies_of(bare.id()).unwrap().is_empty());
}

/// A v1 client never sees v2: `/ws` needs a lobby, and `join` is the application's type.
#[tokio::test]
async fn v1_clients_keep_their_protocol() {
    let server = server(|_| {}).await;
    let headers = [
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let response = http_with(server.addr, "GET", "/ws?token=alice", None, None, &headers).await;
    assert_eq!(response.status, 400, "v1 connects to a lobby");

    let mut v1 = connect(server.addr, "room", "alice").await;
    assert_eq!(v1.welcome["protocol"], 1);
    assert_eq!(v1.welcome["lobby"], "room");
    v1.send(json!({"type": "join", "lobby": "other", "id": 1}))
        .await;
    let error = v1.expect("error", "join in v1").await;
    assert_eq!(error["code"], "unknown_type");
    assert_eq!(error["id"], 1);
    // v1 acknowledges nothing: a broadcast with an id is answered by the message only.
    v1.send(json!({"type": "broadcast", "data": 1, "id": 2}))
        .await;
    let message = v1.expect("message", "own broadcast").await;
    assert_eq!(message["offset"], 1);
    v1.send(json!({"type": "presence"})).await;
    let presence = v1.expect("presence", "presence, not an ack").await;
    assert!(presence.get("id").is_none());
}

/// Join, broadcast with an ack carrying the offset, leave, and what a lobby one is not in
/// refuses.
#[tokio::test]
async fn join_broadcast_ack_and_leave() {
    let server = server(|_| {}).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    let joined = alice.join("room-a", 1).await;
    assert_eq!(
        (joined["lobby"].as_str(), joined["offset"].as_u64()),
        (Some("room-a"), Some(0))
    );
    assert_eq!(
        alice.join("room-a", 2).await["lobby"],
        "room-a",
        "joining again is idempotent"
    );

    alice
        .send(json!({"type": "broadcast", "lobby": "room-a", "data": {"n": 1}, "id": "b1"}))
        .await;
    let message = alice.expect("message", "own broadcast").await;
    assert_eq!(message["lobby"], "room-a");
    assert_eq!(message["offset"], 1);
    let ack = alice.expect("ack", "broadcast ack").await;
    assert_eq!(ack, json!({"type": "ack", "id": "b1", "offset": 1}));

    // With one lobby, `lobby` may be left out.
    alice
        .send(json!({"type": "broadcast", "data": 2, "id": 3, "exclude_self": true}))
        .await;
    assert_eq!(alice.expect("ack", "second ack").await["offset"], 2);

    alice.send(json!({"type": "presence", "id": 4})).await;
    let presence = alice.expect("presence", "presence list").await;
    assert_eq!(
        presence,
        json!({"type": "presence", "lobby": "room-a", "users": ["alice"], "id": 4})
    );

    alice
        .send(json!({"type": "leave", "lobby": "room-a", "id": 5}))
        .await;
    let left = alice.expect("left", "leave").await;
    assert_eq!(
        left,
        json!({"type": "left", "lobby": "room-a", "reason": "left", "id": 5})
    );
    alice
        .send(json!({"type": "leave", "lobby": "room-a", "id": 6}))
        .await;
    assert_eq!(
        alice.expect("left", "leave again").await["id"],
        6,
        "idempotent"
    );

    let error = alice
        .refused(
            json!({"type": "broadcast", "lobby": "room-a", "data": 1, "id": 7}),
            "not in it",
        )
        .await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("not_allowed"), Some(7))
    );
    let error = alice
        .refused(
            json!({"type": "broadcast", "data": 1, "id": 8}),
            "in no lobby",
        )
        .await;
    assert_eq!(error["code"], "missing_field");
    server
        .manager
        .broadcast("room-a", &json!("after"), Skip::Nobody)
        .unwrap();
    alice
        .send(json!({"type": "direct", "to": "alice", "data": "ping", "id": 9}))
        .await;
    let direct = alice
        .expect("direct", "the direct, not room-a's message")
        .await;
    assert_eq!(direct["data"], "ping");
    assert_eq!(alice.expect("ack", "direct ack").await["id"], 9);
}

/// In two lobbies a connection hears both, and a broadcast must name its lobby.
#[tokio::test]
async fn one_connection_hears_every_lobby_it_is_in() {
    let server = server(|_| {}).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    alice.join("a", 1).await;
    alice.join("b", 2).await;
    let mut bob = connect(server.addr, "b", "bob").await;
    let joined = alice.expect("member_joined", "bob joins b").await;
    assert_eq!(
        (joined["lobby"].as_str(), joined["user_id"].as_str()),
        (Some("b"), Some("bob"))
    );

    for lobby in ["a", "b", "c"] {
        server
            .manager
            .broadcast(lobby, &json!(lobby), Skip::Nobody)
            .unwrap();
    }
    for lobby in ["a", "b"] {
        let message = alice.expect("message", lobby).await;
        assert_eq!(
            (message["lobby"].as_str(), message["data"].as_str()),
            (Some(lobby), Some(lobby))
        );
    }
    assert_eq!(bob.expect("message", "b on v1").await["data"], "b");

    let error = alice
        .refused(
            json!({"type": "broadcast", "data": 1, "id": 3}),
            "which lobby",
        )
        .await;
    assert_eq!(error["code"], "missing_field");
    let error = alice
        .refused(
            json!({"type": "join", "lobby": "no spaces", "id": 4}),
            "bad code",
        )
        .await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("invalid_lobby"), Some(4))
    );
    alice
        .send(json!({"type": "broadcast", "lobby": "b", "data": "hi", "id": 5}))
        .await;
    assert_eq!(alice.expect("message", "own in b").await["lobby"], "b");
    assert_eq!(alice.expect("ack", "ack in b").await["offset"], 2);
    assert_eq!(bob.expect("message", "alice's in b").await["from"], "alice");

    // Leaving one lobby, then disconnecting, leaves nothing behind.
    alice.send(json!({"type": "leave", "lobby": "a"})).await;
    assert_eq!(alice.expect("left", "a").await["lobby"], "a");
    assert_eq!(
        server.manager.stats().active_lobbies,
        1,
        "a is gone, b has both"
    );
    alice.close().await;
    assert_eq!(
        bob.expect("member_left", "alice left b").await["user_id"],
        "alice"
    );
    bob.close().await;
    all_clean(&server).await;
}

/// A refused join (too many lobbies, a full lobby) leaves the connection and its other
/// lobbies as they were.
#[tokio::test]
async fn refused_joins_leave_the_other_lobbies_intact() {
    let server = server(|c| {
        c.manager.limits.max_lobbies_per_connection = 2;
        c.manager.limits.max_per_lobby = 1;
    })
    .await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    alice.join("a", 1).await;
    alice.join("b", 2).await;
    let error = alice
        .refused(json!({"type": "join", "lobby": "c", "id": 3}), "third")
        .await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("too_many_lobbies"), Some(3))
    );

    let mut bob = connect_v2(server.addr, "/ws?token=bob").await;
    let error = bob
        .refused(json!({"type": "join", "lobby": "a", "id": "x"}), "full")
        .await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("lobby_full"), Some("x"))
    );
    assert_eq!(
        bob.join("c", 4).await["lobby"],
        "c",
        "bob's connection goes on"
    );

    for lobby in ["a", "b"] {
        server
            .manager
            .broadcast(lobby, &json!(lobby), Skip::Nobody)
            .unwrap();
        assert_eq!(alice.expect("message", lobby).await["lobby"], lobby);
    }
    assert_eq!(server.manager.lobbies_of(alice.id()).unwrap().len(), 2);
}

/// Concurrent joins never put more than `max_per_lobby` connections in a lobby.
#[tokio::test]
async fn the_lobby_cap_holds_under_a_burst_of_joins() {
    let server = server(|c| c.manager.limits.max_per_lobby = 5).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(connect_v2(server.addr, &format!("/ws?token=u{i}")).await);
    }
    for client in &mut clients {
        client
            .send(json!({"type": "join", "lobby": "hot", "id": 1}))
            .await;
    }
    let mut joined = 0;
    for client in &mut clients {
        match client.next_json("answer to join").await["type"].as_str() {
            Some("joined") => joined += 1,
            Some("error") => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(joined, 5);
    let hot = server.manager.lobbies().await;
    assert_eq!((hot.len(), hot[0].connections), (1, 5));
}

/// Recovery on join: a client that leaves and comes back with `since`/`epoch` gets exactly
/// what it missed, then live traffic, while a publisher keeps going.
#[tokio::test]
async fn a_join_with_recovery_has_no_gap_and_no_duplicate() {
    let server = server(|_| {}).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    let joined = alice.join("room", 1).await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    server
        .manager
        .broadcast("room", &json!(1), Skip::Nobody)
        .unwrap();
    let seen = alice.expect("message", "first").await["offset"]
        .as_u64()
        .unwrap();
    alice
        .send(json!({"type": "leave", "lobby": "room", "id": 2}))
        .await;
    alice.expect("left", "leave").await;

    let manager = server.manager.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..300 {
            manager.broadcast("room", &json!(i), Skip::Nobody).unwrap();
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    // Keeps the lobby's history alive meanwhile (a lobby nobody is in keeps it for its TTL).
    alice
        .send(json!({"type": "join", "lobby": "room", "id": 3, "since": seen, "epoch": epoch}))
        .await;
    let joined = alice.expect("joined", "rejoin").await;
    assert_eq!(joined["epoch"], epoch.as_str());
    publisher.await.unwrap();
    let mut next = seen + 1;
    let mut recovered = false;
    while next <= 301 {
        let frame = alice.next_json("replay and live").await;
        match frame["type"].as_str() {
            Some("message") => {
                assert_eq!(frame["offset"], next, "no gap, no duplicate: {frame}");
                next += 1;
            }
            Some("recovered") => {
                assert_eq!(
                    frame,
                    json!({"type": "recovered", "lobby": "room", "ok": true})
                );
                recovered = true;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(recovered);
}

/// Presence is per lobby and per user: a user with two tabs joins once and leaves once, by
/// `leave` or by disconnecting, in every lobby.
#[tokio::test]
async fn presence_is_per_lobby_and_per_user() {
    let server = server(|c| {
        c.manager.presence.events_batch = std::time::Duration::ZERO;
        c.manager.user_policy = switchboard::UserPolicy::Multi;
    })
    .await;
    let mut watcher = connect_v2(server.addr, "/ws?token=watcher").await;
    watcher.join("x", 1).await;
    watcher.join("y", 2).await;
    let mut tab1 = connect_v2(server.addr, "/ws?token=alice").await;
    let mut tab2 = connect_v2(server.addr, "/ws?token=alice").await;
    tab1.join("x", 1).await;
    let event = watcher.expect("member_joined", "alice in x").await;
    assert_eq!(
        (event["lobby"].as_str(), event["user_id"].as_str()),
        (Some("x"), Some("alice"))
    );
    tab2.join("x", 1).await;
    tab2.join("y", 2).await;
    assert_eq!(
        watcher.expect("member_joined", "alice in y").await["lobby"],
        "y",
        "not x again"
    );

    tab1.send(json!({"type": "leave", "lobby": "x"})).await;
    tab1.expect("left", "tab1 leaves x").await;
    // tab2 is still in x: the next event the watcher sees is tab2's departure from both.
    tab2.close().await;
    let mut left: Vec<String> = Vec::new();
    for _ in 0..2 {
        let event = watcher.expect("member_left", "alice leaves").await;
        assert_eq!(event["user_id"], "alice");
        left.push(event["lobby"].as_str().unwrap().to_owned());
    }
    left.sort();
    assert_eq!(left, ["x", "y"]);
    assert_eq!(
        server.manager.presence("x").await.unwrap().len(),
        1,
        "only the watcher"
    );
}

/// The backend joins a user's v2 connections to a lobby and removes them again.
#[tokio::test]
async fn the_backend_joins_and_removes_users() {
    let server = server(|c| c.manager.user_policy = switchboard::UserPolicy::Multi).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    let mut v1 = connect(server.addr, "lobby", "alice").await;
    assert_eq!(
        server.manager.join_user("alice", "news").await.unwrap(),
        1,
        "v2 only"
    );
    let joined = alice.expect("joined", "server-side join").await;
    assert_eq!(joined["lobby"], "news");
    assert!(joined.get("id").is_none());
    server
        .manager
        .broadcast("news", &json!("hello"), Skip::Nobody)
        .unwrap();
    assert_eq!(alice.expect("message", "news").await["data"], "hello");

    assert_eq!(server.manager.leave_user("alice", "news").await.unwrap(), 1);
    let left = alice.expect("left", "removed").await;
    assert_eq!(
        left,
        json!({"type": "left", "lobby": "news", "reason": "removed"})
    );
    // A v1 connection lives in its one lobby: removing it from there closes it.
    assert_eq!(
        server.manager.leave_user("alice", "lobby").await.unwrap(),
        1
    );
    v1.ending("v1 removed").await.assert(4009, "kicked", false);

    // A kick out of one lobby: `left` with reason `kicked`, and the connection stays.
    server.manager.join_user("alice", "game").await.unwrap();
    alice.expect("joined", "game").await;
    let kicked = server.manager.leave(alice.id(), "game").await.unwrap();
    assert!(kicked);
    let left = alice.expect("left", "kicked").await;
    assert_eq!(
        left,
        json!({"type": "left", "lobby": "game", "reason": "kicked"})
    );
    alice
        .send(json!({"type": "presence", "lobby": "game", "id": 9}))
        .await;
    assert_eq!(
        alice.expect("error", "not in game").await["code"],
        "not_allowed"
    );
}

fn jwt(sub: &str, lobbies: &[&str]) -> String {
    jwt_for(sub, lobbies, 3600)
}

fn jwt_for(sub: &str, lobbies: &[&str], secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": sub, "exp": now + secs, "lobbies": lobbies});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap()
}

/// The token's `lobbies` claim governs every join, with prefixes ending in `*`.
#[tokio::test]
async fn the_tokens_lobbies_govern_every_join() {
    let server = server(|c| {
        c.jwt_secret = Some(switchboard_server::config::Secret(TEST_SECRET.into()));
    })
    .await;
    let token = jwt("alice", &["lobby-1", "team-42:*"]);
    let mut alice = connect_v2(server.addr, &format!("/ws?token={token}")).await;
    assert!(alice.welcome["token_expires_at"].as_u64().is_some());
    alice.join("team-42:chat", 1).await;
    alice.join("lobby-1", 2).await;
    for (lobby, id) in [("team-4", 3), ("lobby-10", 4)] {
        let error: Value = alice
            .refused(json!({"type": "join", "lobby": lobby, "id": id}), lobby)
            .await;
        assert_eq!(
            (error["code"].as_str(), error["id"].as_u64()),
            (Some("not_allowed"), Some(id))
        );
    }
    // A refresh that no longer allows lobby-1 leaves it, then acknowledges with the expiry.
    let narrower = jwt_for("alice", &["team-42:*"], 7200);
    alice
        .send(json!({"type": "refresh", "token": narrower, "id": 5}))
        .await;
    let left = alice.expect("left", "lobby-1 no longer allowed").await;
    assert_eq!(
        left,
        json!({"type": "left", "lobby": "lobby-1", "reason": "not_allowed"})
    );
    let ack = alice.expect("ack", "refresh").await;
    assert_eq!(ack["id"], 5);
    let expires = ack["token_expires_at"].as_u64().unwrap();
    assert!(expires > alice.welcome["token_expires_at"].as_u64().unwrap());
    assert_eq!(
        server.manager.lobbies_of(alice.id()).unwrap()[0].as_str(),
        "team-42:chat"
    );
    // Another user's token is refused, and the connection goes on as it was.
    let bobs = jwt_for("bob", &["lobby-1"], 3600);
    let error = alice
        .refused(
            json!({"type": "refresh", "token": bobs, "id": 6}),
            "bob's token",
        )
        .await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("not_allowed"), Some(6))
    );
    let error = alice
        .refused(
            json!({"type": "refresh", "token": "garbage", "id": 7}),
            "bad token",
        )
        .await;
    assert_eq!(error["code"], "not_allowed");
    let error = alice
        .refused(
            json!({"type": "join", "lobby": "lobby-1", "id": 8}),
            "lobby-1 after refresh",
        )
        .await;
    assert_eq!(error["code"], "not_allowed");
}

/// A refresh moves the connection's expiry: a token about to expire, refreshed, does not close
/// the connection with 4010.
#[tokio::test]
async fn a_refresh_moves_the_expiry() {
    let server = server(|c| {
        c.jwt_secret = Some(switchboard_server::config::Secret(TEST_SECRET.into()));
    })
    .await;
    let short = jwt_for("alice", &["room"], 2);
    let mut alice = connect_v2(server.addr, &format!("/ws/room?token={short}")).await;
    alice.expect("joined", "room").await;
    let long = jwt_for("alice", &["room"], 3600);
    alice
        .send(json!({"type": "refresh", "token": long, "id": 1}))
        .await;
    alice.expect("ack", "refresh").await;
    // Past the first token's expiry, the connection still answers.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    alice.send(json!({"type": "presence", "id": 2})).await;
    assert_eq!(alice.expect("presence", "still connected").await["id"], 2);
}

/// The HTTP API: join a user's v2 connections to a lobby, show a connection's lobbies, remove
/// the user again; stats count memberships.
#[tokio::test]
async fn the_http_api_joins_shows_and_removes() {
    const KEY: &str = "v2-test-key";
    let server = server(|c| {
        c.api_key = Some(switchboard_server::config::Secret(KEY.into()));
    })
    .await;
    let mut alice = connect_v2(server.addr, "/ws/first?token=alice").await;
    alice.expect("joined", "first").await;
    let joined = http(
        server.addr,
        "POST",
        "/api/users/alice/lobbies/second",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(joined.status, 200);
    assert_eq!(joined.json(), json!({"joined": 1}));
    assert_eq!(alice.expect("joined", "second").await["lobby"], "second");

    let path = format!("/api/connections/{}", alice.id());
    let shown = http(server.addr, "GET", &path, Some(KEY), None)
        .await
        .json();
    assert_eq!(shown["user_id"], "alice");
    assert_eq!(shown["protocol"], 2);
    assert_eq!(shown["lobbies"], json!(["first", "second"]));
    let stats = http(server.addr, "GET", "/api/stats", Some(KEY), None)
        .await
        .json();
    assert_eq!(
        (
            stats["total_connections"].as_u64(),
            stats["memberships"].as_u64()
        ),
        (Some(1), Some(2))
    );

    let removed = http(
        server.addr,
        "DELETE",
        "/api/users/alice/lobbies/first",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(removed.json(), json!({"removed": 1}));
    let left = alice.expect("left", "removed from first").await;
    assert_eq!(
        (left["lobby"].as_str(), left["reason"].as_str()),
        (Some("first"), Some("removed"))
    );
    let shown = http(server.addr, "GET", &path, Some(KEY), None)
        .await
        .json();
    assert_eq!(shown["lobbies"], json!(["second"]));
    let bad = http(
        server.addr,
        "POST",
        "/api/users/alice/lobbies/no%20spaces",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "invalid_lobby")
    );
    let missing = http(
        server.addr,
        "GET",
        "/api/connections/nope-1",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
}
