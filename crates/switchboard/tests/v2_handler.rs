//! Protocol v2 through the library's `Handler`: the app decides joins (at once or later),
//! hears joins and leaves, and refuses refreshes by default. A real axum app on 127.0.0.1:0,
//! real WebSocket clients offering `switchboard.v2`.

mod common;
use std::net::SocketAddr;

use common::*;
use serde_json::json;
use switchboard::{Client, ClientError, Config, ErrorCode, Handler, JoinDecision, LobbyCode};
use tokio::sync::mpsc;

/// Allows `open-*` at once, `vip-*` after an asynchronous check, refuses the rest; reports
/// joins and leaves.
struct Doorman {
    seen: mpsc::UnboundedSender<String>,
}

impl Handler for Doorman {
    fn authorize_join(&self, _client: &Client, lobby: &LobbyCode) -> JoinDecision {
        if lobby.as_str().starts_with("open-") {
            JoinDecision::Allow
        } else if lobby.as_str().starts_with("vip-") {
            let vip = lobby.as_str() != "vip-banned";
            JoinDecision::Later(Box::pin(async move {
                // Stands for a lookup elsewhere: the decision comes from another task.
                tokio::task::yield_now().await;
                if vip {
                    Ok(())
                } else {
                    Err(ClientError::new(
                        ErrorCode::NotAllowed,
                        "banned from the vip room",
                    ))
                }
            }))
        } else {
            JoinDecision::Deny(ClientError::new(ErrorCode::NotAllowed, "members only"))
        }
    }

    fn on_join(&self, client: &Client, lobby: &LobbyCode) {
        let _ = self
            .seen
            .send(format!("join {} {lobby}", client.info().user_id));
    }

    fn on_leave(&self, client: &Client, lobby: &LobbyCode) {
        let _ = self
            .seen
            .send(format!("leave {} {lobby}", client.info().user_id));
    }
}

async fn app() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (seen, heard) = mpsc::unbounded_channel();
    (
        common::app(Config::default(), Doorman { seen }).await,
        heard,
    )
}

#[tokio::test]
async fn the_app_decides_joins_at_once_or_later_and_hears_them() {
    let (addr, mut seen) = app().await;
    let mut alice = connect(addr, "alice").await;

    send(
        &mut alice,
        json!({"type": "join", "lobby": "open-1", "id": 1}),
    )
    .await;
    let joined = next(&mut alice).await;
    assert_eq!(
        (joined["type"].as_str(), joined["id"].as_u64()),
        (Some("joined"), Some(1))
    );
    assert_eq!(heard(&mut seen).await, "join alice open-1");

    send(
        &mut alice,
        json!({"type": "join", "lobby": "staff", "id": 2}),
    )
    .await;
    let error = next(&mut alice).await;
    assert_eq!(
        (
            error["code"].as_str(),
            error["message"].as_str(),
            error["id"].as_u64()
        ),
        (Some("not_allowed"), Some("members only"), Some(2))
    );

    // Decided later: the answer comes from the app's task, with the frame's id.
    send(
        &mut alice,
        json!({"type": "join", "lobby": "vip-1", "id": 3}),
    )
    .await;
    let joined = next(&mut alice).await;
    assert_eq!(
        (
            joined["type"].as_str(),
            joined["lobby"].as_str(),
            joined["id"].as_u64()
        ),
        (Some("joined"), Some("vip-1"), Some(3))
    );
    assert_eq!(heard(&mut seen).await, "join alice vip-1");
    send(
        &mut alice,
        json!({"type": "join", "lobby": "vip-banned", "id": 4}),
    )
    .await;
    let error = next(&mut alice).await;
    assert_eq!(
        (
            error["type"].as_str(),
            error["message"].as_str(),
            error["id"].as_u64()
        ),
        (Some("error"), Some("banned from the vip room"), Some(4))
    );

    send(
        &mut alice,
        json!({"type": "leave", "lobby": "vip-1", "id": 5}),
    )
    .await;
    assert_eq!(next(&mut alice).await["type"], "left");
    assert_eq!(heard(&mut seen).await, "leave alice vip-1");
    // Leaving a lobby one is not in is answered, but the app hears nothing of it.
    send(
        &mut alice,
        json!({"type": "leave", "lobby": "vip-1", "id": 6}),
    )
    .await;
    assert_eq!(next(&mut alice).await["id"], 6);

    // The default handler refuses refreshes.
    send(
        &mut alice,
        json!({"type": "refresh", "token": "alice", "id": 7}),
    )
    .await;
    let error = next(&mut alice).await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("not_allowed"), Some(7))
    );
    assert!(seen.try_recv().is_err(), "nothing else was heard");
}
