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

    /// A refreshed credential's expiry replaces the connection's (`None`: it no longer
    /// expires). The timer keeps its deadline: an earlier expiry is noticed at its next tick
    /// at the latest, a ping interval away.
    pub(super) fn set_expiry(&mut self, expires_at: Option<SystemTime>) {
        let now = Instant::now();
        self.expires_at = expires_at.and_then(|at| {
            now.checked_add(
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            )
        });
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
            // Pings go out even on a full queue (two frames past its capacity a period at
            // most): a member behind keeps its queue full while it catches up from the
            // history, and must still be asked, or it would be closed as stale for the
            // server's overload. A client that does not read is closed all the same: as stale,
            // or as a slow consumer.
            conn.offer_over(conn.health_ping(unix_ms()));
            conn.offer_over(conn.ping(shared.ping_stamp()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::ws::Message;

    use super::*;
    use crate::config::Config;

    fn setup() -> (Shared, ConnHandle) {
        let config = Config {
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            ..Config::default()
        };
        let (conn, _) = crate::handle::testing::handle(1, 8);
        (Shared::new(config), conn)
    }

    fn queued(conn: &ConnHandle) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        conn.take_all(|m| {
            kinds.push(match m {
                Message::Text(_) => "health_ping",
                Message::Ping(_) => "ping",
                _ => "other",
            });
        });
        kinds
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_interval_and_stale_after_silence() {
        let (shared, conn) = setup();
        let mut clock = HealthClock::new(&shared, None);
        let start = Instant::now();
        assert_eq!(clock.next_deadline(), start + Duration::from_secs(20));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(clock.tick(&conn, &shared), None);
        assert_eq!(queued(&conn), ["health_ping", "ping"]);
        // The next deadline: staleness (30 s after the last frame) before the next ping (40 s).
        assert_eq!(clock.next_deadline(), start + Duration::from_secs(30));
        // A frame arrives at 25 s: alive until 55 s; the ping at 40 s comes first.
        clock.last_seen = start + Duration::from_secs(25);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            clock.tick(&conn, &shared),
            None,
            "an early wake finds it alive"
        );
        assert_eq!(clock.next_deadline(), start + Duration::from_secs(40));
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(clock.tick(&conn, &shared), Some(DisconnectReason::Stale));
    }

    /// A member behind keeps its queue full while it catches up: it is still pinged (past
    /// the capacity), or it would be closed as stale for the server's overload.
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_still_gets_its_pings() {
        let (shared, conn) = setup();
        for _ in 0..8 {
            conn.offer(Message::Text("broadcast".into()));
        }
        assert_eq!(
            conn.offer(Message::Text("one more".into())),
            crate::handle::Offer::Full
        );
        let mut clock = HealthClock::new(&shared, None);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(clock.tick(&conn, &shared), None);
        let kinds = queued(&conn);
        assert_eq!(kinds.len(), 10);
        assert_eq!(kinds[8..], ["health_ping", "ping"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_expiry_closes_first_and_an_absurd_one_is_none() {
        let (shared, conn) = setup();
        let expires = SystemTime::now() + Duration::from_secs(5);
        let mut clock = HealthClock::new(&shared, Some(expires));
        assert!(clock.next_deadline() <= Instant::now() + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            clock.tick(&conn, &shared),
            Some(DisconnectReason::TokenExpired)
        );
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        let clock = HealthClock::new(&shared, Some(far));
        assert_eq!(
            clock.next_deadline(),
            Instant::now() + Duration::from_secs(20),
            "no expiry, no overflow"
        );
    }
}
