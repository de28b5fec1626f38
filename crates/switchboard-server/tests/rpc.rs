//! RPC against a real HTTP receiver started by the test, which verifies every signature: a v2
//! client's `rpc` is posted to `webhook.rpc_url` and the answer is its `rpc_result`; failures,
//! a slow receiver and oversized answers are `rpc_failed`; calls are bounded per connection
//! and per server without holding the connection's other traffic.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "rpc-secret";

/// A call as the receiver got it; the receiver fails the test on an unsigned one.
type Calls = mpsc::UnboundedReceiver<Value>;

/// A receiver on 127.0.0.1:0 whose answer depends on the call's `method`:
/// `echo` answers the call's `data`; `empty` an empty 200; `html` a 200 that is not JSON;
/// `boom` a 500 with the backend's error body; `stall` never answers; `big` answers more than
/// 64 KiB; `hold` answers its `data` once the test lets one call through `gate`.
async fn receiver(gate: Arc<Semaphore>) -> (SocketAddr, Calls) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/rpc",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (tx, gate) = (tx.clone(), gate.clone());
            async move {
                assert!(verify_signature(SECRET, &headers, &body), "unsigned call");
                let call: Value = serde_json::from_slice(&body).unwrap();
                let _ = tx.send(call.clone());
                let data = call["data"].to_string();
                match call["method"].as_str().unwrap() {
                    "echo" => (StatusCode::OK, data).into_response(),
                    "empty" => StatusCode::OK.into_response(),
                    "html" => (StatusCode::OK, "<html>").into_response(),
                    "boom" => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"error":{"message":"cart service down"}}"#,
                    )
                        .into_response(),
                    "big" => {
                        let big = json!("x".repeat(64 * 1024)).to_string();
                        (StatusCode::OK, big).into_response()
                    }
                    "hold" => {
                        gate.acquire().await.unwrap().forget();
                        (StatusCode::OK, data).into_response()
                    }
                    _ => std::future::pending().await,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

/// A server posting calls to `receiver`, after `tune`.
async fn rpc_server(
    receiver: SocketAddr,
    tune: impl FnOnce(&mut switchboard_server::ServerConfig),
) -> switchboard_server::RunningServer {
    server(|c| {
        c.set("webhook.rpc_url", &format!("http://{receiver}/rpc"))
            .unwrap();
        c.set("webhook.secret", SECRET).unwrap();
        tune(c);
    })
    .await
}

fn rpc(method: &str, data: Value, id: u64) -> Value {
    json!({"type": "rpc", "method": method, "data": data, "id": id})
}

async fn next_call(calls: &mut Calls) -> Value {
    tokio::time::timeout(WAIT, calls.recv())
        .await
        .expect("a call in time")
        .unwrap()
}

/// The `error` frame's code, id and message.
fn refusal(frame: &Value) -> (&str, &Value, &str) {
    assert_eq!(frame["type"], "error", "{frame}");
    (
        frame["code"].as_str().unwrap(),
        &frame["id"],
        frame["message"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn a_call_is_posted_signed_and_the_answer_is_its_result() {
    let (addr, mut calls) = receiver(Arc::new(Semaphore::new(0))).await;
    let server = rpc_server(addr, |_| {}).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    alice
        .send(rpc("echo", json!({"cart": [1, 2], "note": "hi"}), 1))
        .await;
    assert_eq!(
        alice.next_json("the result").await,
        json!({"type": "rpc_result", "id": 1, "data": {"cart": [1, 2], "note": "hi"}})
    );
    let call = next_call(&mut calls).await;
    assert_eq!(
        call,
        json!({"connection_id": alice.id(), "user_id": "alice", "ip": "127.0.0.1",
               "method": "echo", "data": {"cart": [1, 2], "note": "hi"}})
    );
    // An empty answer is null; no `data` is null; neither is acked (the next frame answers
    // the next call).
    alice.send(rpc("empty", json!(7), 2)).await;
    assert_eq!(
        alice.next_json("empty").await,
        json!({"type": "rpc_result", "id": 2, "data": null})
    );
    alice
        .send(json!({"type": "rpc", "method": "echo", "id": "s"}))
        .await;
    assert_eq!(
        alice.next_json("no data").await,
        json!({"type": "rpc_result", "id": "s", "data": null})
    );
    // A 2xx that is not JSON fails the call.
    alice.send(rpc("html", json!(0), 3)).await;
    let error = alice.next_json("not JSON").await;
    assert_eq!(
        refusal(&error),
        ("rpc_failed", &json!(3), "the backend's answer is not JSON")
    );
    let metrics = http(server.addr, "GET", "/metrics", None, None).await.body;
    for outcome in ["ok", "failed"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!(
                "switchboard_rpc_calls_total{{outcome=\"{outcome}\"}}"
            ))),
            "{outcome} is counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn the_backends_error_status_fails_the_call_with_its_message() {
    let (addr, _calls) = receiver(Arc::new(Semaphore::new(0))).await;
    let server = rpc_server(addr, |_| {}).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    alice.send(rpc("boom", json!({}), 9)).await;
    let error = alice.next_json("the failure").await;
    assert_eq!(
        refusal(&error),
        (
            "rpc_failed",
            &json!(9),
            "the backend answered HTTP 500: cart service down"
        )
    );
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_fails_the_call() {
    let (addr, mut calls) = receiver(Arc::new(Semaphore::new(0))).await;
    let server = rpc_server(addr, |c| c.set("webhook.timeout_ms", "200").unwrap()).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    let started = std::time::Instant::now();
    alice.send(rpc("stall", json!(1), 4)).await;
    next_call(&mut calls).await;
    let error = alice.next_json("the timeout").await;
    assert_eq!(
        refusal(&error),
        (
            "rpc_failed",
            &json!(4),
            "the backend did not answer within 200 ms"
        )
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
}

#[tokio::test]
async fn an_answer_over_64_kib_fails_the_call() {
    let (addr, _calls) = receiver(Arc::new(Semaphore::new(0))).await;
    let server = rpc_server(addr, |_| {}).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    alice.send(rpc("big", json!(null), 5)).await;
    let error = alice.next_json("too large").await;
    assert_eq!(
        refusal(&error),
        (
            "rpc_failed",
            &json!(5),
            "the backend's answer is larger than 65536 bytes"
        )
    );
}

/// Reads until a WebSocket Pong, failing on any text frame but `health_ping`.
async fn pong(client: &mut Client) -> Vec<u8> {
    loop {
        let frame = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("a pong in time")
            .unwrap()
            .unwrap();
        match frame {
            Message::Pong(payload) => return payload.to_vec(),
            Message::Text(t) if t.contains("health_ping") => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn calls_past_the_connections_bound_are_refused_and_waiting_calls_hold_nothing_else() {
    let gate = Arc::new(Semaphore::new(0));
    let (addr, mut calls) = receiver(gate.clone()).await;
    let server = rpc_server(addr, |c| c.set("webhook.rpc_concurrency", "2").unwrap()).await;
    let mut alice = connect_v2(server.addr, "/ws/room?token=alice").await;
    alice.expect("joined", "room").await;
    let mut bob = connect_v2(server.addr, "/ws/room?token=bob").await;
    bob.expect("joined", "room").await;
    alice.expect("member_joined", "bob").await;

    // Two calls wait at the backend; the third is refused at once and never posted.
    alice.send(rpc("hold", json!("a"), 1)).await;
    alice.send(rpc("hold", json!("b"), 2)).await;
    alice.send(rpc("hold", json!("c"), 3)).await;
    let error = alice.next_json("the refusal").await;
    let (code, id, _) = refusal(&error);
    assert_eq!((code, id), ("rate_limited", &json!(3)));
    assert_eq!(next_call(&mut calls).await["data"], "a");
    assert_eq!(next_call(&mut calls).await["data"], "b");

    // Meanwhile the connection lives: a broadcast reaches it, its own is acked, pings answered.
    bob.send(broadcast(json!("from bob"))).await;
    assert_eq!(alice.expect("message", "bob's").await["data"], "from bob");
    alice
        .send(json!({"type": "broadcast", "data": "mine", "id": 4, "exclude_self": true}))
        .await;
    assert_eq!(alice.expect("ack", "own broadcast").await["id"], 4);
    alice
        .ws
        .send(Message::Ping(b"still here".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(pong(&mut alice).await, b"still here");

    // An answer frees a place for the next call: its place is free by the time it arrives.
    gate.add_permits(1);
    let mut answered = vec![alice.expect("rpc_result", "a held call").await["id"].clone()];
    alice.send(rpc("echo", json!("d"), 5)).await;
    gate.add_permits(1);
    for _ in 0..2 {
        answered.push(alice.expect("rpc_result", "the rest").await["id"].clone());
    }
    answered.sort_by_key(|id| id.as_u64());
    assert_eq!(answered, [json!(1), json!(2), json!(5)]);
}

#[tokio::test]
async fn calls_past_the_servers_bound_are_overloaded() {
    let gate = Arc::new(Semaphore::new(0));
    let (addr, mut calls) = receiver(gate.clone()).await;
    let server = rpc_server(addr, |c| c.set("webhook.rpc_max_in_flight", "1").unwrap()).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    let mut bob = connect_v2(server.addr, "/ws?token=bob").await;
    alice.send(rpc("hold", json!("a"), 1)).await;
    assert_eq!(next_call(&mut calls).await["user_id"], "alice");
    bob.send(rpc("echo", json!("b"), 2)).await;
    let error = bob.next_json("the refusal").await;
    let (code, id, message) = refusal(&error);
    assert_eq!((code, id), ("overloaded", &json!(2)));
    assert!(message.contains("webhook.rpc_max_in_flight"), "{message}");
    gate.add_permits(1);
    assert_eq!(
        alice.next_json("alice's answer").await,
        json!({"type": "rpc_result", "id": 1, "data": "a"})
    );
    // The place is free again.
    bob.send(rpc("echo", json!("b"), 3)).await;
    assert_eq!(bob.next_json("bob's answer").await["data"], "b");
}

#[tokio::test]
async fn bad_calls_are_refused_before_the_backend() {
    let (addr, mut calls) = receiver(Arc::new(Semaphore::new(0))).await;
    let server = rpc_server(addr, |_| {}).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    let error = alice
        .refused(json!({"type": "rpc", "method": "echo"}), "no id")
        .await;
    let (code, id, _) = refusal(&error);
    assert_eq!((code, id), ("missing_field", &Value::Null));
    for (method, id) in [(json!(""), 1), (json!("m".repeat(129)), 2), (json!(7), 3)] {
        let error = alice
            .refused(
                json!({"type": "rpc", "method": method, "id": id}),
                "a bad method",
            )
            .await;
        let (code, echoed, _) = refusal(&error);
        assert_eq!((code, echoed), ("invalid_message", &json!(id)), "{method}");
    }
    let error = alice
        .refused(json!({"type": "rpc", "id": 4}), "no method")
        .await;
    assert_eq!(refusal(&error).0, "missing_field");
    // The longest method is a method.
    alice.send(rpc(&"m".repeat(128), json!(1), 5)).await;
    assert_eq!(next_call(&mut calls).await["method"], "m".repeat(128));
    assert!(calls.try_recv().is_err(), "only the good call was posted");
}

/// v1 has no `rpc`: it stays an application message (refused here, never posted).
#[tokio::test]
async fn a_v1_connections_rpc_is_an_unknown_type() {
    let (addr, mut calls) = receiver(Arc::new(Semaphore::new(0))).await;
    let server = rpc_server(addr, |_| {}).await;
    let mut v1 = connect(server.addr, "room", "alice").await;
    v1.send(rpc("echo", json!(1), 1)).await;
    let error = v1.expect("error", "v1 rpc").await;
    assert_eq!(
        (&error["code"], &error["id"]),
        (&json!("unknown_type"), &json!(1))
    );
    // A v2 call after it is the first the receiver sees.
    let mut v2 = connect_v2(server.addr, "/ws?token=bob").await;
    v2.send(rpc("echo", json!(2), 2)).await;
    v2.expect("rpc_result", "v2 rpc").await;
    assert_eq!(next_call(&mut calls).await["user_id"], "bob");
}

#[tokio::test]
async fn without_rpc_url_rpc_is_an_unknown_type() {
    let server = server(|_| {}).await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    alice.send(rpc("echo", json!(1), 1)).await;
    let error = alice.expect("error", "no rpc").await;
    assert_eq!(
        refusal(&error),
        ("unknown_type", &json!(1), "this server answers no rpc")
    );
}

/// Over a v2 SSE stream the call is posted to `/sse/messages` and the result is an event.
#[tokio::test]
async fn a_v2_sse_stream_calls_too() {
    let (addr, mut calls) = receiver(Arc::new(Semaphore::new(0))).await;
    let server = rpc_server(addr, |_| {}).await;
    let mut sse = common::sse::Sse::open(server.addr, "/sse?token=alice", &[]).await;
    let welcome = sse.expect("welcome", "welcome").await;
    let id = welcome.data["connection_id"].as_str().unwrap().to_owned();
    let body = json!({"connection_id": id, "message": rpc("echo", json!({"n": 1}), 1)});
    let posted = http(
        server.addr,
        "POST",
        "/sse/messages?token=alice",
        None,
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    let result = sse.expect("rpc_result", "the result").await;
    assert_eq!(
        result.data,
        json!({"type": "rpc_result", "id": 1, "data": {"n": 1}})
    );
    assert_eq!(next_call(&mut calls).await["connection_id"], id.as_str());
}
