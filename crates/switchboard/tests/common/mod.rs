//! The harness of the handler tests: a manager served on 127.0.0.1:0 (the token is the user
//! id) and protocol-v2 WebSocket clients.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard::axum::WsConnect;
use switchboard::{Config, ConnectRequest, DisconnectReason, Handler, Manager, UserId};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(5);

async fn ws(State(manager): State<Manager>, connect: WsConnect) -> Response {
    match connect.token.as_deref().map(UserId::parse) {
        Some(Ok(user)) => {
            let request = ConnectRequest::new(connect.lobby, user, connect.peer.ip());
            manager.accept(connect.upgrade, request)
        }
        _ => manager.refuse(connect.upgrade, DisconnectReason::Unauthorized),
    }
}

pub async fn app(config: Config, handler: impl Handler) -> SocketAddr {
    let manager = Manager::with_handler(config, handler).expect("config");
    let app = Router::new().route("/ws", get(ws)).with_state(manager);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    addr
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn connect(addr: SocketAddr, user: &str) -> Ws {
    let mut request = format!("ws://{addr}/ws?token={user}")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "switchboard.v2".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    assert_eq!(next(&mut ws).await["protocol"], 2, "welcome");
    ws
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

pub async fn next(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] != "health_ping" {
                return value;
            }
        }
    }
}

pub async fn heard(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("open")
}
