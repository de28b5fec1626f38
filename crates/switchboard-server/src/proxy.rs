//! The connect and join proxy: the backend decides who connects (with its own session
//! cookies, say) and who joins which lobby, instead of a JWT.
//!
//! A connect attempt (`auth.connect_url`) is POSTed, signed, with the token if any, the
//! headers named in `auth.forward_headers`, the client's IP and the lobbies it asks for. A 2xx
//! answer names the user (`{"user_id":..,"lobbies":[..],"expires_at":..}`); 401, 403 and the
//! other 4xx refuse it (4001); a timeout, a 5xx, 408, 429, an answer that does not parse or
//! more than `auth.proxy_concurrency` calls waiting leave it undecided: the client is told to
//! retry later (1013 `backend_unavailable` with a `goodbye`), never left hanging. A v2 `join`
//! (`auth.join_url`) goes the same way: a 2xx allows it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use switchboard::{LobbyFilter, UserId};
use tokio::sync::Semaphore;

use crate::auth::{Identity, MAX_EXP};
use crate::backend::Backend;
use crate::config::ProxyConfig;

/// Why the backend did not admit a connect or a join.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// It said no (a 4xx other than 408 and 429).
    #[error("refused by the backend (HTTP {0})")]
    Refused(u16),
    /// It could not say: timeout, 5xx, unreachable, busy, or an answer that does not parse.
    #[error("the backend did not decide: {0}")]
    Unavailable(String),
}

/// What a connect attempt tells the backend.
#[derive(Debug, Serialize)]
pub struct ConnectAttempt<'a> {
    /// `websocket`, `sse`, or `sse_post` (a frame posted for an SSE connection).
    pub transport: &'static str,
    /// The `token` query parameter or bearer token, if the client sent one.
    pub token: Option<&'a str>,
    /// The request headers named in `auth.forward_headers`, by lower-case name.
    pub headers: BTreeMap<String, String>,
    /// The client's IP, after proxy resolution.
    pub ip: IpAddr,
    /// The lobby in the URL (protocol v1), if any.
    pub lobby: Option<&'a str>,
    /// The lobbies an SSE v2 stream asks to join at once.
    pub lobbies: Vec<&'a str>,
}

/// The backend's answer to a connect it admits.
#[derive(Deserialize)]
struct Admitted {
    user_id: String,
    /// Lobby codes and `*` prefixes the connection may join; absent: any.
    #[serde(default)]
    lobbies: Option<Vec<String>>,
    /// Unix seconds after which the connection is closed with 4010 `token_expired`.
    #[serde(default)]
    expires_at: Option<u64>,
}

/// What a join asks the backend.
#[derive(Serialize)]
struct JoinAttempt<'a> {
    connection_id: &'a str,
    user_id: &'a str,
    ip: IpAddr,
    lobby: &'a str,
}

/// The proxy: the URLs, the client, and the bound on calls waiting.
#[derive(Debug)]
pub struct Proxy {
    cfg: ProxyConfig,
    backend: Arc<Backend>,
    slots: Semaphore,
}

impl Proxy {
    /// The proxy, when `auth.connect_url` or `auth.join_url` is set.
    pub fn new(cfg: &ProxyConfig, backend: Arc<Backend>) -> Option<Arc<Self>> {
        if cfg.connect_url.is_none() && cfg.join_url.is_none() {
            return None;
        }
        Some(Arc::new(Self {
            cfg: cfg.clone(),
            backend,
            slots: Semaphore::new(cfg.concurrency),
        }))
    }

    /// Whether the backend decides connects.
    pub fn decides_connects(&self) -> bool {
        self.cfg.connect_url.is_some()
    }

    /// Whether the backend decides v2 joins.
    pub fn decides_joins(&self) -> bool {
        self.cfg.join_url.is_some()
    }

    /// The headers of `headers` named in `auth.forward_headers` (several lines of one name
    /// joined as HTTP joins them; values that are not text are left out).
    pub fn forwarded(&self, headers: &HeaderMap) -> BTreeMap<String, String> {
        let mut forwarded = BTreeMap::new();
        for name in &self.cfg.forward_headers {
            let separator = if name == "cookie" { "; " } else { ", " };
            let values: Vec<&str> = headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !values.is_empty() {
                forwarded.insert(name.clone(), values.join(separator));
            }
        }
        forwarded
    }

    /// Asks the backend who is connecting.
    pub async fn connect(&self, attempt: &ConnectAttempt<'_>) -> Result<Identity, ProxyError> {
        let Some(url) = &self.cfg.connect_url else {
            return Err(ProxyError::Unavailable(
                "auth.connect_url is not set".into(),
            ));
        };
        let answer = self.call("connect", url, attempt).await?;
        let admitted: Admitted = serde_json::from_slice(&answer)
            .map_err(|e| self.unusable("connect", format!("answer is not as documented: {e}")))?;
        let user_id = UserId::parse(&admitted.user_id)
            .map_err(|e| self.unusable("connect", format!("user_id: {e}")))?;
        let expires_at = match admitted.expires_at {
            None => None,
            Some(secs) if secs <= MAX_EXP => Some(UNIX_EPOCH + Duration::from_secs(secs)),
            Some(_) => return Err(self.unusable("connect", "expires_at is out of range".into())),
        };
        Ok(Identity {
            user_id,
            expires_at,
            lobbies: admitted.lobbies.map(LobbyFilter::new),
        })
    }

    /// Asks the backend whether a connection may join `lobby`.
    pub async fn join(
        &self,
        connection_id: &str,
        user_id: &str,
        ip: IpAddr,
        lobby: &str,
    ) -> Result<(), ProxyError> {
        let Some(url) = &self.cfg.join_url else {
            return Ok(());
        };
        let attempt = JoinAttempt {
            connection_id,
            user_id,
            ip,
            lobby,
        };
        self.call("join", url, &attempt).await.map(drop)
    }

    /// One signed call within the bound on calls waiting; the body of a 2xx answer.
    async fn call(
        &self,
        kind: &'static str,
        url: &hyper::Uri,
        body: &impl Serialize,
    ) -> Result<Bytes, ProxyError> {
        let outcome = async {
            let _slot = self.slots.try_acquire().map_err(|_| {
                ProxyError::Unavailable(format!(
                    "{} calls already wait (auth.proxy_concurrency)",
                    self.cfg.concurrency
                ))
            })?;
            let body = serde_json::to_vec(body).unwrap_or_default();
            let (status, answer) = self
                .backend
                .post(url, Bytes::from(body), self.cfg.timeout)
                .await
                .map_err(|e| ProxyError::Unavailable(e.to_string()))?;
            match status.as_u16() {
                200..=299 => Ok(answer),
                408 | 429 => Err(ProxyError::Unavailable(format!("HTTP {status}"))),
                code @ 400..=499 => Err(ProxyError::Refused(code)),
                _ => Err(ProxyError::Unavailable(format!("HTTP {status}"))),
            }
        }
        .await;
        let label = match &outcome {
            Ok(_) => "allowed",
            Err(ProxyError::Refused(_)) => "refused",
            Err(ProxyError::Unavailable(_)) => "unavailable",
        };
        metrics::counter!("switchboard_proxy_calls_total", "kind" => kind, "outcome" => label)
            .increment(1);
        outcome
    }

    /// A 2xx answer the server cannot use: the backend's bug, logged loudly; the client is
    /// told to retry, since refusing it for good would punish it for the backend's mistake.
    fn unusable(&self, kind: &str, why: String) -> ProxyError {
        tracing::error!(kind, %why, "the backend's proxy answer is unusable");
        ProxyError::Unavailable(why)
    }
}
