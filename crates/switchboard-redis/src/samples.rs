//! Every node's recent samples in Redis, so any node's dashboard charts any node, and Redis's
//! health as this node sees it.
//!
//! Each node pushes its one-second sample (a small JSON object, at most
//! [`MAX_SAMPLE_BYTES`]) onto its own capped list `P timeline:{node}` (newest first, trimmed
//! to the window's samples, expiring one window after the last push) and records the push in
//! `P timelines` (ZSET node -> Redis time of its last sample; entries older than the window
//! are pruned by every push). Memory: at most `keep` x [`MAX_SAMPLE_BYTES`] per node (900 x
//! 4 KiB = 3.6 MiB for 15 minutes; a sample is about 500 bytes, so about 450 KB in practice),
//! gone one window after the node stops.

use super::*;

/// The largest sample kept; a larger one is not pushed.
pub const MAX_SAMPLE_BYTES: usize = 4096;
/// Nodes listed by [`RedisCluster::timeline_nodes`].
pub(crate) const MAX_NODES: usize = 64;

/// ARGV: P, node, sample, keep, window ms. Pushes, trims, expires; records the node.
const PUSH: &str = r#"
local P, node, sample, keep, window = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local key = P .. 'timeline:' .. node
redis.call('LPUSH', key, sample)
redis.call('LTRIM', key, 0, keep - 1)
redis.call('PEXPIRE', key, window)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', P .. 'timelines', now, node)
redis.call('ZREMRANGEBYSCORE', P .. 'timelines', '-inf', now - window)
redis.call('PEXPIRE', P .. 'timelines', window)
return 1
"#;

/// Redis as this node sees it, for the dashboard.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RedisHealth {
    /// Whether the last call succeeded.
    pub up: bool,
    /// Failed calls and lost connections since start.
    pub errors: u64,
    /// The last heartbeat's round trip (one script call), in ms.
    pub rtt_ms: Option<f64>,
}

impl RedisCluster {
    /// Redis's health as this node sees it.
    pub fn health(&self) -> RedisHealth {
        let rtt = self.heartbeat_rtt_us.load(Ordering::Relaxed);
        RedisHealth {
            up: self.up.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            rtt_ms: (rtt > 0).then(|| rtt as f64 / 1000.0),
        }
    }

    /// Pushes this node's latest sample (JSON) onto its list, keeping the last `keep`, for
    /// `window`. Does nothing while Redis is down or when the sample is larger than
    /// [`MAX_SAMPLE_BYTES`]; whether it was pushed.
    pub async fn push_sample(&self, sample: &str, keep: usize, window: Duration) -> bool {
        if sample.len() > MAX_SAMPLE_BYTES || keep == 0 {
            return false;
        }
        let Some(mut con) = self.connection() else {
            return false;
        };
        let pushed: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(PUSH)
            .arg(0)
            .arg(&self.cfg.key_prefix)
            .arg(&self.cfg.node_id)
            .arg(sample)
            .arg(keep)
            .arg(window.as_millis().max(1) as u64)
            .query_async(&mut con)
            .await;
        match pushed {
            Ok(_) => true,
            Err(error) => {
                self.failed("timeline", &error);
                false
            }
        }
    }

    /// A node's samples, oldest first (at most `keep`); `None` when Redis cannot answer.
    pub async fn samples(&self, node: &str, keep: usize) -> Option<Vec<String>> {
        let mut con = self.connection()?;
        let key = self.key(&format!("timeline:{node}"));
        let last = keep.max(1) as isize - 1;
        match con.lrange::<_, Vec<String>>(key, 0, last).await {
            Ok(mut newest_first) => {
                newest_first.reverse();
                Some(newest_first)
            }
            Err(error) => {
                self.failed("timeline", &error);
                None
            }
        }
    }

    /// The nodes that pushed a sample within the window, sorted (at most [`MAX_NODES`]);
    /// `None` when Redis cannot answer.
    pub async fn timeline_nodes(&self) -> Option<Vec<String>> {
        let mut con = self.connection()?;
        let last = MAX_NODES as isize - 1;
        // The most recent first, so a cut keeps the live ones.
        let mut nodes: Vec<String> = con
            .zrevrange(self.key("timelines"), 0, last)
            .await
            .map_err(|error| self.failed("timeline", &error))
            .ok()?;
        nodes.sort_unstable();
        Some(nodes)
    }
}
