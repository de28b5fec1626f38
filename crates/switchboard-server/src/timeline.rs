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

/// Redis as this node saw it at a sample (cluster mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RedisSample {
    /// Whether the last call succeeded.
    pub up: bool,
    /// Failed calls since start.
    pub errors: u64,
    /// The last heartbeat's round trip, in ms.
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct Rings {
    /// Sample times (Unix ms).
    t: VecDeque<u64>,
    /// Named series (`None`: nothing to say that second, e.g. no round trip measured).
    series: BTreeMap<&'static str, VecDeque<Option<f64>>>,
    /// Closes per second by reason, for the reasons seen so far.
    closes: BTreeMap<&'static str, VecDeque<f64>>,
    /// The previous sample's stats and Redis errors, for the rates.
    prev: Option<(u64, Stats, Option<u64>)>,
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
    /// previous sample. `redis` only in cluster mode. Returns the sample as one JSON object
    /// (`{"t","v":{series:value},"closes":{reason:rate}}`, what other nodes read from Redis),
    /// `None` for the first call (the baseline of the rates).
    pub fn record(&self, now_ms: u64, stats: Stats, redis: Option<RedisSample>) -> Option<Value> {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let redis_errors = redis.map(|r| r.errors);
        let Some((then_ms, prev, prev_errors)) = rings.prev.take() else {
            rings.prev = Some((now_ms, stats, redis_errors));
            return None;
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
        let redis_errors_per_s =
            redis.and_then(|r| rate(r.errors, prev_errors.unwrap_or(r.errors)));
        let values: [(&'static str, Option<f64>); 18] = [
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
            (
                "shed_publishes_per_s",
                rate(stats.shed_publishes, prev.shed_publishes),
            ),
            (
                "shed_deliveries_per_s",
                rate(stats.shed_deliveries, prev.shed_deliveries),
            ),
            ("lagging_members", Some(stats.lagging_members as f64)),
            ("rtt_p50_ms", rtt_ms(0.5)),
            ("rtt_p99_ms", rtt_ms(0.99)),
            ("redis_up", redis.map(|r| if r.up { 1.0 } else { 0.0 })),
            ("redis_errors_per_s", redis_errors_per_s),
            ("redis_rtt_ms", redis.and_then(|r| r.rtt_ms)),
        ];
        let len = rings.t.len();
        push(&mut rings.t, now_ms);
        let mut sample = serde_json::Map::new();
        for (name, value) in values {
            if name.starts_with("redis_") && redis.is_none() {
                continue;
            }
            sample.insert(name.to_owned(), json!(value));
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
        let mut closes = serde_json::Map::new();
        for (reason, ring) in rings.closes.iter_mut() {
            let now = count(&stats.closes, reason).unwrap_or(0);
            let then = count(&prev.closes, reason).unwrap_or(0);
            let per_s = rate(now, then).unwrap_or(0.0);
            push(ring, per_s);
            if per_s > 0.0 {
                closes.insert((*reason).to_owned(), json!(per_s));
            }
        }
        rings.prev = Some((now_ms, stats, redis_errors));
        Some(json!({"t": now_ms, "v": sample, "closes": closes}))
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

/// Rebuilds [`Timeline::to_json`]'s shape from samples as [`Timeline::record`] returns them
/// (JSON text, oldest first: another node's, read from Redis). Unreadable samples are
/// skipped; at most [`SAMPLES`] are used (the newest).
pub fn from_samples(samples: &[String]) -> Value {
    let parsed: Vec<Value> = samples
        .iter()
        .rev()
        .take(SAMPLES)
        .filter_map(|s| serde_json::from_str::<Value>(s).ok())
        .filter(|v| v["t"].is_u64() && v["v"].is_object())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let t: Vec<u64> = parsed.iter().filter_map(|v| v["t"].as_u64()).collect();
    let mut series: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut closes: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for v in &parsed {
        for name in v["v"].as_object().into_iter().flat_map(|o| o.keys()) {
            series.entry(name.clone()).or_default();
        }
        for reason in v["closes"].as_object().into_iter().flat_map(|o| o.keys()) {
            closes.entry(reason.clone()).or_default();
        }
    }
    for v in &parsed {
        for (name, ring) in series.iter_mut() {
            ring.push(v["v"].get(name).cloned().unwrap_or(Value::Null));
        }
        for (reason, ring) in closes.iter_mut() {
            ring.push(v["closes"].get(reason).cloned().unwrap_or(json!(0.0)));
        }
    }
    json!({
        "interval_ms": INTERVAL.as_millis() as u64,
        "t": t,
        "series": series,
        "closes_per_s": closes,
    })
}

/// Samples `manager` every [`INTERVAL`] until `stop`; in cluster mode also Redis's health,
/// and pushes each sample to Redis for the other nodes' dashboards. The samples also make
/// the periodic `summary` log line, when there is one.
pub async fn sample(
    manager: Manager,
    timeline: std::sync::Arc<Timeline>,
    mut summary: Option<Summary>,
    cluster: Option<std::sync::Arc<switchboard_redis::RedisCluster>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let redis = cluster.as_ref().map(|c| {
            let health = c.health();
            RedisSample {
                up: health.up,
                errors: health.errors,
                rtt_ms: health.rtt_ms,
            }
        });
        let (now, stats) = (crate::backend::now_ms(), manager.stats());
        if let Some(summary) = &mut summary
            && let Some(line) = summary.observe(now, &stats)
        {
            summary.log(&line);
        }
        let recorded = timeline.record(now, stats, redis);
        if let (Some(cluster), Some(sample)) = (&cluster, recorded) {
            // A slow Redis must not slow this node's own sampling: half a tick at most.
            let window = INTERVAL * SAMPLES as u32;
            let sample = sample.to_string();
            let push = cluster.push_sample(&sample, SAMPLES, window);
            let _ = tokio::time::timeout(INTERVAL / 2, push).await;
        }
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
            let redis = RedisSample {
                up: i % 2 == 0,
                errors: i / 10,
                rtt_ms: Some(0.5),
            };
            timeline.record(i * 1000, stats.clone(), Some(redis));
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

    #[tokio::test]
    async fn samples_pushed_to_redis_rebuild_the_same_series_within_bounds() {
        let timeline = Timeline::default();
        let stats = Manager::new(switchboard::Config::default())
            .unwrap()
            .stats();
        let mut pushed = Vec::new();
        for i in 0..(SAMPLES as u64 + 50) {
            let redis = RedisSample {
                up: i % 3 != 0,
                errors: i * 2,
                rtt_ms: (i % 2 == 0).then_some(0.25),
            };
            if let Some(sample) = timeline.record(i * 1000, stats.clone(), Some(redis)) {
                let text = sample.to_string();
                assert!(
                    text.len() <= switchboard_redis::MAX_SAMPLE_BYTES,
                    "{} bytes",
                    text.len()
                );
                pushed.push(text);
            }
        }
        assert_eq!(pushed.len(), SAMPLES + 49, "every call but the baseline");
        // More samples than the window, and junk, as another node's list might hold.
        pushed.insert(3, "not json".into());
        let rebuilt = from_samples(&pushed);
        let local = timeline.to_json();
        assert_eq!(rebuilt["t"], local["t"], "the newest SAMPLES only");
        assert_eq!(rebuilt["series"], local["series"]);
        assert_eq!(rebuilt["series"]["redis_errors_per_s"][5], 2.0);
        assert_eq!(rebuilt["series"]["redis_rtt_ms"][1], Value::Null);
    }
}
