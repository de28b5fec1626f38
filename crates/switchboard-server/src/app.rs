//! Routes: the WebSocket endpoint and probes (public), the API and metrics (admin), and the
//! request checks in front of an upgrade (origin, auth, client IP behind proxies).

use std::net::IpAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipnet::IpNet;
use serde_json::json;
use switchboard::axum::{ConnectParams, WsConnect};
use switchboard::sse::SsePostError;
use switchboard::ws::Upgrade;
use switchboard::{ConnectRequest, DisconnectReason};

use crate::auth::Identity;
use crate::proxy::{ConnectAttempt, ProxyError};

pub use crate::state::AppState;

/// Routes for clients: `/ws/{lobby}`, `/ws` (protocol v2, no lobby yet), the SSE fallback,
/// `/healthz`, `/readyz`.
pub fn public_routes(state: AppState) -> Router {
    Router::new()
        .route("/ws/{lobby}", get(ws))
        .route("/ws", get(ws))
        .route("/sse/{lobby}", get(sse))
        .route("/sse/{lobby}/messages", axum::routing::post(sse_post))
        .route("/sse", get(sse_v2))
        .route("/sse/messages", axum::routing::post(sse_post))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Routes for operators and backends: `/api/...` and `/metrics`.
pub fn admin_routes(state: AppState) -> Router {
    crate::api::routes(state.clone())
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// 503 only while draining. A Redis outage keeps it 200 (so a balancer does not drop every
/// node at once) and shows in the body.
async fn readyz(State(state): State<AppState>) -> Response {
    let draining = state.is_draining();
    let mut body = json!({"ready": !draining, "draining": draining});
    if let Some(redis) = state.manager.cluster_status() {
        body["redis"] = json!(redis);
    }
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(
            &state.manager,
            state.is_draining(),
            state.manager.cluster_stats().await,
        ),
    )
        .into_response()
}

/// Why a connect was not turned into a [`ConnectRequest`].
enum Refusal {
    /// A foreign `Origin`: answered with 403 before any upgrade or stream.
    ForeignOrigin,
    /// Answered in the transport's own way (a close code, or an SSE status).
    Close(DisconnectReason),
}

/// The checks in front of every connect, whatever the transport: origin, draining, who the
/// client is (the token, or the backend through the connect proxy), lobby claim, client IP.
async fn authorize(
    state: &AppState,
    params: ConnectParams,
    headers: &HeaderMap,
    transport: &'static str,
) -> Result<ConnectRequest, Refusal> {
    let ip = admissible(state, &params, headers)?;
    let identity = match &state.connect_proxy {
        Some(proxy) => {
            let attempt = ConnectAttempt {
                transport,
                token: params.token.as_deref().filter(|t| !t.is_empty()),
                headers: proxy.forwarded(headers),
                ip,
                lobby: params.lobby.as_ref().map(|l| l.as_str()),
                lobbies: params.lobbies.iter().map(|(l, _)| l.as_str()).collect(),
            };
            match proxy.connect(&attempt).await {
                Ok(identity) => identity,
                Err(error @ ProxyError::Refused(_)) => {
                    tracing::info!(%error, %ip, "refused: unauthorized");
                    return Err(Refusal::Close(DisconnectReason::Unauthorized));
                }
                Err(error @ ProxyError::Unavailable(_)) => {
                    tracing::warn!(%error, %ip, "connect undecided: the client is told to retry");
                    return Err(Refusal::Close(DisconnectReason::BackendUnavailable));
                }
            }
        }
        None => verify_token(state, &params, ip)?,
    };
    request_for(identity, params, ip)
}

/// [`authorize`] when no connect proxy is set: the token decides, without waiting.
fn authorize_by_token(
    state: &AppState,
    params: ConnectParams,
    headers: &HeaderMap,
) -> Result<ConnectRequest, Refusal> {
    let ip = admissible(state, &params, headers)?;
    let identity = verify_token(state, &params, ip)?;
    request_for(identity, params, ip)
}

/// The origin and draining checks; the client's IP.
fn admissible(
    state: &AppState,
    params: &ConnectParams,
    headers: &HeaderMap,
) -> Result<IpAddr, Refusal> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = params.origin.as_deref()
        && !origin_allowed(origin, host, &state.allowed_origins)
    {
        tracing::info!(origin, "refused: origin not allowed");
        return Err(Refusal::ForeignOrigin);
    }
    if state.is_draining() {
        return Err(Refusal::Close(DisconnectReason::ServerShutdown));
    }
    Ok(client_ip(params.peer.ip(), headers, &state.trusted_proxies))
}

fn verify_token(state: &AppState, params: &ConnectParams, ip: IpAddr) -> Result<Identity, Refusal> {
    state.auth.verify(params.token.as_deref()).map_err(|error| {
        tracing::info!(%error, %ip, "refused: unauthorized");
        Refusal::Close(DisconnectReason::Unauthorized)
    })
}

/// The lobby claim checked against who the client is; the request for the manager.
fn request_for(
    identity: Identity,
    params: ConnectParams,
    ip: IpAddr,
) -> Result<ConnectRequest, Refusal> {
    if !identity.may_join(params.lobby.as_ref()) {
        let lobby = params.lobby.as_ref().map_or("", |l| l.as_str());
        tracing::info!(user = %identity.user_id, lobby, %ip, "refused: lobby not allowed by token");
        return Err(Refusal::Close(DisconnectReason::Unauthorized));
    }
    let mut request = ConnectRequest::new(params.lobby, identity.user_id, ip);
    if let Some(allowed) = identity.lobbies {
        request = request.allow_lobbies(allowed);
    }
    if let Some(at) = identity.expires_at {
        request = request.expires_at(at);
    }
    if let Some(recovery) = params.recovery {
        request = request.recover(recovery);
    }
    Ok(request)
}

async fn ws(State(state): State<AppState>, connect: WsConnect, headers: HeaderMap) -> Response {
    let (upgrade, params) = connect.into_parts();
    answer_upgrade(&state, upgrade, params, &headers).await
}

/// The answer to a WebSocket connect request that passed the handshake checks, whichever
/// way it came in (the router, or `serve`'s own reading of upgrade heads).
pub(crate) async fn answer_upgrade(
    state: &AppState,
    upgrade: Upgrade,
    params: ConnectParams,
    headers: &HeaderMap,
) -> Response {
    let authorized = match &state.connect_proxy {
        None => authorize_by_token(state, params, headers),
        // Boxed: the backend call's state would otherwise be in every connect's future.
        Some(_) => Box::pin(authorize(state, params, headers, "websocket")).await,
    };
    answer_authorized(state, upgrade, authorized)
}

/// [`answer_upgrade`] when no connect proxy is set (the token decides): without waiting.
pub(crate) fn answer_upgrade_by_token(
    state: &AppState,
    upgrade: Upgrade,
    params: ConnectParams,
    headers: &HeaderMap,
) -> Response {
    answer_authorized(state, upgrade, authorize_by_token(state, params, headers))
}

fn answer_authorized(
    state: &AppState,
    upgrade: Upgrade,
    authorized: Result<ConnectRequest, Refusal>,
) -> Response {
    match authorized {
        Ok(request) => state.manager.accept(upgrade, request),
        Err(Refusal::ForeignOrigin) => forbidden_origin(),
        Err(Refusal::Close(reason)) => state.manager.refuse(upgrade, reason),
    }
}

/// `GET /sse/{lobby}`: the same connection over Server-Sent Events.
async fn sse(State(state): State<AppState>, params: ConnectParams, headers: HeaderMap) -> Response {
    match authorize(&state, params, &headers, "sse").await {
        Ok(request) => compress_events(&state, &headers, state.manager.accept_sse(request).await),
        Err(Refusal::ForeignOrigin) => sse_forbidden_origin(),
        Err(Refusal::Close(reason)) => sse_refusal(reason),
    }
}

/// The event stream gzip-compressed, event by event, when the client takes gzip and
/// `compression.enabled` is on.
fn compress_events(state: &AppState, headers: &HeaderMap, response: Response) -> Response {
    if state.manager.config().compression.enabled && switchboard::sse::accepts_gzip(headers) {
        switchboard::sse::gzip(response)
    } else {
        response
    }
}

/// `GET /sse?token=T&lobbies=a,b`: a protocol-v2 connection over Server-Sent Events, in the
/// listed lobbies (each resumed from the browser's `Last-Event-ID`); join and leave more with
/// posts to `/sse/messages`.
async fn sse_v2(
    State(state): State<AppState>,
    params: ConnectParams,
    headers: HeaderMap,
) -> Response {
    let joins = params.lobbies.clone();
    match authorize(&state, params, &headers, "sse").await {
        Ok(request) => {
            let response = state.manager.accept_sse_v2(request, joins).await;
            compress_events(&state, &headers, response)
        }
        Err(Refusal::ForeignOrigin) => sse_forbidden_origin(),
        Err(Refusal::Close(reason)) => sse_refusal(reason),
    }
}

fn forbidden_origin() -> Response {
    (StatusCode::FORBIDDEN, "origin not allowed").into_response()
}

fn sse_refusal(reason: DisconnectReason) -> Response {
    switchboard::sse::refusal(reason)
}

/// A foreign `Origin` on the SSE routes: 403 with the JSON error body.
fn sse_forbidden_origin() -> Response {
    let body = json!({"error": {"code": "forbidden_origin", "message": "origin not allowed"}});
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

#[derive(serde::Deserialize)]
struct SsePost {
    connection_id: String,
    message: Box<serde_json::value::RawValue>,
}

/// The envelope around a posted frame (`{"connection_id":"...","message":...}`): a posted
/// body may be this much larger than `max_message_bytes`.
const SSE_POST_ENVELOPE_BYTES: usize = 1024;

/// `POST /sse/{lobby}/messages` (or `/sse/messages` for a protocol-v2 stream, whose frames name
/// their lobbies): a client frame for an SSE connection, from its owner. The token is checked
/// before the body is read; the body is read within `http.body_timeout_ms`
/// and the frame bounded by `max_message_bytes`, like a WebSocket message (413 past it).
async fn sse_post(
    State(state): State<AppState>,
    params: ConnectParams,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let error = |status: StatusCode, code: &str, message: String| {
        (
            status,
            axum::Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
    };
    // The route always names a lobby.
    let lobby = params
        .lobby
        .clone()
        .map(|l| l.as_str().to_owned())
        .unwrap_or_default();
    let request = match authorize(&state, params, &headers, "sse_post").await {
        Ok(request) => request,
        Err(Refusal::ForeignOrigin) => return sse_forbidden_origin(),
        Err(Refusal::Close(reason)) => return sse_refusal(reason),
    };
    let limit = state.manager.config().max_message_bytes;
    let bytes = match crate::body::read(
        &headers,
        body,
        limit.saturating_add(SSE_POST_ENVELOPE_BYTES),
        state.body_timeout,
    )
    .await
    {
        Ok(bytes) => bytes,
        Err(crate::body::BodyError::TooLarge(_)) => {
            return crate::body::BodyError::TooLarge(limit).into_response();
        }
        Err(refused) => return refused.into_response(),
    };
    let post: SsePost = match serde_json::from_slice(&bytes) {
        Ok(post) => post,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()),
    };
    let frame = post.message.get();
    let posted = state
        .manager
        .sse_post(&post.connection_id, request.user_id.as_str(), &lobby, frame)
        .await;
    match posted {
        Ok(()) => (StatusCode::ACCEPTED, axum::Json(json!({"accepted": true}))).into_response(),
        Err(SsePostError::Forbidden) => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            SsePostError::Forbidden.to_string(),
        ),
        Err(SsePostError::Busy) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            SsePostError::Busy.to_string(),
        ),
        Err(SsePostError::Unavailable) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                SsePostError::Unavailable.to_string(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
        Err(SsePostError::TooLarge(limit)) => {
            crate::body::BodyError::TooLarge(limit).into_response()
        }
        Err(other) => error(StatusCode::NOT_FOUND, "not_found", other.to_string()),
    }
}

/// The client's IP: the TCP peer, unless the peer is a trusted proxy; then `X-Forwarded-For`
/// read from the right (each proxy appends the address it saw), skipping trusted proxies, up
/// to the first address that is not one. An entry that does not parse ends the walk: the
/// client is then the last trusted hop seen, never anything further left, which the client
/// could have written itself. IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    // Several header lines are one list, in order.
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(hop) = forwarded_address(entry) else {
            return client;
        };
        client = hop;
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

/// One `X-Forwarded-For` entry in the forms proxies write: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
/// `[::1]`, `[::1]:80`; IPv4-mapped IPv6 becomes IPv4.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        if !port_ok {
            return None;
        }
        inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)?
    } else if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else {
        entry
            .parse::<std::net::SocketAddrV4>()
            .ok()?
            .ip()
            .to_owned()
            .into()
    };
    Some(ip.to_canonical())
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
    use super::*;

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

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = forwarded(&["6.6.6.6, 1.2.3.4, 10.0.0.7"]);
        let proxy = ip("10.0.0.1");
        let direct = ip("5.5.5.5");
        assert_eq!(client_ip(proxy, &h, &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(direct, &h, &trusted), direct, "untrusted peer");
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        // Only trusted hops: the leftmost of them.
        let h = forwarded(&["10.0.0.9, 10.0.0.7"]);
        assert_eq!(client_ip(proxy, &h, &trusted), ip("10.0.0.9"));
        // Several header lines are one list.
        let h = forwarded(&["6.6.6.6", "1.2.3.4", "10.0.0.7"]);
        assert_eq!(client_ip(proxy, &h, &trusted), ip("1.2.3.4"));
    }

    #[test]
    fn an_entry_that_does_not_parse_ends_the_walk_at_the_nearest_trusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy = ip("10.0.0.1");
        // nginx appended the real peer (9.9.9.9) to what the client sent.
        let h = forwarded(&["6.6.6.6, x, 9.9.9.9"]);
        assert_eq!(client_ip(proxy, &h, &trusted), ip("9.9.9.9"));
        // Garbage right behind a trusted hop: that hop, never 6.6.6.6.
        let h = forwarded(&["6.6.6.6, x, 10.0.0.7"]);
        assert_eq!(client_ip(proxy, &h, &trusted), ip("10.0.0.7"));
        let h = forwarded(&["6.6.6.6, garbage"]);
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        let h = forwarded(&["6.6.6.6,"]);
        assert_eq!(client_ip(proxy, &h, &trusted), proxy, "an empty entry");
        let h = forwarded(&["1.2.3.4:99999"]);
        assert_eq!(client_ip(proxy, &h, &trusted), proxy, "a port out of range");
    }

    #[test]
    fn the_forms_proxies_write() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let proxy = ip("10.0.0.1");
        for (entry, want) in [
            ("1.2.3.4", "1.2.3.4"),
            (" 1.2.3.4:5678 ", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:80", "2001:db8::1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("[::ffff:1.2.3.4]:443", "1.2.3.4"),
        ] {
            let h = forwarded(&[entry]);
            assert_eq!(client_ip(proxy, &h, &trusted), ip(want), "{entry}");
        }
        for bad in [
            "[2001:db8::1",
            "[2001:db8::1]x",
            "1.2.3",
            "1.2.3.4:",
            "[1.2.3.4]",
        ] {
            let h = forwarded(&[bad]);
            assert_eq!(client_ip(proxy, &h, &trusted), proxy, "{bad}");
        }
        // A mapped peer is the IPv4 proxy it maps, and trusted as such.
        let h = forwarded(&["5.6.7.8"]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &h, &trusted),
            ip("5.6.7.8")
        );
        assert_eq!(client_ip(ip("::ffff:5.5.5.5"), &h, &trusted), ip("5.5.5.5"));
        // An IPv6 proxy.
        let h = forwarded(&["[2001:db8::7]:1234, fd00::2"]);
        assert_eq!(client_ip(ip("fd00::1"), &h, &trusted), ip("2001:db8::7"));
    }
}
