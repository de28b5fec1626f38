//! Routes: the WebSocket endpoint and the probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use switchboard::axum::WsConnect;
use switchboard::{ConnectRequest, DisconnectReason, Manager};

use crate::auth::Auth;

/// What every route needs.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The connection manager.
    pub manager: Manager,
    /// Token verification.
    pub auth: Arc<Auth>,
    /// `Origin` allowlist; empty: same host and loopback only.
    pub allowed_origins: Arc<Vec<String>>,
    /// Set at shutdown: readiness fails and upgrades are refused.
    pub draining: Arc<AtomicBool>,
}

/// The server's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws/{lobby}", get(ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready".into_response()
    }
}

async fn ws(
    State(state): State<AppState>,
    connect: WsConnect,
    headers: axum::http::HeaderMap,
) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = connect.origin.as_deref()
        && !origin_allowed(origin, host, &state.allowed_origins)
    {
        tracing::info!(origin, "upgrade refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let manager = &state.manager;
    if state.draining.load(Ordering::SeqCst) {
        return manager.refuse(connect.upgrade, DisconnectReason::ServerShutdown);
    }
    let identity = match state.auth.verify(connect.token.as_deref()) {
        Ok(identity) if identity.may_join(&connect.lobby) => identity,
        Ok(identity) => {
            tracing::info!(user = %identity.user_id, lobby = %connect.lobby, "refused: lobby not allowed by token");
            return manager.refuse(connect.upgrade, DisconnectReason::Unauthorized);
        }
        Err(error) => {
            tracing::info!(%error, peer = %connect.peer, "refused: unauthorized");
            return manager.refuse(connect.upgrade, DisconnectReason::Unauthorized);
        }
    };
    let mut request = ConnectRequest::new(connect.lobby, identity.user_id, connect.peer.ip());
    if let Some(at) = identity.expires_at {
        request = request.expires_at(at);
    }
    manager.accept(connect.upgrade, request)
}

/// An `Origin` is allowed when listed, or (with an empty list) when it is the request's own
/// host or a loopback host.
pub fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a == "*" || a == origin);
    }
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let hostname = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(h, _)| h);
    Some(authority) == host || matches!(hostname, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed("http://localhost:3000", Some("x:1"), &none));
        assert!(origin_allowed("http://127.0.0.1", None, &none));
        assert!(origin_allowed(
            "https://chat.example",
            Some("chat.example"),
            &none
        ));
        assert!(!origin_allowed(
            "https://evil.example",
            Some("chat.example"),
            &none
        ));
        assert!(!origin_allowed("null", Some("chat.example"), &none));
        let list = vec!["https://a.example".to_string()];
        assert!(origin_allowed("https://a.example/", None, &list));
        assert!(!origin_allowed("http://localhost", None, &list));
    }
}
