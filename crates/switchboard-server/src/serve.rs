//! The accept loop: HTTP/1.1 with upgrades, a deadline for every request head (so a TCP
//! connection that never sends its upgrade cannot hold a socket), a cap on connections that
//! have not upgraded (so a crowd of slow requests cannot use up the file descriptors the
//! established WebSockets and the next upgrades need), and a graceful stop.
//!
//! `axum::serve` has no request-head timeout; this is the same hyper stack with one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The answer to a connection over the `http.max_pending` cap, written without waiting.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The read buffer of a connection still speaking HTTP, which bounds its request head (431
/// past it): an upgrade with a long token needs a few KiB, and hyper's default (about 400 KiB)
/// times `http.max_pending` would be a lot of memory for a crowd of slow requests.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the accept loop bounds what is not yet an upgraded WebSocket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// The request head must arrive within this.
    pub(crate) head_timeout: Duration,
    /// Connections still speaking HTTP (not upgraded), at most.
    pub(crate) max_pending: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets in-flight HTTP requests
/// finish (upgraded WebSockets are the manager's, not ours) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    // A permit per connection until it upgrades (hyper's connection future ends then) or
    // closes.
    let pending = Arc::new(Semaphore::new(bounds.max_pending));
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors (or similar): keep running, try again shortly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            metrics::counter!("switchboard_http_refused_total", "reason" => "max_pending")
                .increment(1);
            let _ = tcp.try_write(BUSY);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // The peer goes into each request's extensions; `Router::layer` would rebuild the
        // whole route table for every connection.
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(request)
        });
        let stop = stop.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.head_timeout)
                .max_header_size(MAX_HEAD_BYTES)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}
