//! The periodic one-line summary in the logs (`log.summary_interval_ms`, every minute by
//! default): what an operator tailing the logs, or a log pipeline, reads to see the server's
//! load at a glance. Made of the timeline's samples (one a second), not of a sampler of its
//! own.

use std::time::Duration;

use switchboard::Stats;

/// Connections accepted and closed between two snapshots: closes are counted by reason;
/// accepted is the change in open connections plus those that closed meanwhile.
pub fn opened_and_closed(before: &Stats, after: &Stats) -> (u64, u64) {
    let closed = (after.closes.values().sum::<u64>()).saturating_sub(before.closes.values().sum());
    let opened = (after.total_connections as i128 - before.total_connections as i128
        + i128::from(closed))
    .max(0);
    (u64::try_from(opened).unwrap_or(0), closed)
}

/// One summary: gauges at its end, rates and counts over its period.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Open connections.
    pub connections: usize,
    /// Lobbies with members.
    pub lobbies: usize,
    /// Distinct users connected.
    pub users: usize,
    /// Connections accepted per second.
    pub connects_per_s: f64,
    /// Connections closed per second, for whatever reason.
    pub disconnects_per_s: f64,
    /// Client frames received per second.
    pub messages_in_per_s: f64,
    /// Frames written to clients per second.
    pub messages_out_per_s: f64,
    /// Frames dropped for slow consumers (`queue.on_full = "drop"`) in the period.
    pub dropped: u64,
    /// Connections closed as slow consumers (4008) in the period.
    pub slow_consumer_closes: u64,
    /// The period, in seconds.
    pub period_s: f64,
}

/// Rounded to two decimals, so a line stays short.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Line {
    /// The line between two snapshots taken `period` apart.
    pub fn between(before: &Stats, after: &Stats, period: Duration) -> Self {
        let secs = period.as_secs_f64().max(0.001);
        let per_s = |now: u64, then: u64| round(now.saturating_sub(then) as f64 / secs);
        let (opened, closed) = opened_and_closed(before, after);
        let slow = |s: &Stats| s.closes.get("slow_consumer").copied().unwrap_or(0);
        Self {
            connections: after.total_connections,
            lobbies: after.active_lobbies,
            users: after.users,
            connects_per_s: per_s(opened, 0),
            disconnects_per_s: per_s(closed, 0),
            messages_in_per_s: per_s(after.messages_in, before.messages_in),
            messages_out_per_s: per_s(after.messages_out, before.messages_out),
            dropped: after
                .messages_dropped
                .saturating_sub(before.messages_dropped),
            slow_consumer_closes: slow(after).saturating_sub(slow(before)),
            period_s: round(secs),
        }
    }

    /// Logs the line at info level (target `switchboard_server::summary`, message `summary`);
    /// `node` in cluster mode.
    pub fn log(&self, node: Option<&str>) {
        tracing::info!(
            node,
            connections = self.connections,
            lobbies = self.lobbies,
            users = self.users,
            connects_per_s = self.connects_per_s,
            disconnects_per_s = self.disconnects_per_s,
            messages_in_per_s = self.messages_in_per_s,
            messages_out_per_s = self.messages_out_per_s,
            dropped = self.dropped,
            slow_consumer_closes = self.slow_consumer_closes,
            period_s = self.period_s,
            "summary"
        );
    }
}

/// Turns the samples it is shown into a [`Line`] once per period.
#[derive(Debug)]
pub struct Summary {
    every: Duration,
    node: Option<String>,
    /// The snapshot the current period started with, and when (Unix ms).
    start: Option<(u64, Stats)>,
}

impl Summary {
    /// A summary every `every` (`None` when it is zero: off); `node` in cluster mode.
    pub fn new(every: Duration, node: Option<String>) -> Option<Self> {
        (!every.is_zero()).then_some(Self {
            every,
            node,
            start: None,
        })
    }

    /// Takes a sample taken at `now_ms`; once the period is over, the line for it (which the
    /// caller logs with [`Summary::log`]). The first sample only starts the first period.
    pub fn observe(&mut self, now_ms: u64, stats: &Stats) -> Option<Line> {
        let Some((then_ms, before)) = &self.start else {
            self.start = Some((now_ms, stats.clone()));
            return None;
        };
        let elapsed = Duration::from_millis(now_ms.saturating_sub(*then_ms));
        // A sample may come a few ms early: within a tenth of a second counts as due.
        if elapsed + Duration::from_millis(100) < self.every {
            return None;
        }
        let line = Line::between(before, stats, elapsed);
        self.start = Some((now_ms, stats.clone()));
        Some(line)
    }

    /// Logs `line` with this node's id, if any.
    pub fn log(&self, line: &Line) {
        line.log(self.node.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(open: usize, closes: &[(&'static str, u64)], out: u64, dropped: u64) -> Stats {
        let manager = switchboard::Manager::new(switchboard::Config::default()).unwrap();
        let mut s = manager.stats();
        s.total_connections = open;
        s.closes = closes.iter().copied().collect();
        s.messages_out = out;
        s.messages_dropped = dropped;
        s
    }

    #[tokio::test]
    async fn one_line_per_period_with_rates_over_it() {
        let mut summary = Summary::new(Duration::from_secs(2), Some("n1".into())).unwrap();
        assert_eq!(summary.observe(0, &stats(0, &[], 0, 0)), None, "the start");
        assert_eq!(
            summary.observe(1_000, &stats(3, &[], 0, 0)),
            None,
            "not due"
        );
        // 2 s: 5 opened (4 still open, 1 closed as a slow consumer), 40 frames out, 3 dropped.
        let line = summary
            .observe(1_950, &stats(4, &[("slow_consumer", 1)], 40, 3))
            .expect("due within a tenth of a second");
        assert_eq!(line.connections, 4);
        assert_eq!(line.period_s, 1.95);
        assert_eq!(line.connects_per_s, round(5.0 / 1.95));
        assert_eq!(line.disconnects_per_s, round(1.0 / 1.95));
        assert_eq!(line.messages_out_per_s, round(40.0 / 1.95));
        assert_eq!((line.dropped, line.slow_consumer_closes), (3, 1));
        // The next period starts where this one ended.
        let line = summary
            .observe(
                3_950,
                &stats(0, &[("slow_consumer", 1), ("client", 4)], 40, 3),
            )
            .unwrap();
        assert_eq!((line.connects_per_s, line.disconnects_per_s), (0.0, 2.0));
        assert_eq!((line.dropped, line.slow_consumer_closes), (0, 0));
        assert!(
            Summary::new(Duration::ZERO, None).is_none(),
            "0 turns it off"
        );
    }
}
