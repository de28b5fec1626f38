//! Counters and the stats snapshot. Counts of live things come from the hub's indexes in O(1);
//! everything that only grows is an atomic counter here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::disconnect::DisconnectReason;

const REASONS: usize = DisconnectReason::ALL.len();

/// Monotonic counters shared by the hub and the connection tasks, and the two histograms,
/// whose handles are looked up once (a `metrics::histogram!` per event would hash its key
/// every time).
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) rtt: metrics::Histogram,
    pub(crate) fanout: metrics::Histogram,
    /// `switchboard_rpc_calls_total` by outcome: `ok` (an `rpc_result`), `failed` (an
    /// `error`), `refused` (past the connection's calls waiting, or an `overloaded` server).
    pub(crate) rpc_ok: metrics::Counter,
    pub(crate) rpc_failed: metrics::Counter,
    pub(crate) rpc_refused: metrics::Counter,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped: AtomicU64,
    overflows: AtomicU64,
    rejections: [AtomicU64; REASONS],
    closes: [AtomicU64; REASONS],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            rtt: metrics::histogram!("switchboard_ping_rtt_seconds"),
            fanout: metrics::histogram!("switchboard_broadcast_fanout_seconds"),
            rpc_ok: metrics::counter!("switchboard_rpc_calls_total", "outcome" => "ok"),
            rpc_failed: metrics::counter!("switchboard_rpc_calls_total", "outcome" => "failed"),
            rpc_refused: metrics::counter!("switchboard_rpc_calls_total", "outcome" => "refused"),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            closes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn index(reason: DisconnectReason) -> usize {
    DisconnectReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("ALL lists every reason")
}

impl Counters {
    pub(crate) fn message_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }
    /// One writer batch: counted once per flush, not per frame.
    pub(crate) fn messages_out(&self, frames: u64, bytes: u64) {
        self.messages_out.fetch_add(frames, Relaxed);
        self.bytes_out.fetch_add(bytes, Relaxed);
    }
    /// A full outbound queue, whatever the policy did about it.
    pub(crate) fn overflow(&self, dropped: bool) {
        self.overflows.fetch_add(1, Relaxed);
        if dropped {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn rejected(&self, reason: DisconnectReason) {
        self.rejections[index(reason)].fetch_add(1, Relaxed);
    }
    pub(crate) fn closed(&self, reason: DisconnectReason) {
        self.closes[index(reason)].fetch_add(1, Relaxed);
    }

    fn by_reason(counts: &[AtomicU64; REASONS]) -> BTreeMap<&'static str, u64> {
        DisconnectReason::ALL
            .iter()
            .zip(counts)
            .map(|(r, c)| (r.as_str(), c.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// A snapshot of the manager's state and counters (`/api/stats` serves it).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Open connections.
    pub total_connections: usize,
    /// The global limit.
    pub max_connections: usize,
    /// `total_connections` as a percentage of `max_connections`.
    pub capacity_percent: f64,
    /// Lobbies with at least one member (or a user inside a leave grace).
    pub active_lobbies: usize,
    /// Distinct users with at least one connection.
    pub users: usize,
    /// Client frames received.
    pub messages_in: u64,
    /// Frames written to clients.
    pub messages_out: u64,
    /// Bytes of client text frames received.
    pub bytes_in: u64,
    /// Bytes of frame payloads written to clients.
    pub bytes_out: u64,
    /// Frames dropped for slow consumers under the `drop` policy.
    pub messages_dropped: u64,
    /// Frames offered to a full outbound queue (closed or dropped per policy).
    pub queue_overflows: u64,
    /// Refused connections by reason.
    pub rejections: BTreeMap<&'static str, u64>,
    /// Closed connections by reason.
    pub closes: BTreeMap<&'static str, u64>,
    /// Connections closed as stale (4004).
    pub stale_closed: u64,
    /// Bytes of broadcasts kept for recovery across every lobby (within `history.max_bytes`).
    pub history_bytes: usize,
    /// Lobby memberships: connections counted once per lobby they are in (equal to
    /// `total_connections` when every connection is in exactly one lobby, as in protocol v1).
    pub memberships: usize,
}

/// Counts the registry reads under its lock in O(1), for a [`Stats`] snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Census {
    pub(crate) connections: usize,
    pub(crate) lobbies: usize,
    pub(crate) users: usize,
    pub(crate) history_bytes: usize,
    pub(crate) memberships: usize,
}

impl Stats {
    pub(crate) fn new(census: Census, max_connections: usize, counters: &Counters) -> Self {
        let closes = Counters::by_reason(&counters.closes);
        Self {
            total_connections: census.connections,
            max_connections,
            capacity_percent: (census.connections as f64 * 10_000.0 / max_connections as f64)
                .round()
                / 100.0,
            active_lobbies: census.lobbies,
            users: census.users,
            messages_in: counters.messages_in.load(Relaxed),
            messages_out: counters.messages_out.load(Relaxed),
            bytes_in: counters.bytes_in.load(Relaxed),
            bytes_out: counters.bytes_out.load(Relaxed),
            messages_dropped: counters.dropped.load(Relaxed),
            queue_overflows: counters.overflows.load(Relaxed),
            rejections: Counters::by_reason(&counters.rejections),
            stale_closed: closes.get("stale").copied().unwrap_or(0),
            history_bytes: census.history_bytes,
            memberships: census.memberships,
            closes,
        }
    }
}
