//! Protocol v2's `rpc` through the library's `Handler`: the app replies at once, fails the
//! call, or answers later from a task of its own; a connection's calls waiting are bounded,
//! the connection goes on reading meanwhile, and a call whose client leaves is dropped. A real
//! axum app on 127.0.0.1:0, real WebSocket clients offering `switchboard.v2`.

mod common;
use std::sync::Arc;

use common::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard::{Client, ClientError, Config, ErrorCode, Handler, NoHandler, RpcDecision};
use tokio::sync::{Semaphore, mpsc};

/// `echo` replies with its data at once, `deny` fails, `slow` answers with its data once the
/// test lets one call through `gate`. Every call the app is asked about, and every `slow`
/// call that ends (`done`) or is dropped unanswered (`dropped`), is reported.
struct Calls {
    gate: Arc<Semaphore>,
    seen: mpsc::UnboundedSender<String>,
}

/// Reports `dropped` when a call's future is dropped before it ended.
struct Watch {
    name: String,
    seen: mpsc::UnboundedSender<String>,
    ended: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let word = if self.ended { "done" } else { "dropped" };
        let _ = self.seen.send(format!("{word} {}", self.name));
    }
}

impl Handler for Calls {
    fn on_rpc(&self, client: &Client, method: &str, data: &RawValue) -> RpcDecision {
        let _ = self
            .seen
            .send(format!("{method} {} {data}", client.info().user_id));
        match method {
            "echo" => RpcDecision::Reply(data.to_owned()),
            "slow" => {
                let gate = self.gate.clone();
                let data = data.to_owned();
                let watch = Watch {
                    name: data.get().to_owned(),
                    seen: self.seen.clone(),
                    ended: false,
                };
                RpcDecision::Later(Box::pin(async move {
                    // The whole watch moves in (not only the field this block sets).
                    let mut watch = watch;
                    gate.acquire().await.expect("open").forget();
                    watch.ended = true;
                    Ok(data)
                }))
            }
            _ => RpcDecision::Fail(ClientError::new(ErrorCode::NotAllowed, "no such call")),
        }
    }
}

fn rpc(method: &str, data: Value, id: u64) -> Value {
    json!({"type": "rpc", "method": method, "data": data, "id": id})
}

/// The `error` with its code and id.
fn error_of(frame: &Value) -> (&str, &str, u64) {
    (
        frame["type"].as_str().unwrap_or_default(),
        frame["code"].as_str().unwrap_or_default(),
        frame["id"].as_u64().unwrap_or_default(),
    )
}

#[tokio::test]
async fn the_app_replies_fails_or_answers_later_within_the_bound() {
    let gate = Arc::new(Semaphore::new(0));
    let (seen, mut heard_rx) = mpsc::unbounded_channel();
    let mut config = Config::default();
    config.limits.max_rpc_in_flight = 2;
    let handler = Calls {
        gate: gate.clone(),
        seen,
    };
    let addr = app(config, handler).await;
    let mut alice = connect(addr, "alice").await;

    // Reply: the result is the answer, with the call's id; no ack follows.
    send(&mut alice, rpc("echo", json!({"x": [1, 2]}), 1)).await;
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "rpc_result", "id": 1, "data": {"x": [1, 2]}})
    );
    assert_eq!(heard(&mut heard_rx).await, r#"echo alice {"x":[1,2]}"#);
    // No data is null.
    send(
        &mut alice,
        json!({"type": "rpc", "method": "echo", "id": "n"}),
    )
    .await;
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "rpc_result", "id": "n", "data": null})
    );
    assert_eq!(heard(&mut heard_rx).await, "echo alice null");

    // Fail: the app's error, with the id.
    send(&mut alice, rpc("nope", json!(0), 2)).await;
    let error = next(&mut alice).await;
    assert_eq!(error_of(&error), ("error", "not_allowed", 2));
    assert_eq!(error["message"], "no such call");
    assert_eq!(heard(&mut heard_rx).await, "nope alice 0");

    // Later: two calls wait (the bound); the third is refused at once, unasked.
    send(&mut alice, rpc("slow", json!(3), 3)).await;
    send(&mut alice, rpc("slow", json!(4), 4)).await;
    send(&mut alice, rpc("slow", json!(5), 5)).await;
    let refused = next(&mut alice).await;
    assert_eq!(error_of(&refused), ("error", "rate_limited", 5));
    assert_eq!(heard(&mut heard_rx).await, "slow alice 3");
    assert_eq!(heard(&mut heard_rx).await, "slow alice 4");
    // The connection goes on reading while they wait.
    send(
        &mut alice,
        json!({"type": "join", "lobby": "room", "id": 6}),
    )
    .await;
    let joined = next(&mut alice).await;
    assert_eq!(
        (&joined["type"], &joined["id"]),
        (&json!("joined"), &json!(6))
    );

    // One answer frees one place.
    gate.add_permits(1);
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "rpc_result", "id": 3, "data": 3})
    );
    assert_eq!(heard(&mut heard_rx).await, "done 3");
    send(&mut alice, rpc("slow", json!(7), 7)).await;
    assert_eq!(heard(&mut heard_rx).await, "slow alice 7");
    gate.add_permits(2);
    let mut answered = vec![
        next(&mut alice).await["id"].as_u64(),
        next(&mut alice).await["id"].as_u64(),
    ];
    answered.sort_unstable();
    assert_eq!(answered, [Some(4), Some(7)]);

    // A call whose client leaves is dropped unanswered, and the app's future with it.
    send(&mut alice, rpc("slow", json!(8), 8)).await;
    let mut heard_now = Vec::new();
    while heard_now.len() < 3 {
        heard_now.push(heard(&mut heard_rx).await);
    }
    heard_now.sort_unstable();
    assert_eq!(heard_now, ["done 4", "done 7", "slow alice 8"]);
    alice.close(None).await.expect("close");
    assert_eq!(heard(&mut heard_rx).await, "dropped 8");
}

#[tokio::test]
async fn the_default_handler_answers_no_rpc() {
    let addr = app(Config::default(), NoHandler).await;
    let mut alice = connect(addr, "alice").await;
    send(&mut alice, rpc("anything", json!({}), 1)).await;
    let error = next(&mut alice).await;
    assert_eq!(error_of(&error), ("error", "unknown_type", 1));
    assert_eq!(error["message"], "this server answers no rpc");
}
