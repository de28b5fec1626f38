//! The accept loop: HTTP/1.1 with upgrades, a deadline for every request head (so a TCP
//! connection that never sends its upgrade cannot hold a socket), a cap on connections that
//! have not upgraded (so a crowd of slow requests cannot use up the file descriptors the
//! established WebSockets and the next upgrades need), and a graceful stop.
//!
//! `axum::serve` has no request-head timeout; this is the same hyper stack with one. On the
//! public listener the head is read here first: a WebSocket upgrade is answered without hyper
//! and axum's router (`lean`), in the task that then serves it; anything else goes to hyper
//! with the bytes already read.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::app::AppState;
use crate::lean;

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
/// finish (upgraded WebSockets are the manager's, not ours) and returns. With `upgrades`, the
/// listener's WebSocket upgrades are answered without hyper (see `lean`).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    upgrades: Option<AppState>,
    bounds: Bounds,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    // A permit per connection until it upgrades (hyper's connection future ends then) or
    // closes.
    let pending = Arc::new(Semaphore::new(bounds.max_pending));
    let inherits_nodelay = nodelay_inherited(&listener);
    // Shared by the connections' tasks: one reference count per connect, not one per field.
    let upgrades = upgrades.map(Arc::new);
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
        if !inherits_nodelay {
            let _ = tcp.set_nodelay(true);
        }
        let router = router.clone();
        let stop = stop.clone();
        let upgrades = upgrades.clone();
        // Tracked until the request is answered or upgraded: the WebSocket it may become is
        // the manager's.
        let token = connections.token();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + bounds.head_timeout;
            let (tcp, read) = match &upgrades {
                None => (tcp, Vec::new()),
                Some(state) => {
                    match lean::accept(tcp, peer, state, deadline, MAX_HEAD_BYTES, &stop).await {
                        lean::Outcome::Upgraded(serving) => {
                            drop((permit, token));
                            serving.await;
                            return;
                        }
                        lean::Outcome::Done => return,
                        lean::Outcome::Hyper(tcp, read) => (tcp, read),
                    }
                }
            };
            // Boxed: hyper's connection is kilobytes, and most connects never need it.
            Box::pin(via_hyper(tcp, peer, read, router, bounds, &stop)).await;
            drop((permit, token));
        });
    }
    connections.close();
    connections.wait().await;
}

/// Serves a connection with hyper (`read`: what was read of it already) until it ends or
/// upgrades; on `stop`, lets the request in flight finish.
async fn via_hyper(
    tcp: TcpStream,
    peer: SocketAddr,
    read: Vec<u8>,
    router: Router,
    bounds: Bounds,
    stop: &CancellationToken,
) {
    // The peer goes into each request's extensions; `Router::layer` would rebuild the whole
    // route table for every connection.
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer));
        router.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.head_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(Rewind { read, at: 0, tcp }), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Sets `TCP_NODELAY` on the listener itself where accepted sockets inherit it (Linux): one
/// `setsockopt` less per connection. `false` when each accepted socket must set it.
fn nodelay_inherited(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux")
        && socket2::SockRef::from(listener)
            .set_tcp_nodelay(true)
            .is_ok()
}

/// A TCP stream with the bytes already read from it in front.
struct Rewind {
    read: Vec<u8>,
    at: usize,
    tcp: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = (this.read.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_do_without_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inherited = nodelay_inherited(&listener);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        if inherited {
            // What the accept loop relies on when it leaves `set_nodelay` out.
            assert!(accepted.nodelay().unwrap());
        }
    }
}
