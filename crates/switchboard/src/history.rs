//! Per-lobby message history: offsets, the epoch, and a bounded ring of recent broadcasts, so a
//! client that reconnects with `since=OFFSET&epoch=EPOCH` gets what it missed, exactly once.
//!
//! Offsets are assigned under the hub's lock, in the same step that fans a broadcast out, so a
//! replay taken at registration (also under the lock) and the live stream that follows it never
//! overlap or leave a gap.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;

use crate::handle::Outgoing;
use tokio::time::Instant;

use crate::ids::LobbyCode;

/// History settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryConfig {
    /// Broadcasts kept per lobby for recovery. Default 100; 0 turns recovery off (offsets are
    /// still assigned).
    pub size: usize,
    /// How long a broadcast stays recoverable. Default 5 minutes.
    pub ttl: Duration,
    /// Bytes kept across every lobby's history on this server (each broadcast's frame plus
    /// [`ENTRY_OVERHEAD`]); past it the oldest broadcasts of the whole server go first (the
    /// expired ones among them: every broadcast has the same `ttl`). Default 64 MiB; 0 keeps
    /// nothing.
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What one kept broadcast costs besides its frame's bytes: its ring slot, the frame's shared
/// buffer header, the server-wide index entry (accounted against `max_bytes`).
pub const ENTRY_OVERHEAD: usize = 128;

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
    /// What the ring's entries cost (frames plus `ENTRY_OVERHEAD` each).
    bytes: usize,
}

/// Where a member that was behind stands after [`History::catch_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchUp {
    /// It has every broadcast: live traffic may go to it again.
    Live,
    /// Its queue filled again; the broadcasts from this offset on are still to give.
    Behind(u64),
    /// Some broadcast it missed is no longer kept (or was never kept here).
    Lost,
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

/// A broadcast on its way into a lobby's history.
#[derive(Debug)]
pub(crate) enum Broadcast<'a> {
    /// A `message` frame encoded without an offset: this node numbers it (a single node, or a
    /// cluster node while Redis is away).
    Unnumbered(&'a str),
    /// A frame the cluster numbered; it carries its offset.
    Numbered {
        epoch: &'a str,
        offset: u64,
        frame: Message,
    },
}

#[derive(Debug)]
struct Entry {
    /// Numbers entries across every lobby, in the order they were kept: the server's oldest
    /// kept broadcast has the lowest.
    seq: u64,
    offset: u64,
    at: Instant,
    /// Shared with the queues it was offered to, its compressed form too.
    frame: Outgoing,
}

impl Entry {
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD + crate::handle::payload_len(&self.frame)
    }
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
            bytes: 0,
        }
    }

    /// Keeps `frame` as broadcast `offset`, numbered `seq + 1` across the server, after
    /// dropping what expired and, when the ring is full, its oldest entry.
    fn keep(&mut self, offset: u64, frame: Outgoing, config: &HistoryConfig, seq: &mut u64) {
        let now = Instant::now();
        self.expire(now, config);
        if self.ring.len() == config.size {
            self.pop_front();
        }
        *seq += 1;
        let entry = Entry {
            seq: *seq,
            offset,
            at: now,
            frame,
        };
        self.bytes += entry.cost();
        self.ring.push_back(entry);
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.ring.pop_front() {
            self.bytes -= entry.cost();
        }
        if self.ring.is_empty() {
            // An empty ring gives its memory back.
            self.ring = VecDeque::new();
        } else if self.ring.capacity() > 16 && self.ring.len() < self.ring.capacity() / 4 {
            // A ring mostly evicted by the server-wide budget does not keep its old size.
            self.ring.shrink_to(self.ring.len() * 2);
        }
    }

    /// The number of the oldest entry kept.
    fn front_seq(&self) -> Option<u64> {
        self.ring.front().map(|e| e.seq)
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

    /// The replay for `recovery`, oldest first with offsets, from this node's ring and (in
    /// cluster mode) the cluster's kept broadcasts; `None` when the epoch differs, the offset
    /// is from the future, or together they do not cover every offset from `since + 1` to the
    /// last one.
    ///
    /// The ring is not one contiguous run: it outlives the lobby's last local member, and
    /// while the node has no member there it is unsubscribed and hears nothing, so it may hold
    /// broadcasts from before such a gap and again from after it. Each offset is therefore
    /// taken from the ring when it has it (its frame is already shared) and from the
    /// cluster's otherwise.
    pub(crate) fn replay(
        &mut self,
        recovery: &Recovery,
        cluster: Option<&ClusterHistory>,
        config: &HistoryConfig,
    ) -> Option<Vec<(u64, Outgoing)>> {
        if *recovery.epoch != *self.epoch || recovery.since > self.last {
            return None;
        }
        self.expire(Instant::now(), config);
        let mut ring = self.ring.iter().skip_while(|e| e.offset <= recovery.since);
        let mut kept = cluster
            .map_or(&[][..], |c| &c.frames)
            .iter()
            .skip_while(|(o, _)| *o <= recovery.since);
        let (mut local, mut remote) = (ring.next(), kept.next());
        let mut frames = Vec::new();
        for offset in recovery.since + 1..=self.last {
            while local.is_some_and(|e| e.offset < offset) {
                local = ring.next();
            }
            while remote.is_some_and(|(o, _)| *o < offset) {
                remote = kept.next();
            }
            let frame = match (local, remote) {
                (Some(e), _) if e.offset == offset => e.frame.clone(),
                (_, Some((o, f))) if *o == offset => Message::Text(f.clone().into()).into(),
                // A gap: the loop ends at the first offset neither holds.
                _ => return None,
            };
            frames.push((offset, frame));
        }
        Some(frames)
    }

    /// Gives a member that is behind the kept broadcasts from offset `from` on, oldest
    /// first, while `offer` takes them: whether it is live again, still behind (from which
    /// offset), or behind further than the ring reaches.
    pub(crate) fn catch_up(
        &mut self,
        from: u64,
        config: &HistoryConfig,
        mut offer: impl FnMut(&Outgoing) -> bool,
    ) -> CatchUp {
        self.expire(Instant::now(), config);
        let mut next = from;
        for entry in self.ring.iter().skip_while(|e| e.offset < from) {
            if entry.offset != next {
                return CatchUp::Lost;
            }
            if !offer(&entry.frame) {
                return CatchUp::Behind(next);
            }
            next += 1;
        }
        if next > self.last {
            CatchUp::Live
        } else {
            CatchUp::Lost
        }
    }

    /// Numbers a broadcast (unless the cluster did), keeps it for recovery, and returns it
    /// with its offset: the one way a broadcast enters a history, alone or in a cluster.
    pub(crate) fn publish(
        &mut self,
        broadcast: Broadcast<'_>,
        config: &HistoryConfig,
        seq: &mut u64,
    ) -> (u64, Outgoing) {
        let (offset, frame) = match broadcast {
            Broadcast::Unnumbered(frame) => {
                if self.from_cluster {
                    // Numbered here while the cluster is away: these offsets are not the
                    // cluster's.
                    *self = Self::with_epoch(new_epoch(), 0);
                }
                let offset = self.last + 1;
                (offset, Message::Text(with_offset(frame, offset).into()))
            }
            Broadcast::Numbered {
                epoch,
                offset,
                frame,
            } => {
                self.follow(epoch, 0);
                (offset, frame)
            }
        };
        // One frame for every member, the history and replays: compressed at most once.
        let frame = Outgoing::shared(frame);
        // A numbered broadcast older than the newest kept one came late: delivered, not kept.
        let in_order = self.ring.back().is_none_or(|e| e.offset < offset);
        self.last = self.last.max(offset);
        if config.size > 0 && in_order {
            self.keep(offset, frame.clone(), config, seq);
        }
        (offset, frame)
    }

    /// Drops entries older than the TTL.
    pub(crate) fn expire(&mut self, now: Instant, config: &HistoryConfig) {
        while self
            .ring
            .front()
            .is_some_and(|e| now.duration_since(e.at) >= config.ttl)
        {
            self.pop_front();
        }
    }

    /// Whether nothing recoverable is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

/// Every lobby's history on this node, within one byte budget (`history.max_bytes`): each
/// change to a lobby's history goes through [`update`](Self::update), which keeps the count
/// and evicts the server's oldest broadcasts while it is over.
#[derive(Debug, Default)]
pub(crate) struct Histories {
    map: HashMap<LobbyCode, History>,
    /// The oldest entry of each non-empty history, by number: the server's oldest first.
    fronts: BTreeMap<u64, LobbyCode>,
    /// What every kept entry costs.
    bytes: usize,
    /// The last entry number given.
    seq: u64,
}

impl Histories {
    /// Changes a lobby's history (created with a fresh epoch on first use), then evicts the
    /// server's oldest broadcasts until the total is within `config.max_bytes`.
    pub(crate) fn update<R>(
        &mut self,
        lobby: &LobbyCode,
        config: &HistoryConfig,
        change: impl FnOnce(&mut History, &mut u64) -> R,
    ) -> R {
        // One lookup (a clone of the code costs less than hashing it twice).
        let history = self.map.entry(lobby.clone()).or_insert_with(History::new);
        let (front, bytes) = (history.front_seq(), history.bytes);
        let out = change(history, &mut self.seq);
        let new_front = history.front_seq();
        self.bytes = self.bytes - bytes + history.bytes;
        if front != new_front {
            if let Some(front) = front {
                self.fronts.remove(&front);
            }
            if let Some(new_front) = new_front {
                self.fronts.insert(new_front, lobby.clone());
            }
        }
        self.evict(config.max_bytes);
        out
    }

    /// Drops the server's oldest entries while the total is over `max_bytes`. Every entry has
    /// the same time to live, so the expired ones go first.
    fn evict(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((front, lobby)) = self.fronts.pop_first() else {
                return;
            };
            let Some(history) = self.map.get_mut(&lobby) else {
                continue;
            };
            let bytes = history.bytes;
            history.pop_front();
            self.bytes -= bytes - history.bytes;
            if let Some(next) = history.front_seq() {
                debug_assert!(next > front);
                self.fronts.insert(next, lobby);
            }
        }
    }

    /// Forgets a lobby's history (which must be empty: nothing to account).
    pub(crate) fn remove_if_empty(&mut self, lobby: &LobbyCode) {
        if self.map.get(lobby).is_some_and(History::is_empty) {
            self.map.remove(lobby);
        }
    }

    /// Expires every history; forgets the empty ones of lobbies `keep` says nobody is in.
    pub(crate) fn sweep(&mut self, config: &HistoryConfig, keep: impl Fn(&LobbyCode) -> bool) {
        let now = Instant::now();
        let (fronts, bytes) = (&mut self.fronts, &mut self.bytes);
        self.map.retain(|code, history| {
            let (front, before) = (history.front_seq(), history.bytes);
            history.expire(now, config);
            *bytes -= before - history.bytes;
            if front != history.front_seq() {
                if let Some(front) = front {
                    fronts.remove(&front);
                }
                if let Some(next) = history.front_seq() {
                    fronts.insert(next, code.clone());
                }
            }
            !history.is_empty() || keep(code)
        });
    }

    /// What every kept broadcast costs, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Inserts `"offset":N` into an encoded object (which ends with `}`).
pub(crate) fn with_offset(frame: &str, offset: u64) -> String {
    use std::fmt::Write;
    let body = frame.strip_suffix('}').unwrap_or(frame);
    // Sized exactly: the frame is kept (history, queues) with whatever capacity it has.
    let mut out = String::with_capacity(body.len() + 32);
    out.push_str(body);
    let _ = write!(out, ",\"offset\":{offset}}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(size: usize) -> HistoryConfig {
        HistoryConfig {
            size,
            ttl: Duration::from_secs(60),
            ..HistoryConfig::default()
        }
    }

    fn texts(frames: &[(u64, Outgoing)]) -> Vec<String> {
        frames
            .iter()
            .map(|(_, m)| m.message().to_text().unwrap_or_default().to_owned())
            .collect()
    }

    /// Numbers and keeps a broadcast as a single node does.
    fn record(h: &mut History, frame: &str, c: &HistoryConfig, seq: &mut u64) -> Message {
        h.publish(Broadcast::Unnumbered(frame), c, seq)
            .1
            .into_message()
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
            record(&mut h, &format!("{{\"n\":{i}}}"), &c, &mut 0);
        }
        let epoch = h.epoch.to_string();
        let ask = |since| Recovery {
            since,
            epoch: epoch.clone(),
        };
        assert_eq!(
            texts(&h.replay(&ask(3), None, &c).unwrap()),
            [r#"{"n":4,"offset":4}"#, r#"{"n":5,"offset":5}"#]
        );
        assert_eq!(
            h.replay(&ask(5), None, &c).unwrap().len(),
            0,
            "nothing missed"
        );
        assert_eq!(
            h.replay(&ask(2), None, &c).unwrap().len(),
            3,
            "exactly the ring"
        );
        assert!(
            h.replay(&ask(1), None, &c).is_none(),
            "the ring no longer reaches back"
        );
        assert!(
            h.replay(&ask(9), None, &c).is_none(),
            "an offset from the future"
        );
        let other = Recovery {
            since: 4,
            epoch: "nope".into(),
        };
        assert!(h.replay(&other, None, &c).is_none(), "another epoch");
    }

    #[test]
    fn a_cluster_replay_fills_the_gaps_of_the_ring() {
        let c = config(10);
        let frame = |o: u64| with_offset("{}", o);
        let mut h = History::with_epoch("e".into(), 0);
        h.follow("e", 0);
        // Heard 1..=3, unsubscribed (no local member) while 4..=7 went out, heard 8 and 9.
        for o in [1, 2, 3, 8, 9] {
            let numbered = Broadcast::Numbered {
                epoch: "e",
                offset: o,
                frame: Message::Text(frame(o).into()),
            };
            h.publish(numbered, &c, &mut 0);
        }
        let stream = |offsets: &[u64]| ClusterHistory {
            epoch: "e".into(),
            last: 9,
            frames: offsets.iter().map(|&o| (o, frame(o))).collect(),
        };
        let ask = |since| Recovery {
            since,
            epoch: "e".into(),
        };
        let offsets = |r: Option<Vec<(u64, Outgoing)>>| {
            r.map(|f| {
                assert!(
                    f.iter()
                        .all(|(o, m)| m.message().to_text().unwrap() == frame(*o))
                );
                f.into_iter().map(|(o, _)| o).collect::<Vec<_>>()
            })
        };
        let all: Vec<u64> = (1..=9).collect();
        assert_eq!(
            offsets(h.replay(&ask(3), Some(&stream(&all[3..])), &c)),
            Some((4..=9).collect())
        );
        assert_eq!(
            offsets(h.replay(&ask(1), Some(&stream(&[4, 5, 6, 7])), &c)),
            Some((2..=9).collect()),
            "the ring before and after the gap, the stream inside it"
        );
        assert_eq!(
            offsets(h.replay(&ask(9), Some(&stream(&[])), &c)),
            Some(vec![])
        );
        assert!(
            h.replay(&ask(3), Some(&stream(&[4, 5, 7])), &c).is_none(),
            "6 is nowhere"
        );
        assert!(h.replay(&ask(3), Some(&stream(&[])), &c).is_none());
    }

    #[test]
    fn the_whole_server_keeps_max_bytes_and_evicts_its_oldest_first() {
        let frame = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
        let one = ENTRY_OVERHEAD + with_offset(&frame, 1).len();
        let c = HistoryConfig {
            size: 100,
            ttl: Duration::from_secs(60),
            max_bytes: 10 * one,
        };
        let mut all = Histories::default();
        let lobby = |n: usize| LobbyCode::parse(&format!("l{n}")).unwrap();
        // Four lobbies of four: sixteen broadcasts, room for ten.
        for n in 0..4 {
            for _ in 0..4 {
                all.update(&lobby(n), &c, |h, seq| record(h, &frame, &c, seq));
                assert!(all.bytes() <= c.max_bytes);
            }
        }
        assert_eq!(all.bytes(), 10 * one);
        let kept = |all: &mut Histories, n: usize| {
            all.update(&lobby(n), &c, |h, _| {
                h.ring.iter().map(|e| e.offset).collect::<Vec<_>>()
            })
        };
        assert_eq!(
            kept(&mut all, 0),
            Vec::<u64>::new(),
            "the oldest lobby went first"
        );
        assert_eq!(kept(&mut all, 1), [3, 4]);
        assert_eq!(kept(&mut all, 3), [1, 2, 3, 4]);
        // Losing a lobby's history (a new epoch) gives its bytes back.
        all.update(&lobby(3), &c, |h, _| h.follow("other", 0));
        assert_eq!(all.bytes(), 6 * one);
        all.sweep(&c, |_| false);
        assert_eq!(all.bytes(), 6 * one, "nothing expired yet");
        let gone = HistoryConfig {
            ttl: Duration::ZERO,
            ..c
        };
        all.sweep(&gone, |_| false);
        assert_eq!((all.bytes(), all.map.len(), all.fronts.len()), (0, 0, 0));
    }

    #[test]
    fn expired_entries_are_not_replayed() {
        let c = HistoryConfig {
            size: 10,
            ttl: Duration::ZERO,
            ..HistoryConfig::default()
        };
        let mut h = History::new();
        record(&mut h, "{}", &c, &mut 0);
        let ask = Recovery {
            since: 0,
            epoch: h.epoch.to_string(),
        };
        assert!(h.replay(&ask, None, &c).is_none());
    }
}
