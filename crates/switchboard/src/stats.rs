//! Counters and the stats snapshot. Counts of live things come from the hub's indexes in O(1);
//! everything that only grows is an atomic counter here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::disconnect::DisconnectReason;

const REASONS: usize = DisconnectReason::ALL.len();

/// Buckets of [`RoundTrips`]: bucket `i` counts round trips of `[2^i, 2^(i+1))` µs.
const RTT_BUCKETS: usize = 32;

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
    deflated: AtomicU64,
    dropped: AtomicU64,
    overflows: AtomicU64,
    shed_publishes: AtomicU64,
    shed_deliveries: AtomicU64,
    catch_ups_lost: AtomicU64,
    pub(crate) lagging: AtomicU64,
    rejections: [AtomicU64; REASONS],
    closes: [AtomicU64; REASONS],
    round_trips: [AtomicU64; RTT_BUCKETS],
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
            deflated: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            shed_publishes: AtomicU64::new(0),
            shed_deliveries: AtomicU64::new(0),
            catch_ups_lost: AtomicU64::new(0),
            lagging: AtomicU64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            closes: std::array::from_fn(|_| AtomicU64::new(0)),
            round_trips: std::array::from_fn(|_| AtomicU64::new(0)),
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
    /// Tests: messages and payload bytes counted out so far.
    #[cfg(test)]
    pub(crate) fn out_for_test(&self) -> (u64, u64) {
        (
            self.messages_out.load(Relaxed),
            self.bytes_out.load(Relaxed),
        )
    }
    /// An outgoing message compressed (permessage-deflate): a broadcast counts once, however
    /// many members get it compressed.
    pub(crate) fn deflated(&self) {
        self.deflated.fetch_add(1, Relaxed);
    }
    /// A full outbound queue, whatever the policy did about it.
    pub(crate) fn overflow(&self, dropped: bool) {
        self.overflows.fetch_add(1, Relaxed);
        if dropped {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
    /// A publish refused where it entered: its lobby's members are behind.
    pub(crate) fn shed_publish(&self) {
        self.shed_publishes.fetch_add(1, Relaxed);
    }
    /// A frame not queued for a connection that is behind (a broadcast it will get from the
    /// lobby's history, or another frame it misses).
    pub(crate) fn shed_delivery(&self) {
        self.shed_deliveries.fetch_add(1, Relaxed);
    }
    /// A member that fell further behind than its lobby's history reaches.
    pub(crate) fn catch_up_lost(&self) {
        self.catch_ups_lost.fetch_add(1, Relaxed);
    }
    /// A membership fell behind (`true`) or caught up or ended (`false`).
    pub(crate) fn lagging(&self, behind: bool) {
        if behind {
            self.lagging.fetch_add(1, Relaxed);
        } else {
            self.lagging.fetch_sub(1, Relaxed);
        }
    }
    pub(crate) fn rejected(&self, reason: DisconnectReason) {
        self.rejections[index(reason)].fetch_add(1, Relaxed);
    }
    pub(crate) fn closed(&self, reason: DisconnectReason) {
        self.closes[index(reason)].fetch_add(1, Relaxed);
    }
    /// A measured ping round trip: the metrics histogram and the log2 buckets of
    /// [`Stats::round_trips`].
    pub(crate) fn round_trip(&self, rtt: Duration) {
        self.rtt.record(rtt.as_secs_f64());
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let bucket = (us.ilog2() as usize).min(RTT_BUCKETS - 1);
        self.round_trips[bucket].fetch_add(1, Relaxed);
    }
    pub(crate) fn round_trips(&self) -> RoundTrips {
        RoundTrips(std::array::from_fn(|i| self.round_trips[i].load(Relaxed)))
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
    /// Bytes of frame payloads written to clients (compressed ones as they went out).
    pub bytes_out: u64,
    /// Outgoing messages compressed with permessage-deflate: each broadcast counts once,
    /// however many of its members negotiated the extension.
    pub messages_deflated: u64,
    /// Frames dropped for slow consumers under the `drop` policy.
    pub messages_dropped: u64,
    /// Frames offered to a full outbound queue that closed it or were dropped (`drop`
    /// policy).
    pub queue_overflows: u64,
    /// Publishes refused where they entered (client broadcasts answered `rate_limited`, API
    /// publishes 503) because members of their lobby were behind.
    pub shed_publishes: u64,
    /// Frames not queued for members that were behind (broadcasts they then got from the
    /// lobby's history, unless `catch_ups_lost` says otherwise).
    pub shed_deliveries: u64,
    /// Members that fell further behind than their lobby's history reaches: they were sent
    /// `recovered` with `ok: false`.
    pub catch_ups_lost: u64,
    /// Memberships behind now, catching up from their lobby's history.
    pub lagging_members: u64,
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
    /// Every ping round trip measured so far, counted in log2 buckets (not served by
    /// `/api/stats`): two snapshots give the percentiles between them.
    #[serde(skip)]
    pub round_trips: RoundTrips,
}

/// Ping round trips counted in log2 buckets of microseconds: cheap to record (one atomic
/// add), and two snapshots give the round trips' percentiles between them, within a factor
/// of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundTrips([u64; RTT_BUCKETS]);

impl RoundTrips {
    /// The `q` quantile (0-1) of the round trips measured since `earlier`, as the upper bound
    /// of its bucket; `None` when there were none.
    pub fn quantile_since(&self, earlier: &RoundTrips, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = (0..RTT_BUCKETS)
            .map(|i| self.0[i].saturating_sub(earlier.0[i]))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(2u64.saturating_pow(i as u32 + 1)));
            }
        }
        None
    }
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
            messages_deflated: counters.deflated.load(Relaxed),
            bytes_in: counters.bytes_in.load(Relaxed),
            bytes_out: counters.bytes_out.load(Relaxed),
            messages_dropped: counters.dropped.load(Relaxed),
            queue_overflows: counters.overflows.load(Relaxed),
            shed_publishes: counters.shed_publishes.load(Relaxed),
            shed_deliveries: counters.shed_deliveries.load(Relaxed),
            catch_ups_lost: counters.catch_ups_lost.load(Relaxed),
            lagging_members: counters.lagging.load(Relaxed),
            rejections: Counters::by_reason(&counters.rejections),
            stale_closed: closes.get("stale").copied().unwrap_or(0),
            history_bytes: census.history_bytes,
            memberships: census.memberships,
            round_trips: counters.round_trips(),
            closes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_quantiles_between_two_snapshots() {
        let counters = Counters::default();
        counters.round_trip(Duration::from_millis(100));
        let before = counters.round_trips();
        assert_eq!(before.quantile_since(&before, 0.5), None, "nothing since");
        // 98 fast round trips (~1 ms), 2 slow ones (~300 ms).
        for _ in 0..98 {
            counters.round_trip(Duration::from_micros(1_000));
        }
        for _ in 0..2 {
            counters.round_trip(Duration::from_millis(300));
        }
        let after = counters.round_trips();
        // Upper bounds of the log2 buckets: 1,000 µs is in [512, 1024).
        assert_eq!(
            after.quantile_since(&before, 0.5),
            Some(Duration::from_micros(1_024))
        );
        assert_eq!(
            after.quantile_since(&before, 0.98),
            Some(Duration::from_micros(1_024))
        );
        let p99 = after.quantile_since(&before, 0.99).unwrap();
        assert!(
            (Duration::from_millis(300)..=Duration::from_millis(600)).contains(&p99),
            "{p99:?}"
        );
    }
}
