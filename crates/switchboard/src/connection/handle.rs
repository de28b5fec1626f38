//! The handle through which everything outside a connection's tasks reaches it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::extract::ws::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::disconnect::DisconnectReason;
use crate::ids::{ConnectionId, LobbyCode, UserId};

/// What the embedding app and the logs know about a connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Unique on this server, names the node.
    pub id: ConnectionId,
    /// The authenticated user.
    pub user_id: UserId,
    /// The lobby the connection lives in.
    pub lobby: LobbyCode,
    /// The client's IP (after proxy resolution by the embedding app).
    pub ip: IpAddr,
    /// When the connection was accepted.
    pub connected_at: SystemTime,
}

/// The outcome of offering a frame to a connection's outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    Full,
    Closed,
}

/// Shared state of one connection: identity, the sending end of its bounded outbound queue,
/// and the close signal. The connection's own tasks own the socket; nobody else touches it.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(crate) seq: u64,
    pub(crate) info: ConnectionInfo,
    /// Join/leave events for this connection come from the cluster, not from this node's hub.
    pub(crate) cluster_presence: bool,
    /// Where client frames go for transports without an inbound stream of their own (SSE:
    /// frames arrive as HTTP posts).
    pub(crate) inbound: Option<mpsc::Sender<Message>>,
    /// Cluster mode: the last offset its recovery replayed; live broadcasts up to it are
    /// skipped (they were in flight while the replay was read).
    pub(crate) replayed_until: AtomicU64,
    /// Join/leave events were dropped on a full queue: the writer sends a fresh `presence`
    /// list once it has caught up.
    pub(crate) presence_behind: AtomicBool,
    outbox: mpsc::Sender<Message>,
    closing: CancellationToken,
    reason: OnceLock<DisconnectReason>,
    /// Last measured round trip in microseconds; `u64::MAX` until the first pong.
    rtt_us: AtomicU64,
    /// Callers of `Manager::ping` waiting for the next pong. Never held across `.await`.
    pong_waiters: Mutex<Vec<oneshot::Sender<Duration>>>,
}

impl ConnHandle {
    pub(crate) fn new(seq: u64, info: ConnectionInfo, outbox: mpsc::Sender<Message>) -> Self {
        Self {
            seq,
            info,
            cluster_presence: false,
            inbound: None,
            replayed_until: AtomicU64::new(0),
            presence_behind: AtomicBool::new(false),
            outbox,
            closing: CancellationToken::new(),
            reason: OnceLock::new(),
            rtt_us: AtomicU64::new(u64::MAX),
            pong_waiters: Mutex::new(Vec::new()),
        }
    }

    /// Offers a frame without waiting: broadcast never waits for a slow client.
    pub(crate) fn offer(&self, frame: Message) -> Offer {
        match self.outbox.try_send(frame) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Asks the connection to close. The first reason wins; returns whether it was this one.
    pub(crate) fn close(&self, reason: DisconnectReason) -> bool {
        let first = self.reason.set(reason).is_ok();
        if first {
            self.closing.cancel();
        }
        first
    }

    /// The reason the connection is closing, once decided.
    pub(crate) fn reason(&self) -> Option<DisconnectReason> {
        self.reason.get().copied()
    }

    /// Resolves once [`close`](Self::close) has been called.
    pub(crate) async fn closed(&self) {
        self.closing.cancelled().await;
    }

    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Records a measured round trip and wakes everyone waiting for one.
    pub(crate) fn record_rtt(&self, rtt: Duration, histogram: &metrics::Histogram) {
        histogram.record(rtt.as_secs_f64());
        self.rtt_us.store(
            rtt.as_micros().min(u64::MAX as u128 - 1) as u64,
            Ordering::Relaxed,
        );
        let waiters = std::mem::take(&mut *lock(&self.pong_waiters));
        for waiter in waiters {
            let _ = waiter.send(rtt);
        }
    }

    pub(crate) fn wait_for_pong(&self) -> oneshot::Receiver<Duration> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pong_waiters).push(tx);
        rx
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
