//! The last 15 minutes in the server's memory, one sample a second: what the dashboard charts
//! (`GET /api/history`), so an operator paged at 3 a.m. sees what happened before they looked.
//! A fixed ring per series: memory does not grow with uptime.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::{Manager, Stats};
use tokio_util::sync::CancellationToken;

use crate::summary::Summary;

/// Samples kept: 15 minutes at one a second.
pub const SAMPLES: usize = 900;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The series the dashboard draws, each a ring of [`SAMPLES`].
#[derive(Debug, Default)]
pub struct Timeline {
    rings: Mutex<Rings>,
}

#[derive(Debug, Default)]
struct Rings {
    /// Sample times (Unix ms).
    t: VecDeque<u64>,
    /// Named series (`None`: nothing to say that second, e.g. no round trip measured).
    series: BTreeMap<&'static str, VecDeque<Option<f64>>>,
    /// Closes per second by reason, for the reasons seen so far.
    closes: BTreeMap<&'static str, VecDeque<f64>>,
    /// The previous sample's stats, for the rates.
    prev: Option<(u64, Stats)>,
}

/// Appends to a ring, dropping its oldest value once it holds [`SAMPLES`].
fn push<T>(ring: &mut VecDeque<T>, value: T) {
    if ring.len() == SAMPLES {
        ring.pop_front();
    }
    ring.push_back(value);
}

impl Timeline {
    /// Records one sample taken at `now_ms`: gauges as they are, counters as rates since the
    /// previous sample. `redis_up` only in cluster mode.
    pub fn record(&self, now_ms: u64, stats: Stats, redis_up: Option<bool>) {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((then_ms, prev)) = rings.prev.take() else {
            rings.prev = Some((now_ms, stats));
            return;
        };
        let secs = (now_ms.saturating_sub(then_ms) as f64 / 1000.0).max(0.001);
        let rate = |now: u64, then: u64| Some(now.saturating_sub(then) as f64 / secs);
        let (opened, _) = crate::summary::opened_and_closed(&prev, &stats);
        let connects = opened as f64 / secs;
        let count = |map: &BTreeMap<&'static str, u64>, key: &str| map.get(key).copied();
        let rejected: u64 = stats.rejections.values().sum();
        let rejected_before: u64 = prev.rejections.values().sum();
        let rtt_ms = |q| {
            stats
                .round_trips
                .quantile_since(&prev.round_trips, q)
                .map(|d| d.as_secs_f64() * 1000.0)
        };
        let values: [(&'static str, Option<f64>); 13] = [
            ("connections", Some(stats.total_connections as f64)),
            ("users", Some(stats.users as f64)),
            ("lobbies", Some(stats.active_lobbies as f64)),
            ("connects_per_s", Some(connects)),
            ("rejections_per_s", rate(rejected, rejected_before)),
            (
                "messages_in_per_s",
                rate(stats.messages_in, prev.messages_in),
            ),
            (
                "messages_out_per_s",
                rate(stats.messages_out, prev.messages_out),
            ),
            ("bytes_out_per_s", rate(stats.bytes_out, prev.bytes_out)),
            (
                "dropped_per_s",
                rate(stats.messages_dropped, prev.messages_dropped),
            ),
            (
                "slow_consumer_closes_per_s",
                rate(
                    count(&stats.closes, "slow_consumer").unwrap_or(0),
                    count(&prev.closes, "slow_consumer").unwrap_or(0),
                ),
            ),
            ("rtt_p50_ms", rtt_ms(0.5)),
            ("rtt_p99_ms", rtt_ms(0.99)),
            ("redis_up", redis_up.map(|up| if up { 1.0 } else { 0.0 })),
        ];
        let len = rings.t.len();
        push(&mut rings.t, now_ms);
        for (name, value) in values {
            if name == "redis_up" && redis_up.is_none() {
                continue;
            }
            let ring = rings
                .series
                .entry(name)
                .or_insert_with(|| VecDeque::from(vec![None; len]));
            push(ring, value);
        }
        // A reason seen for the first time gets zeros for the samples before it.
        for reason in stats.closes.keys() {
            rings
                .closes
                .entry(reason)
                .or_insert_with(|| VecDeque::from(vec![0.0; len]));
        }
        for (reason, ring) in rings.closes.iter_mut() {
            let now = count(&stats.closes, reason).unwrap_or(0);
            let then = count(&prev.closes, reason).unwrap_or(0);
            push(ring, rate(now, then).unwrap_or(0.0));
        }
        rings.prev = Some((now_ms, stats));
    }

    /// Every series, oldest sample first: `{"interval_ms","t":[..],"series":{..},
    /// "closes_per_s":{reason:[..]}}`.
    pub fn to_json(&self) -> Value {
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "t": rings.t,
            "series": rings.series,
            "closes_per_s": rings.closes,
        })
    }
}

/// Samples `manager` every [`INTERVAL`] until `stop`; the samples also make the periodic
/// `summary` log line, when there is one.
pub async fn sample(
    manager: Manager,
    timeline: std::sync::Arc<Timeline>,
    mut summary: Option<Summary>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let redis_up = manager.cluster_status().map(|s| s == "up");
        let (now, stats) = (crate::backend::now_ms(), manager.stats());
        if let Some(summary) = &mut summary
            && let Some(line) = summary.observe(now, &stats)
        {
            summary.log(&line);
        }
        timeline.record(now, stats, redis_up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_ring_stays_within_fifteen_minutes() {
        let timeline = Timeline::default();
        let manager_stats = || {
            let manager = Manager::new(switchboard::Config::default()).unwrap();
            manager.stats()
        };
        let stats = manager_stats();
        for i in 0..(SAMPLES as u64 + 100) {
            timeline.record(i * 1000, stats.clone(), Some(i % 2 == 0));
        }
        let json = timeline.to_json();
        assert_eq!(json["t"].as_array().unwrap().len(), SAMPLES);
        // The first record is the baseline (no rates yet): samples are 1..=999 s; the last
        // 900 of them are kept.
        assert_eq!(json["t"][0], 100_000, "the oldest samples went first");
        for (name, series) in json["series"].as_object().unwrap() {
            assert_eq!(series.as_array().unwrap().len(), SAMPLES, "{name}");
        }
        assert_eq!(json["series"]["connects_per_s"][0], 0.0);
        assert_eq!(
            json["series"]["rtt_p99_ms"][0],
            Value::Null,
            "no round trip"
        );
    }
}
