//! What every route needs: the manager, auth, and the request bounds. Its own module so the
//! route modules (`app`, `api`) depend on it and not on each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use switchboard::Manager;

use crate::auth::Auth;
use crate::proxy::Proxy;

/// What every route needs.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The connection manager.
    pub manager: Manager,
    /// Token verification.
    pub auth: Arc<Auth>,
    /// The connect proxy, when the backend decides who connects (`auth.connect_url`).
    pub connect_proxy: Option<Arc<Proxy>>,
    /// `Origin` allowlist; empty: same host and loopback only.
    pub allowed_origins: Arc<Vec<String>>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// The API's bearer key (`None`: API off, or open in dev mode).
    pub api_key: Option<Arc<str>>,
    /// Dev mode: tokens are user ids, and the API needs no key when none is set.
    pub dev_mode: bool,
    /// A request body must arrive whole within this (`http.body_timeout_ms`).
    pub body_timeout: Duration,
    /// The largest API body (`api.max_body_bytes`).
    pub api_max_body_bytes: usize,
    /// Set at shutdown: readiness fails and upgrades are refused.
    pub draining: Arc<AtomicBool>,
    /// When the server started.
    pub started: Instant,
    /// The last 15 minutes, for the dashboard (`GET /api/history`).
    pub timeline: Arc<crate::timeline::Timeline>,
    /// The Redis cluster, in cluster mode: every node's samples for the dashboard.
    pub cluster: Option<Arc<switchboard_redis::RedisCluster>>,
}

impl AppState {
    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
