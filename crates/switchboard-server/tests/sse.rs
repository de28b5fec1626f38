//! Server-Sent Events: the same connections without WebSocket.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::time::Duration;

use common::sse::{Sse, sse_post};
use common::*;
use futures_util::SinkExt;
use serde_json::json;
use switchboard::Skip;

#[tokio::test]
async fn sse_clients_chat_with_websocket_clients() {
    let server = server(|_| {}).await;
    let mut ws = connect(server.addr, "room", "wendy").await;
    let mut sse = Sse::open(server.addr, "/sse/room?token=sam", &[]).await;
    assert_eq!(sse.status, 200);
    assert!(sse.headers.contains("content-type: text/event-stream"));
    let welcome = sse.expect("welcome", "welcome").await;
    let id = welcome.data["connection_id"].as_str().unwrap().to_owned();
    let epoch = welcome.data["epoch"].as_str().unwrap().to_owned();
    ws.expect("member_joined", "sam joins over SSE").await;
    // WebSocket -> SSE, with an id that recovers.
    ws.send(json!({"type":"broadcast","data":"to sam"})).await;
    let m = sse.expect("message", "wendy's broadcast").await;
    assert_eq!(m.data["data"], "to sam");
    assert_eq!(m.id.as_deref(), Some(format!("{epoch}:1").as_str()));
    // SSE -> WebSocket, by POST.
    let r = sse_post(
        server.addr,
        "room",
        "sam",
        &id,
        json!({"type":"broadcast","data":"from sam"}),
    )
    .await;
    assert_eq!((r.status, r.json()), (202, json!({"accepted": true})));
    assert_eq!(ws.expect("message", "wendy's own").await["data"], "to sam");
    assert_eq!(
        ws.expect("message", "sam's broadcast").await["data"],
        "from sam"
    );
    // Errors in posted frames come back on the stream, with the id.
    sse_post(
        server.addr,
        "room",
        "sam",
        &id,
        json!({"type":"nope","id":5}),
    )
    .await;
    sse.expect("message", "sam's own broadcast").await;
    let e = sse.expect("error", "the error for the bad frame").await;
    assert_eq!(
        (e.data["code"].as_str(), e.data["id"].as_i64()),
        (Some("unknown_type"), Some(5))
    );
    // Posts are checked: another user, another lobby, an unknown connection, a bad body.
    assert_eq!(
        sse_post(
            server.addr,
            "room",
            "mallory",
            &id,
            json!({"type":"presence"})
        )
        .await
        .status,
        403
    );
    assert_eq!(
        sse_post(server.addr, "other", "sam", &id, json!({"type":"presence"}))
            .await
            .status,
        403
    );
    assert_eq!(
        sse_post(
            server.addr,
            "room",
            "sam",
            "nope-1",
            json!({"type":"presence"})
        )
        .await
        .status,
        404
    );
    let bad = http(
        server.addr,
        "POST",
        "/sse/room/messages?token=sam",
        None,
        Some("{}"),
    )
    .await;
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "invalid_body")
    );
    // A kick ends the stream with a close event.
    server
        .manager
        .disconnect(&id, switchboard::DisconnectReason::Kicked)
        .await
        .unwrap();
    let close = sse.next("the close event").await.unwrap();
    assert_eq!(
        (close.name.as_str(), close.data.clone()),
        ("close", json!({"code":4009,"reason":"kicked"}))
    );
    assert!(sse.next("the end of the stream").await.is_none());
    ws.expect("member_left", "sam's leave").await;
}

#[tokio::test]
async fn sse_needs_health_pongs_like_any_connection() {
    let server = server(|c| {
        c.manager.ping_interval = Duration::from_millis(200);
        c.manager.pong_timeout = Duration::from_millis(200);
    })
    .await;
    let mut silent = Sse::open(server.addr, "/sse/room?token=quiet", &[]).await;
    silent.expect("welcome", "welcome").await;
    let mut lively = Sse::open(server.addr, "/sse/room?token=lively", &[]).await;
    let id = lively.expect("welcome", "welcome").await.data["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The lively one answers pings by POST; the silent one never does.
    let answer = async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await; // the client's own pace
            sse_post(
                server.addr,
                "room",
                "lively",
                &id,
                json!({"type":"health_pong","timestamp":1}),
            )
            .await;
        }
    };
    let (_, close) = tokio::join!(answer, async {
        loop {
            let e = silent.next("the stale close").await.unwrap();
            if e.name == "close" {
                return e;
            }
        }
    });
    assert_eq!(close.data["code"], 4004);
    eventually("only the lively one remains", || {
        server.manager.stats().total_connections == 1
    })
    .await;
    assert_eq!(server.manager.presence("room").await.unwrap().len(), 1);
}

#[tokio::test]
async fn last_event_id_recovers_what_was_missed() {
    let server = server(|_| {}).await;
    let _anchor = connect(server.addr, "room", "anchor").await;
    let mut first = Sse::open(server.addr, "/sse/room?token=rita", &[]).await;
    first.expect("welcome", "welcome").await;
    server
        .manager
        .broadcast("room", &json!(0), Skip::Nobody)
        .unwrap();
    let last_id = first
        .expect("message", "the first message")
        .await
        .id
        .unwrap();
    // Gone without a word: the server finds out at its next write (a ping) or by the
    // replacement below, whichever comes first.
    drop(first);
    for i in 1..=5 {
        server
            .manager
            .broadcast("room", &json!(i), Skip::Nobody)
            .unwrap();
    }
    let mut back = Sse::open(
        server.addr,
        "/sse/room?token=rita",
        &[("Last-Event-ID", &last_id)],
    )
    .await;
    back.expect("welcome", "welcome").await;
    for i in 1..=5 {
        let m = back.expect("message", "a missed message").await;
        assert_eq!(m.data["data"], i);
    }
    assert_eq!(back.expect("recovered", "recovered").await.data["ok"], true);
}

#[tokio::test]
async fn refusals_are_http_statuses_with_json_errors() {
    let jwt =
        server(|c| c.jwt_secret = Some(switchboard_server::config::Secret(TEST_SECRET.into())))
            .await;
    let r = Sse::open(jwt.addr, "/sse/room?token=forged", &[]).await;
    assert_eq!(r.status, 401);
    let full = server(|c| c.manager.limits.max_per_lobby = 1).await;
    let mut one = Sse::open(full.addr, "/sse/room?token=a", &[]).await;
    one.expect("welcome", "welcome").await;
    let refused = http(full.addr, "GET", "/sse/room?token=b", None, None).await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (503, "lobby_full")
    );
    assert!(refused.headers.iter().any(|(n, _)| n == "retry-after"));
    let limited = server(|c| c.manager.rate.connects_per_ip_per_sec = 1).await;
    let mut ok = Sse::open(limited.addr, "/sse/room?token=a", &[]).await;
    ok.expect("welcome", "welcome").await;
    assert_eq!(
        http(limited.addr, "GET", "/sse/room?token=b", None, None)
            .await
            .status,
        429
    );
}

/// JSON may carry raw line breaks between its tokens (a client's pretty-printed `data`): each
/// line becomes its own `data:` field, so the frame still arrives as one event, intact.
#[tokio::test]
async fn frames_with_line_breaks_arrive_as_one_event_each() {
    let server = server(|_| {}).await;
    let mut ws = connect(server.addr, "room", "wendy").await;
    let mut sse = Sse::open(server.addr, "/sse/room?token=sam", &[]).await;
    sse.expect("welcome", "welcome").await;
    ws.expect("member_joined", "sam joins").await;
    let pretty = "{\"type\":\"broadcast\",\"data\":{\n  \"list\": [\r\n    1,\r    2\n  ],\n  \"s\": \"a\\nb\"\n}}";
    ws.ws
        .send(tokio_tungstenite::tungstenite::Message::text(pretty))
        .await
        .unwrap();
    let m = sse.expect("message", "the pretty-printed broadcast").await;
    assert_eq!(m.data["data"], json!({"list": [1, 2], "s": "a\nb"}));
    // The next event is still a separate one.
    ws.send(json!({"type":"broadcast","data":"after"})).await;
    let next = sse.expect("message", "the broadcast after it").await;
    assert_eq!(next.data["data"], "after");
}

/// Protocol v2 over SSE: one stream in several lobbies (`lobbies=`), joins and broadcasts
/// through `/sse/messages`, and after a cut the browser's `Last-Event-ID` alone resumes every
/// lobby where it stopped.
#[tokio::test]
async fn a_v2_stream_is_in_many_lobbies_and_resumes_them_all() {
    let server = server(|_| {}).await;
    let mut sse = Sse::open(server.addr, "/sse?token=alice&lobbies=a,b", &[]).await;
    assert_eq!(sse.status, 200);
    let welcome = sse.expect("welcome", "welcome").await;
    assert_eq!(welcome.data["protocol"], 2);
    let id = welcome.data["connection_id"].as_str().unwrap().to_owned();
    sse.expect("joined", "a").await;
    let joined_b = sse.expect("joined", "b").await;
    let epoch_b = joined_b.data["epoch"].as_str().unwrap().to_owned();
    let last_id = joined_b.id.clone().unwrap();
    assert!(
        last_id.starts_with("a=") && last_id.contains(&format!(",b={epoch_b}:0")),
        "{last_id}"
    );

    let post = |message: serde_json::Value| {
        let body = json!({"connection_id": id, "message": message}).to_string();
        let addr = server.addr;
        async move { http(addr, "POST", "/sse/messages?token=alice", None, Some(&body)).await }
    };
    let accepted = post(json!({"type": "broadcast", "lobby": "b", "data": 1, "id": 1})).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let message = sse.expect("message", "own broadcast in b").await;
    assert_eq!(
        (
            message.data["lobby"].as_str(),
            message.data["offset"].as_u64()
        ),
        (Some("b"), Some(1))
    );
    assert!(
        message
            .id
            .as_deref()
            .unwrap()
            .ends_with(&format!("b={epoch_b}:1"))
    );
    assert_eq!(sse.expect("ack", "ack").await.data["offset"], 1);
    let refused = http(
        server.addr,
        "POST",
        "/sse/messages?token=bob",
        None,
        Some(
            &json!({"connection_id": id, "message": {"type": "presence", "lobby": "a"}})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(refused.status, 403, "another user's post");

    // Cut: what is published meanwhile in both lobbies comes back on resume, and only that.
    let last_seen = message.id.unwrap();
    // (The server notices the cut at its next write; the new stream replaces it meanwhile.)
    drop(sse);
    for n in 2..=3 {
        server
            .manager
            .broadcast("a", &json!(n), Skip::Nobody)
            .unwrap();
        server
            .manager
            .broadcast("b", &json!(n), Skip::Nobody)
            .unwrap();
    }
    let mut again = Sse::open(
        server.addr,
        "/sse?token=alice&lobbies=a,b",
        &[("Last-Event-ID", last_seen.as_str())],
    )
    .await;
    again.expect("welcome", "welcome again").await;
    for (lobby, offsets) in [("a", [1, 2]), ("b", [2, 3])] {
        let joined = again.expect("joined", lobby).await;
        assert_eq!(joined.data["lobby"], lobby);
        for offset in offsets {
            let replayed = again.expect("message", "replayed").await;
            assert_eq!(
                (
                    replayed.data["lobby"].as_str(),
                    replayed.data["offset"].as_u64()
                ),
                (Some(lobby), Some(offset))
            );
        }
        let recovered = again.expect("recovered", lobby).await;
        assert_eq!(
            recovered.data,
            json!({"type": "recovered", "lobby": lobby, "ok": true})
        );
    }
}

/// `lobbies=` is bounded and checked before anything is opened.
#[tokio::test]
async fn a_v2_streams_lobby_list_is_bounded_and_checked() {
    let server = server(|_| {}).await;
    let bad = Sse::open(server.addr, "/sse?token=alice&lobbies=a,no%20spaces", &[]).await;
    assert_eq!(bad.status, 400);
    let many: Vec<String> = (0..257).map(|i| format!("l{i}")).collect();
    let path = format!("/sse?token=alice&lobbies={}", many.join(","));
    let too_many = Sse::open(server.addr, &path, &[]).await;
    assert_eq!(too_many.status, 400);
    all_clean(&server).await;
}
