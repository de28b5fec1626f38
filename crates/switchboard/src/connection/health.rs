//! The health clock of a connection: when to ping, when it is stale, when its token expires.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::disconnect::DisconnectReason;
use crate::handle::ConnHandle;
use crate::protocol::unix_ms;
use crate::shared::Shared;

/// When to ping, when a connection is stale, when its token expires.
///
/// The timer is reset only when it fires, not on every inbound frame: a frame just moves
/// `last_seen`, and a timer that fires early finds the connection alive and sleeps again.
pub(super) struct HealthClock {
    interval: Duration,
    stale_after: Duration,
    pub(super) last_seen: Instant,
    next_ping: Instant,
    expires_at: Option<Instant>,
}

impl HealthClock {
    pub(super) fn new(shared: &Shared, expires_at: Option<SystemTime>) -> Self {
        let now = Instant::now();
        // An expiry too far away for the monotonic clock is no expiry, never an overflow.
        let expires_at = expires_at.and_then(|at| {
            now.checked_add(
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            )
        });
        Self {
            interval: shared.config.ping_interval,
            stale_after: shared.config.stale_after(),
            last_seen: now,
            next_ping: now + shared.config.ping_interval,
            expires_at,
        }
    }

    pub(super) fn next_deadline(&self) -> Instant {
        let health = self.next_ping.min(self.last_seen + self.stale_after);
        self.expires_at.map_or(health, |at| at.min(health))
    }

    /// Called when the timer fires: a reason to close, or pings sent as due.
    pub(super) fn tick(&mut self, conn: &ConnHandle, shared: &Shared) -> Option<DisconnectReason> {
        let now = Instant::now();
        if self.expires_at.is_some_and(|at| now >= at) {
            return Some(DisconnectReason::TokenExpired);
        }
        if now >= self.last_seen + self.stale_after {
            return Some(DisconnectReason::Stale);
        }
        if now >= self.next_ping {
            self.next_ping = now + self.interval;
            // Pings are best effort: a full queue is the slow-consumer policy's business, and
            // staleness is judged on what arrives, not on what we manage to send.
            conn.offer(conn.health_ping(unix_ms()));
            conn.offer(conn.ping(shared.ping_stamp()));
        }
        None
    }
}
