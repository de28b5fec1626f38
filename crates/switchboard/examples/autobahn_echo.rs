//! An RFC 6455 echo server on exactly Switchboard's WebSocket stack, for the Autobahn|Testsuite
//! (`scripts/autobahn.sh` drives it with `kosoku`).
//!
//! ```text
//! cargo run --release -p switchboard --example autobahn_echo -- 127.0.0.1:9001
//! ```
//!
//! Every path upgrades. The upgrade is configured by `Manager::configure_upgrade`, the same
//! call `Manager::accept` makes (buffer sizes, message and frame size limits, subprotocol), with
//! `max_message_bytes` raised to the 16 MiB the suite's 9.* cases send. Each text or binary
//! message is echoed with the same opcode; nothing else is sent (no `welcome`, no pings of its
//! own). Pings are answered and closes completed by the stack itself. A read error ends the
//! connection as the library's reader does (`DisconnectReason::for_read_error`): a close
//! frame with the reason's code and word (1002 protocol error, 1007 invalid UTF-8, 1009 too
//! big), then reading until the peer's close reply, within the library's default
//! `close_timeout`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use switchboard::{Config, DisconnectReason, Manager};

/// The largest message of the suite (case 9.1.6 / 9.2.6: 16 MiB).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

async fn upgrade(State(manager): State<Manager>, upgrade: WebSocketUpgrade) -> Response {
    manager.configure_upgrade(upgrade).on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    // `recv` returns the peer's Close once (the stack queues the reply), then `None` after the
    // reply is flushed.
    let error = loop {
        let reply = match socket.recv().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => continue,
            Some(Err(error)) => break error,
            None => return,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    };
    let reason = DisconnectReason::for_read_error(error);
    let Some(code) = reason.close_code() else {
        return;
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.as_str().into(),
    }));
    let _ = tokio::time::timeout(Config::default().close_timeout, async {
        if socket.send(close).await.is_ok() {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut config = Config::default();
    config.max_message_bytes = MAX_MESSAGE_BYTES;
    let manager = Manager::new(config).map_err(std::io::Error::other)?;
    let app = Router::new().fallback(get(upgrade)).with_state(manager);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
