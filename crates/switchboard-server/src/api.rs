//! The HTTP API for backends (`/api/...`), behind a bearer key compared in constant time.
//! Errors are `{"error":{"code":"...","message":"..."}}` with a fitting status.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use switchboard::cluster::{ConnectionDetails, FoundConnection, Lookup};
use switchboard::{DisconnectReason, LobbyCode, UserId};

use crate::state::AppState;
use switchboard::Skip;

/// A refusal of an API call.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        if self.code == "overloaded" || self.code == "lobby_busy" {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().expect("static header"));
        }
        response
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The `/api` routes, guarded by the key.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/lobbies", get(lobbies))
        .route("/api/lobbies/{lobby}/broadcast", post(publish))
        .route("/api/lobbies/{lobby}/presence", get(presence))
        .route("/api/users/{user}/send", post(send))
        .route("/api/users/{user}", get(user).delete(kick_user))
        .route(
            "/api/users/{user}/lobbies/{lobby}",
            post(join_user).delete(remove_user),
        )
        .route(
            "/api/connections/{id}",
            get(connection).delete(kick_connection),
        )
        .route("/api/connections/{id}/send", post(send_to_connection))
        .route("/api/stats", get(stats))
        .route("/api/history", get(history))
        .route("/api/openapi.json", get(openapi))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API path")
        })
        .route_layer(middleware::from_fn_with_state(state, require_key))
        // Bodies are bounded by `api.max_body_bytes` in `with_body`, not axum's default.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = state.api_key.as_deref() else {
        if state.dev_mode {
            return with_body(&state, request, next).await;
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "api_disabled",
            "the HTTP API is off: set api.key",
        )
        .into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if bool::from(token.as_bytes().ct_eq(key.as_bytes())) => {
            with_body(&state, request, next).await
        }
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong API key").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <api.key>`",
        )
        .into_response(),
    }
}

/// Runs the call once its body is all there: at most `api.max_body_bytes` (413 past it),
/// within `http.body_timeout_ms` (408). Only a caller with the key gets this far.
async fn with_body(state: &AppState, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match crate::body::read(
        &parts.headers,
        body,
        state.api_max_body_bytes,
        state.body_timeout,
    )
    .await
    {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(refused) => refused.into_response(),
    }
}

fn lobby_code(lobby: &str) -> Result<LobbyCode, ApiError> {
    LobbyCode::parse(lobby)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_lobby", e.to_string()))
}

fn user_id(user: &str) -> Result<UserId, ApiError> {
    UserId::parse(user)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_user", e.to_string()))
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text()))
}

#[derive(Deserialize)]
struct PublishBody {
    data: Box<RawValue>,
    #[serde(default)]
    exclude_user: Option<String>,
}

async fn publish(
    State(state): State<AppState>,
    Path(lobby): Path<String>,
    payload: Result<Json<PublishBody>, JsonRejection>,
) -> ApiResult {
    let lobby = lobby_code(&lobby)?;
    let payload = body(payload)?;
    if let Some(user) = &payload.exclude_user {
        user_id(user)?;
    }
    let delivered = state
        .manager
        .broadcast(
            lobby.as_str(),
            &payload.data,
            payload
                .exclude_user
                .as_deref()
                .map_or(Skip::Nobody, Skip::User),
        )
        .map_err(internal)?;
    Ok(Json(json!({ "delivered": delivered })))
}

#[derive(Deserialize)]
struct SendBody {
    data: Box<RawValue>,
}

async fn send(
    State(state): State<AppState>,
    Path(user): Path<String>,
    payload: Result<Json<SendBody>, JsonRejection>,
) -> ApiResult {
    let user = user_id(&user)?;
    let payload = body(payload)?;
    let delivered = state
        .manager
        .send_to_user(user.as_str(), &payload.data)
        .map_err(internal)?;
    Ok(Json(json!({ "delivered": delivered })))
}

async fn lobbies(State(state): State<AppState>) -> ApiResult {
    Ok(Json(json!(state.manager.lobbies().await)))
}

async fn presence(State(state): State<AppState>, Path(lobby): Path<String>) -> ApiResult {
    let lobby = lobby_code(&lobby)?;
    let users = state
        .manager
        .presence(lobby.as_str())
        .await
        .map_err(internal)?;
    Ok(Json(json!({ "lobby": lobby, "users": users })))
}

async fn kick_user(State(state): State<AppState>, Path(user): Path<String>) -> ApiResult {
    let user = user_id(&user)?;
    let closed = state
        .manager
        .disconnect_user(user.as_str(), DisconnectReason::Kicked)
        .await;
    tracing::info!(%user, closed, "kicked by the API");
    Ok(Json(json!({ "closed": closed })))
}

async fn kick_connection(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    state
        .manager
        .disconnect(&id, DisconnectReason::Kicked)
        .await
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such connection"))?;
    tracing::info!(connection = %id, "kicked by the API");
    Ok(Json(json!({ "closed": 1 })))
}

#[derive(Deserialize)]
struct HistoryQuery {
    node: Option<String>,
}

/// `GET /api/history[?node=ID]`: the last 15 minutes, one sample a second (the dashboard's
/// charts), of this node or, in cluster mode, of any node that pushed samples to Redis within
/// the window (`nodes` lists them). 404 for a node without samples.
async fn history(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let query = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let me = state.manager.config().node_id.clone();
    let node = query.0.node.unwrap_or_else(|| me.clone());
    let valid = !node.is_empty()
        && node.len() <= 64
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_node",
            "a node id is 1-64 characters of [A-Za-z0-9_]",
        ));
    }
    let mut history = if node == me {
        state.timeline.to_json()
    } else {
        let no_samples = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no samples of that node in the last 15 minutes",
            )
        };
        let cluster = state.cluster.as_ref().ok_or_else(no_samples)?;
        let samples = cluster
            .samples(&node, crate::timeline::SAMPLES)
            .await
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster_unavailable",
                    "redis cannot answer now",
                )
            })?;
        if samples.is_empty() {
            return Err(no_samples());
        }
        crate::timeline::from_samples(&samples)
    };
    history["node_id"] = json!(node);
    let mut nodes = match &state.cluster {
        Some(cluster) => cluster.timeline_nodes().await.unwrap_or_default(),
        None => Vec::new(),
    };
    if !nodes.contains(&me) {
        nodes.push(me);
        nodes.sort_unstable();
    }
    history["nodes"] = json!(nodes);
    Ok(Json(history))
}

/// `POST /api/connections/{id}/send`: a `direct` frame from the backend to one connection, on
/// whichever node holds it. 404 when none does; 429 when its queue is full (the frame was
/// dropped: the client is not reading); 503 when the cluster cannot take it now.
async fn send_to_connection(
    State(state): State<AppState>,
    Path(id): Path<String>,
    payload: Result<Json<SendBody>, JsonRejection>,
) -> ApiResult {
    let payload = body(payload)?;
    match state.manager.send_to_connection(&id, &payload.data).await {
        Ok(()) => Ok(Json(json!({ "delivered": 1 }))),
        Err(switchboard::Error::NoSuchConnection) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such connection",
        )),
        Err(switchboard::Error::QueueFull) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            "the connection's outbound queue is full: it is not reading",
        )),
        Err(other) => Err(internal(other)),
    }
}

/// `POST /api/users/{user}/lobbies/{lobby}`: joins the user's protocol-v2 connections, on
/// every node, to the lobby (they get `joined`); counts this node's.
async fn join_user(
    State(state): State<AppState>,
    Path((user, lobby)): Path<(String, String)>,
) -> ApiResult {
    let user = user_id(&user)?;
    let lobby = lobby_code(&lobby)?;
    let joined = state
        .manager
        .join_user(user.as_str(), lobby.as_str())
        .await
        .map_err(internal)?;
    tracing::info!(%user, %lobby, joined, "joined by the API");
    Ok(Json(json!({ "joined": joined })))
}

/// `DELETE /api/users/{user}/lobbies/{lobby}`: takes the user's connections, on every node,
/// out of the lobby (v2: `left` with reason `removed`; v1: closed with 4009); counts this
/// node's.
async fn remove_user(
    State(state): State<AppState>,
    Path((user, lobby)): Path<(String, String)>,
) -> ApiResult {
    let user = user_id(&user)?;
    let lobby = lobby_code(&lobby)?;
    let removed = state
        .manager
        .leave_user(user.as_str(), lobby.as_str())
        .await
        .map_err(internal)?;
    tracing::info!(%user, %lobby, removed, "removed by the API");
    Ok(Json(json!({ "removed": removed })))
}

/// `GET /api/connections/{id}`: one connection, on whichever node holds it (in cluster mode
/// the owner is asked for its live details; see [`user`]).
async fn connection(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such connection");
    let here = state.manager.details(Lookup::Connection(&id));
    if let Some(d) = here.into_iter().next() {
        return Ok(Json(live(&state.manager.config().node_id, d)));
    }
    let found = state
        .manager
        .lookup_elsewhere(Lookup::Connection(&id))
        .await
        .unwrap_or_default();
    found
        .into_iter()
        .next()
        .map(remote)
        .map(Json)
        .ok_or_else(not_found)
}

/// `GET /api/users/{user}`: the user's connections on every node, each as
/// `GET /api/connections/{id}` describes it (what the dashboard's search shows). Another
/// node's connections carry its live details when it answered in time (`"live": true`);
/// otherwise what Redis records (node, IP, lobbies) with `"live": false` and why
/// (`unavailable`), never a wait longer than the bound (see docs/cluster.md).
async fn user(State(state): State<AppState>, Path(user): Path<String>) -> ApiResult {
    let user = user_id(&user)?;
    let me = state.manager.config().node_id.clone();
    let mut connections: Vec<Value> = state
        .manager
        .details(Lookup::User(user.as_str()))
        .into_iter()
        .map(|d| live(&me, d))
        .collect();
    let mut answer = json!({"user_id": user, "node_id": me});
    if let Some(status) = state.manager.cluster_status() {
        match state
            .manager
            .lookup_elsewhere(Lookup::User(user.as_str()))
            .await
        {
            Some(found) => connections.extend(found.into_iter().map(remote)),
            // Redis cannot answer: this node's connections only, and the page says so.
            None => answer["cluster_unavailable"] = json!(true),
        }
        answer["redis"] = json!(status);
    }
    answer["connections"] = json!(connections);
    Ok(Json(answer))
}

/// A connection with its owner's live details.
fn live(node: &str, details: ConnectionDetails) -> Value {
    let mut v = json!(details);
    v["node_id"] = json!(node);
    v["live"] = json!(true);
    v
}

/// Another node's connection: its live details, or what Redis records and why no more.
fn remote(found: FoundConnection) -> Value {
    if let Some(details) = found.live {
        return live(&found.node, details);
    }
    json!({
        "id": found.id,
        "user_id": found.user_id,
        "node_id": found.node,
        "ip": found.ip,
        "lobbies": found.lobbies,
        "protocol": null,
        "connected_at": null,
        "transport": null,
        "queued": null,
        "rtt_ms": null,
        "live": false,
        "unavailable": found.unavailable,
    })
}

async fn stats(State(state): State<AppState>) -> ApiResult {
    let mut stats = json!(state.manager.stats());
    stats["node_id"] = json!(state.manager.config().node_id);
    stats["uptime_seconds"] = json!(state.started.elapsed().as_secs());
    stats["draining"] = json!(state.is_draining());
    // For leak checks: tasks alive in the runtime and open file descriptors of the process.
    stats["tasks"] = json!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    );
    stats["open_fds"] = json!(crate::metrics::open_fds());
    if let Some(status) = state.manager.cluster_status() {
        stats["redis"] = json!(status);
        stats["cluster"] = json!(state.manager.cluster_stats().await);
    }
    Ok(Json(stats))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

fn internal(error: switchboard::Error) -> ApiError {
    if let switchboard::Error::LobbyBusy = error {
        // Shed where it entered: the lobby's members are behind; sent nowhere.
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "lobby_busy",
            error.to_string(),
        );
    }
    if let switchboard::Error::Overloaded = error {
        // Sent nowhere: the backend retries (after `Retry-After`) rather than losing it.
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            error.to_string(),
        );
    }
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        error.to_string(),
    )
}
