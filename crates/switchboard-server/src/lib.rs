//! The standalone Switchboard server: protocol v1 over WebSocket for clients in any language.
//!
//! # Layout
//!
//! - [`config`]: [`ServerConfig`] from `SWITCHBOARD_*` environment variables.
//! - [`auth`]: dev-mode tokens and JWT (HS256 / RS256) verification.
//! - [`app`]: the routes (`/ws/{lobby}`, `/healthz`, `/readyz`) and the origin check.
//! - [`run`] / [`spawn`]: serve on a listener until a shutdown signal, then drain.
//!
//! The binary is thin: read config, init logs, bind, print `listening on ADDR`, call [`run`].
//! Tests call [`spawn`] with port 0 and the same code path.

pub mod app;
pub mod auth;
pub mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchboard::Manager;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use config::{ConfigError, LogFormat, ServerConfig};

/// Serves `listener` until `shutdown` resolves, then drains every connection with 1001 over
/// `shutdown.drain_ms` and returns within `shutdown.deadline_ms`. Returns whether every
/// connection ended in time.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    manager: Manager,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<bool> {
    let auth = auth::Auth::from_config(&config)?;
    if config.dev_mode() {
        tracing::warn!(
            "DEV MODE: tokens are user ids and are not verified; never expose this server (bind {})",
            config.bind
        );
    }
    let draining = Arc::new(AtomicBool::new(false));
    let state = app::AppState {
        manager: manager.clone(),
        auth: Arc::new(auth),
        allowed_origins: Arc::new(config.allowed_origins.clone()),
        draining: draining.clone(),
    };
    let router = app::router(state);
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = http_stopped.await;
        })
        .into_future(),
    );
    shutdown.await;
    tracing::info!(drain = ?config.drain, deadline = ?config.deadline, "shutting down");
    draining.store(true, Ordering::SeqCst);
    let drained = manager.shutdown(config.drain, config.deadline).await;
    let _ = stop_http.send(());
    // Plain HTTP requests still in flight get what is left of the deadline.
    let _ = tokio::time::timeout(config.deadline.saturating_sub(config.drain), server).await;
    tracing::info!(drained, "stopped");
    Ok(drained)
}

/// A server running in the background: what tests and embedders get from [`spawn`].
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address (with port 0, the port picked).
    pub addr: SocketAddr,
    /// The manager, to inspect stats and act as a backend.
    pub manager: Manager,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<bool>>,
}

impl RunningServer {
    /// Triggers the graceful shutdown and waits for it; returns whether everything drained.
    pub async fn shutdown(mut self) -> anyhow::Result<bool> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}

/// Binds `config.bind` and runs the server in a background task until
/// [`RunningServer::shutdown`].
pub async fn spawn(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let manager = Manager::new(config.manager.clone())?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, config, manager.clone(), async {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        manager,
        stop: Some(stop),
        task,
    })
}
