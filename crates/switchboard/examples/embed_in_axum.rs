//! Embedding Switchboard in a plain axum app.
//!
//! ```text
//! cargo run -p switchboard --example embed_in_axum -- 127.0.0.1:3000
//! ```
//!
//! - `GET /ws/{lobby}?token=USER`: a WebSocket (protocol v1; the token is the user id here:
//!   authenticate your way in a real app). Besides the protocol's own frames, clients may send
//!   `{"type":"echo","data":...}` and get `{"type":"direct","from":null,"data":{"echo":...}}`
//!   at once, or `{"type":"slow_echo","id":1,"data":...,"after_ms":500}` and get
//!   `{"type":"direct","from":null,"data":{"id":1,"echo":...}}` that much later, from a task
//!   of its own (the connection goes on meanwhile).
//! - `GET /stats`: the manager's stats as JSON.
//! - `POST /announce/{lobby}`: broadcasts the JSON body to the lobby from the backend.
//!
//! Try it with `websocat ws://127.0.0.1:3000/ws/lobby-1?token=alice`, then
//! `curl -d '{"text":"hi"}' -H 'content-type: application/json' 127.0.0.1:3000/announce/lobby-1`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use switchboard::axum::WsConnect;
use switchboard::{
    AppMessage, Client, ClientError, Config, ConnectRequest, ConnectionInfo, DisconnectReason,
    ErrorCode, Handler, Manager, NoHandler, Skip, UserId,
};

/// The longest `slow_echo` delay a client may ask for.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The app's side of the manager: logs connections and answers `echo` and `slow_echo`.
struct EchoHandler;

impl Handler for EchoHandler {
    fn on_connect(&self, client: &Client) {
        let conn = client.info();
        eprintln!(
            "connect    {} user={} lobbies={:?} ip={}",
            conn.id,
            conn.user_id,
            client.lobbies(),
            conn.ip
        );
    }

    fn on_message(&self, client: &Client, message: AppMessage<'_>) -> Result<(), ClientError> {
        if message.kind != "echo" && message.kind != "slow_echo" {
            // Anything else is refused as the protocol says: `error` `unknown_type`.
            return NoHandler.on_message(client, message);
        }
        // `message.text` is the whole frame; the handler reads the fields it defines.
        let frame: Value = serde_json::from_str(message.text)
            .map_err(|_| ClientError::new(ErrorCode::InvalidMessage, "not JSON"))?;
        let data = frame
            .get("data")
            .ok_or_else(|| ClientError::new(ErrorCode::MissingField, "missing field `data`"))?;
        if message.kind == "echo" {
            // Never blocks: the reply is queued for this connection's writer. (A full queue
            // or a connection closing meanwhile is an `Err` nobody needs to hear about.)
            let _ = client.reply(&json!({ "echo": data }));
            return Ok(());
        }
        let after = frame.get("after_ms").and_then(Value::as_u64).unwrap_or(0);
        let after = Duration::from_millis(after).min(MAX_DELAY);
        // The answer is sent later, from a task of its own: this method returns at once, so
        // the connection reads its next frame meanwhile. The task keeps its own clone of the
        // client; the answer carries the frame's `id`, to match it to its question.
        let answer = json!({ "id": message.id, "echo": data });
        let task_client = client.clone();
        client.spawn(async move {
            tokio::select! {
                // The wait the client asked for; real work (a database query, an HTTP call)
                // is awaited here the same way.
                () = tokio::time::sleep(after) => {
                    let _ = task_client.reply(&answer);
                }
                // Nobody is left to answer: stop (and let a shutdown finish early).
                () = task_client.closed() => {}
            }
        });
        Ok(())
    }

    fn on_disconnect(&self, conn: &ConnectionInfo, reason: DisconnectReason) {
        let lasted = conn.connected_at.elapsed().unwrap_or_default();
        eprintln!(
            "disconnect {} user={} reason={reason} after {lasted:?}",
            conn.id, conn.user_id
        );
    }
}

/// The web pages allowed to open sockets here. A browser sends `Origin` with every upgrade;
/// without this check any page on the web could connect with its visitors' cookies.
const ALLOWED_ORIGINS: &[&str] = &["http://127.0.0.1:3000", "http://localhost:3000"];

/// `GET /ws/{lobby}?token=USER`: the token is taken as the user id.
async fn ws(State(manager): State<Manager>, connect: WsConnect) -> Response {
    if let Some(origin) = connect.origin.as_deref()
        && !ALLOWED_ORIGINS.contains(&origin)
    {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    match connect.token.as_deref().map(UserId::parse) {
        Some(Ok(user)) => {
            let mut request = ConnectRequest::new(connect.lobby, user, connect.peer.ip());
            // `?since=N&epoch=E` of a reconnecting client: replay what it missed.
            if let Some(recovery) = connect.recovery {
                request = request.recover(recovery);
            }
            manager.accept(connect.upgrade, request)
        }
        // Accept, then close with 4001, so that a browser can tell why.
        _ => manager.refuse(connect.upgrade, DisconnectReason::Unauthorized),
    }
}

/// `GET /stats`.
async fn stats(State(manager): State<Manager>) -> Json<switchboard::Stats> {
    Json(manager.stats())
}

/// `POST /announce/{lobby}` with any JSON body: a `message` frame with `from: null`.
async fn announce(
    State(manager): State<Manager>,
    Path(lobby): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    match manager.broadcast(&lobby, &body, Skip::Nobody) {
        Ok(delivered) => Json(json!({ "delivered": delivered })).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:3000")
        .parse()?;

    let mut config = Config::default();
    config.limits.max_per_lobby = 50;
    let manager = Manager::with_handler(config, EchoHandler)?;

    let app = Router::new()
        .route("/ws/{lobby}", get(ws))
        .route("/stats", get(stats))
        .route("/announce/{lobby}", post(announce))
        .with_state(manager.clone());

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);

    // On Ctrl-C: close every connection with 1001 spread over 2 s, then stop serving.
    let shutdown = async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down");
        manager
            .shutdown(Duration::from_secs(2), Duration::from_secs(5))
            .await;
    };
    // The peer address is what `WsConnect` reads for the per-IP limit.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}
