//! The standalone Switchboard server: protocols v1 and v2 over WebSocket for clients in any language,
//! an HTTP API for backends, probes and Prometheus metrics.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`--config`, `--dev`, `--print-config`, `--check-config`,
//!   `--help`, `--version`).
//! - [`config`]: [`ServerConfig`] from a TOML file and `SWITCHBOARD_*` environment variables,
//!   each setting's source, and the `--print-config` printer.
//! - [`auth`]: dev-mode tokens and JWT (HS256 / RS256) verification.
//! - [`state`]: [`state::AppState`], what every route needs.
//! - [`app`]: public routes (`/ws/{lobby}`, `/healthz`, `/readyz`) and admin routes, origin
//!   and proxy handling.
//! - [`api`]: the HTTP API for backends (`/api/...`).
//! - [`metrics`]: `GET /metrics`.
//! - [`pages`]: the demo page and the dashboard, embedded static files.
//! - [`backend`]: signed POSTs to the backend (webhooks, connect proxy, RPC), bounded.
//! - [`proxy`]: the connect and join proxy (the backend decides who connects and joins).
//! - [`rpc`]: a v2 client's `rpc` posted to the backend, whose answer is the result.
//! - [`webhook`]: events queued and posted in batches.
//! - [`timeline`]: the last 15 minutes, one sample a second, for the dashboard's charts.
//! - [`summary`]: the periodic one-line summary in the logs, made of the timeline's samples.
//! - `body`: request bodies read whole, bounded in bytes and time.
//! - `serve`: the accept loop with a request-head deadline and a cap on pending connections.
//! - [`check`]: what start-up checks before binding anything (`--check-config` runs it too).
//! - [`run`] / [`spawn`]: serve until a shutdown signal, then drain.
//!
//! The binary is thin: read config, init logs, bind, print `listening on ADDR`, call [`run`].
//! Tests call [`spawn`] with port 0 and the same code path.

pub mod api;
pub mod app;
pub mod auth;
pub mod backend;
mod body;
pub mod cli;
pub mod config;
pub mod handler;
mod lean;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod rpc;
mod serve;
pub mod state;
pub mod summary;
pub mod timeline;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use switchboard::Manager;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, LogFormat, ServerConfig};

/// What start-up checks beyond the settings ([`ServerConfig::validate`], done when they are
/// read) before it binds a port: the files and URLs the settings name (the JWT public key, the
/// backends' CA file, the Redis URL and its TLS files). Connects to nothing, binds nothing:
/// `switchboard --check-config` runs it as the start does. The error names the setting.
pub fn check(config: &ServerConfig) -> anyhow::Result<()> {
    auth::Auth::from_config(config)?;
    backend::Backend::new(config)?;
    if let Some(url) = &config.redis_url {
        redis_settings(config, url).check()?;
    }
    Ok(())
}

/// The listeners a server runs on.
#[derive(Debug)]
pub struct Listeners {
    /// Clients (and, without `admin`, everything else).
    pub public: TcpListener,
    /// `/api` and `/metrics` when `admin_bind` is set.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `bind` and, if set, `admin_bind`.
    pub async fn bind(config: &ServerConfig) -> std::io::Result<Self> {
        let public = listen(config.bind)?;
        let admin = config.admin_bind.map(listen).transpose()?;
        Ok(Self { public, admin })
    }
}

/// A listener with a deep accept backlog: a connect burst (a reconnect storm after a
/// restart) must queue, not be dropped and retried after a SYN timeout.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// gzip for HTTP responses (the API's JSON, `/metrics`, the pages) when the client asks for
/// it and `compression.enabled` is on. tower-http leaves small bodies (under 32 bytes) and
/// event streams alone; those are compressed event by event in `switchboard::sse`.
fn http_compression(enabled: bool) -> tower_http::compression::CompressionLayer {
    let layer = tower_http::compression::CompressionLayer::new();
    if enabled { layer } else { layer.no_gzip() }
}

/// Serves until `shutdown` resolves; then reports not-ready, refuses new upgrades, closes
/// every connection with 1001 spread over `shutdown.drain_ms`, and returns within
/// `shutdown.deadline_ms`. Returns whether every connection ended in time.
pub async fn run(
    listeners: Listeners,
    config: ServerConfig,
    manager: Manager,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<bool> {
    let auth = auth::Auth::from_config(&config)?;
    let dev_mode = config.dev_mode;
    if dev_mode {
        tracing::warn!(
            "DEV MODE: tokens are user ids and are not verified; never expose this server (bind {})",
            config.bind
        );
    }
    let queue = config.manager.effective_queue_capacity();
    if queue != config.manager.queue_capacity {
        tracing::warn!(
            configured = config.manager.queue_capacity,
            effective = queue,
            "queue.capacity is raised to history.size + 2 so a reconnect's replay fits"
        );
    }
    metrics::handle();
    metrics::register_at_zero(config.redis_url.is_some());
    let cluster = match &config.redis_url {
        Some(url) => Some(join_cluster(&config, url, &manager).await?),
        None => None,
    };
    let draining = Arc::new(AtomicBool::new(false));
    let state = state::AppState {
        manager: manager.clone(),
        auth: Arc::new(auth),
        connect_proxy: proxy::Proxy::new(&config.proxy, Arc::new(backend::Backend::new(&config)?))
            .filter(|p| p.decides_connects()),
        allowed_origins: Arc::new(config.allowed_origins.clone()),
        trusted_proxies: Arc::new(config.trusted_proxies.clone()),
        api_key: config.api_key.as_ref().map(|k| Arc::from(k.0.as_str())),
        dev_mode,
        body_timeout: config.body_timeout,
        api_max_body_bytes: config.api_max_body_bytes,
        draining: draining.clone(),
        started: Instant::now(),
        timeline: Arc::new(timeline::Timeline::default()),
        cluster: cluster.clone(),
    };
    let stop_http = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    let public = app::public_routes(state.clone());
    let timeline = state.timeline.clone();
    let upgrades = state.clone();
    let admin = app::admin_routes(state);
    let bounds = serve::Bounds {
        head_timeout: config.handshake_timeout,
        max_pending: config.max_pending,
    };
    let pages = config.pages_enabled();
    let gzip = http_compression(config.manager.compression.enabled);
    let (mut public, mut admin) = (public, admin);
    if pages {
        public = public.merge(pages::demo().merge(pages::assets()).layer(gzip.clone()));
        admin = admin.merge(pages::dashboard());
    }
    match listeners.admin {
        Some(admin_listener) => {
            if pages {
                admin = admin.merge(pages::assets());
            }
            let admin = admin.layer(gzip);
            servers.spawn(serve::serve(
                listeners.public,
                public,
                Some(upgrades.clone()),
                bounds,
                stop_http.clone(),
            ));
            servers.spawn(serve::serve(
                admin_listener,
                admin,
                None,
                bounds,
                stop_http.clone(),
            ));
        }
        None => {
            let both = public.merge(admin.layer(gzip));
            servers.spawn(serve::serve(
                listeners.public,
                both,
                Some(upgrades),
                bounds,
                stop_http.clone(),
            ));
        }
    }
    servers.spawn(metrics::upkeep(stop_http.clone()));
    let node = config
        .redis_url
        .is_some()
        .then(|| config.manager.node_id.clone());
    servers.spawn(timeline::sample(
        manager.clone(),
        timeline.clone(),
        summary::Summary::new(config.log_summary_interval, node),
        cluster.clone(),
        stop_http.clone(),
    ));
    shutdown.await;
    tracing::info!(drain = ?config.drain, deadline = ?config.deadline, "shutting down");
    draining.store(true, Ordering::SeqCst);
    let drained = manager.shutdown(config.drain, config.deadline).await;
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    stop_http.cancel();
    // Plain HTTP requests still in flight get what is left of the deadline.
    let remaining = config.deadline.saturating_sub(config.drain);
    let _ = tokio::time::timeout(remaining, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    tracing::info!(drained, "stopped");
    Ok(drained)
}

/// Starts the Redis adapter and attaches it; waits briefly for Redis so the first clients
/// get cluster-wide limits, but starts anyway when Redis is away (local limits meanwhile).
async fn join_cluster(
    config: &ServerConfig,
    url: &config::Secret,
    manager: &Manager,
) -> anyhow::Result<Arc<switchboard_redis::RedisCluster>> {
    let settings = redis_settings(config, url);
    let cluster = switchboard_redis::RedisCluster::start(settings, manager.local_node())?;
    manager.attach_cluster(cluster.clone());
    let wait = config.redis_heartbeat * 2 + std::time::Duration::from_millis(500);
    if cluster.wait_up(wait).await {
        tracing::info!(node = %config.manager.node_id, "joined the cluster");
    } else {
        tracing::error!("redis unreachable at start: serving with local limits until it answers");
    }
    Ok(cluster)
}

/// The Redis adapter's settings from the server's.
fn redis_settings(config: &ServerConfig, url: &config::Secret) -> switchboard_redis::RedisConfig {
    let mut settings = switchboard_redis::RedisConfig::new(url.0.clone(), &config.manager);
    settings.heartbeat = config.redis_heartbeat;
    settings.node_ttl = config.redis_node_ttl;
    settings.key_prefix = config.redis_key_prefix.clone();
    settings.outbound_max_bytes = config.redis_outbound_max_bytes;
    settings.tls = config.redis_tls.clone();
    settings.clock_offset_ms = config.test_clock_offset_ms;
    settings
}

/// A server running in the background: what tests and embedders get from [`spawn`].
#[derive(Debug)]
pub struct RunningServer {
    /// The public address (with port 0, the port picked).
    pub addr: SocketAddr,
    /// The admin address, when `admin_bind` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The manager, to inspect stats and act as a backend.
    pub manager: Manager,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<bool>>,
}

impl RunningServer {
    /// Where `/api` and `/metrics` are served.
    pub fn api_addr(&self) -> SocketAddr {
        self.admin_addr.unwrap_or(self.addr)
    }

    /// Triggers the graceful shutdown and waits for it; returns whether everything drained.
    pub async fn shutdown(mut self) -> anyhow::Result<bool> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}

/// Binds the configured addresses and runs the server in a background task until
/// [`RunningServer::shutdown`].
pub async fn spawn(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners.public.local_addr()?;
    let admin_addr = listeners
        .admin
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    // The recorder first: the manager looks up its metric handles when it is created.
    metrics::handle();
    let manager = handler::new_manager(&config)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(listeners, config, manager.clone(), async {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        admin_addr,
        manager,
        stop: Some(stop),
        task,
    })
}
