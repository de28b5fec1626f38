//! Per-lobby message history: offsets, the epoch, and a bounded ring of recent broadcasts, so a
//! client that reconnects with `since=OFFSET&epoch=EPOCH` gets what it missed, exactly once.
//!
//! Offsets are assigned under the hub's lock, in the same step that fans a broadcast out, so a
//! replay taken at registration (also under the lock) and the live stream that follows it never
//! overlap or leave a gap.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use tokio::time::Instant;

/// History settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryConfig {
    /// Broadcasts kept per lobby for recovery. Default 100; 0 turns recovery off (offsets are
    /// still assigned).
    pub size: usize,
    /// How long a broadcast stays recoverable. Default 5 minutes.
    pub ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
        }
    }
}

/// What a reconnecting client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The last offset the client received.
    pub since: u64,
    /// The epoch it received it in.
    pub epoch: String,
}

/// One lobby's offsets and recent broadcasts.
#[derive(Debug)]
pub(crate) struct History {
    /// Changes whenever history is lost (a new `History`): offsets of another epoch mean
    /// nothing here.
    pub(crate) epoch: Arc<str>,
    /// The last offset assigned (0: none yet).
    pub(crate) last: u64,
    /// Offsets and epoch come from the cluster (cluster mode): a broadcast numbered locally
    /// (Redis away) must start a new epoch first.
    pub(crate) from_cluster: bool,
    ring: VecDeque<Entry>,
}

/// A lobby's history as the cluster keeps it, for `welcome` and recovery on any node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterHistory {
    /// The lobby's cluster-wide epoch ("" when it has none yet).
    pub epoch: String,
    /// The last offset assigned cluster-wide.
    pub last: u64,
    /// The broadcasts after the requested offset still kept, oldest first, with their offsets.
    pub frames: Vec<(u64, String)>,
}

#[derive(Debug)]
struct Entry {
    offset: u64,
    at: Instant,
    frame: Message,
}

impl History {
    pub(crate) fn new() -> Self {
        Self::with_epoch(new_epoch(), 0)
    }

    pub(crate) fn with_epoch(epoch: String, last: u64) -> Self {
        Self {
            epoch: epoch.into(),
            last,
            from_cluster: false,
            ring: VecDeque::new(),
        }
    }

    /// Adopts the cluster's epoch (cluster mode), dropping local entries of another epoch.
    pub(crate) fn follow(&mut self, epoch: &str, last: u64) {
        if epoch.is_empty() {
            return;
        }
        if *self.epoch != *epoch {
            *self = Self::with_epoch(epoch.to_owned(), last);
        }
        self.from_cluster = true;
        self.last = self.last.max(last);
    }

    /// Keeps a broadcast the cluster numbered (cluster mode).
    pub(crate) fn record_numbered(&mut self, offset: u64, frame: Message, config: &HistoryConfig) {
        self.last = self.last.max(offset);
        if config.size > 0 && self.ring.back().is_none_or(|e| e.offset < offset) {
            let now = Instant::now();
            self.expire(now, config);
            if self.ring.len() == config.size {
                self.ring.pop_front();
            }
            self.ring.push_back(Entry {
                offset,
                at: now,
                frame,
            });
        }
    }

    /// The replay for `recovery` from the cluster's kept broadcasts and this node's ring
    /// (which holds what arrived since the node subscribed), or `None` when they do not cover
    /// every offset from `since + 1` to the last one.
    pub(crate) fn replay_with(
        &mut self,
        recovery: &Recovery,
        cluster: &ClusterHistory,
        config: &HistoryConfig,
    ) -> Option<Vec<(u64, Message)>> {
        if *recovery.epoch != *self.epoch || recovery.since > self.last {
            return None;
        }
        self.expire(Instant::now(), config);
        let local_first = self.ring.front().map(|e| e.offset);
        let mut frames: Vec<(u64, Message)> = cluster
            .frames
            .iter()
            .filter(|(o, _)| *o > recovery.since && local_first.is_none_or(|l| *o < l))
            .map(|(o, f)| (*o, Message::Text(f.clone().into())))
            .collect();
        frames.extend(
            self.ring
                .iter()
                .filter(|e| e.offset > recovery.since)
                .map(|e| (e.offset, e.frame.clone())),
        );
        let contiguous = frames
            .iter()
            .enumerate()
            .all(|(i, (o, _))| *o == recovery.since + 1 + i as u64);
        let complete = recovery.since + frames.len() as u64 == self.last;
        (contiguous && complete).then_some(frames)
    }

    /// Assigns the next offset to a `message` frame encoded without one, returns the frame
    /// with it, and keeps it for recovery.
    pub(crate) fn record(&mut self, frame_without_offset: &str, config: &HistoryConfig) -> Message {
        if self.from_cluster {
            // Numbered here while the cluster is away: these offsets are not the cluster's.
            *self = Self::with_epoch(new_epoch(), 0);
        }
        self.last += 1;
        let frame = Message::Text(with_offset(frame_without_offset, self.last).into());
        if config.size > 0 {
            let now = Instant::now();
            self.expire(now, config);
            if self.ring.len() == config.size {
                self.ring.pop_front();
            }
            self.ring.push_back(Entry {
                offset: self.last,
                at: now,
                frame: frame.clone(),
            });
        }
        frame
    }

    /// Drops entries older than the TTL.
    pub(crate) fn expire(&mut self, now: Instant, config: &HistoryConfig) {
        while self
            .ring
            .front()
            .is_some_and(|e| now.duration_since(e.at) >= config.ttl)
        {
            self.ring.pop_front();
        }
    }

    /// Whether nothing recoverable is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The frames a client needs after `since`, oldest first; `None` when the epoch differs
    /// or the ring no longer reaches back that far.
    pub(crate) fn replay(
        &mut self,
        recovery: &Recovery,
        config: &HistoryConfig,
    ) -> Option<Vec<Message>> {
        if *recovery.epoch != *self.epoch || recovery.since > self.last {
            return None;
        }
        self.expire(Instant::now(), config);
        let first_needed = recovery.since + 1;
        let oldest = self.ring.front().map_or(self.last + 1, |e| e.offset);
        if first_needed < oldest && first_needed <= self.last {
            return None;
        }
        Some(
            self.ring
                .iter()
                .filter(|e| e.offset > recovery.since)
                .map(|e| e.frame.clone())
                .collect(),
        )
    }
}

fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Inserts `"offset":N` into an encoded object (which ends with `}`).
pub(crate) fn with_offset(frame: &str, offset: u64) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    format!("{body},\"offset\":{offset}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(size: usize) -> HistoryConfig {
        HistoryConfig {
            size,
            ttl: Duration::from_secs(60),
        }
    }

    fn texts(frames: &[Message]) -> Vec<String> {
        frames
            .iter()
            .map(|m| m.to_text().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn offsets_are_inserted_into_the_frame() {
        assert_eq!(
            with_offset(r#"{"type":"message","data":1}"#, 7),
            r#"{"type":"message","data":1,"offset":7}"#
        );
    }

    #[test]
    fn replay_returns_exactly_what_was_missed() {
        let c = config(3);
        let mut h = History::new();
        for i in 1..=5 {
            h.record(&format!("{{\"n\":{i}}}"), &c);
        }
        let epoch = h.epoch.to_string();
        let ask = |since| Recovery {
            since,
            epoch: epoch.clone(),
        };
        assert_eq!(
            texts(&h.replay(&ask(3), &c).unwrap()),
            [r#"{"n":4,"offset":4}"#, r#"{"n":5,"offset":5}"#]
        );
        assert_eq!(h.replay(&ask(5), &c).unwrap().len(), 0, "nothing missed");
        assert_eq!(h.replay(&ask(2), &c).unwrap().len(), 3, "exactly the ring");
        assert!(
            h.replay(&ask(1), &c).is_none(),
            "the ring no longer reaches back"
        );
        assert!(h.replay(&ask(9), &c).is_none(), "an offset from the future");
        let other = Recovery {
            since: 4,
            epoch: "nope".into(),
        };
        assert!(h.replay(&other, &c).is_none(), "another epoch");
    }

    #[test]
    fn expired_entries_are_not_replayed() {
        let c = HistoryConfig {
            size: 10,
            ttl: Duration::ZERO,
        };
        let mut h = History::new();
        h.record("{}", &c);
        let ask = Recovery {
            since: 0,
            epoch: h.epoch.to_string(),
        };
        assert!(h.replay(&ask, &c).is_none());
    }
}
