//! The registry: every index of connections, users, lobbies and IPs, behind one short lock.
//!
//! The hub owns indexes only; sockets belong to connection tasks. Registration checks every
//! limit and commits under the same lock, so no burst of connects can exceed a limit. Frames
//! are offered with `try_send`, which never waits, so the lock is never held across I/O or
//! `.await`. One lock is enough until a benchmark says otherwise.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::Message;
use serde_json::value::RawValue;
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, SlowConsumerPolicy, UserPolicy};
use crate::disconnect::DisconnectReason;
use crate::handle::{ConnHandle, Offer, Outgoing};
use crate::history::{Broadcast, ClusterHistory, Histories, History, HistoryConfig, Recovery};
use crate::ids::{ConnectionId, LobbyCode, UserId};
use crate::protocol::{ServerFrame, text};
use crate::request::LobbyFilter;
use crate::skip::Skip;
use crate::stats::{Census, Counters};

mod catch_up;
mod limits;
mod lobby;
mod presence;

use catch_up::PressureOut;
pub(crate) use catch_up::Shed;

use lobby::Lobby;
pub(crate) use presence::Notice;
pub(crate) use presence::PendingLeave;
use presence::{AppFeed, EventBatch};

/// Who a fan-out skips, resolved against this node: a [`Skip`] of one connection becomes its
/// sequence number (or nobody, when the connection is on another node).
#[derive(Debug, Clone, Copy)]
enum Exclude<'a> {
    Nobody,
    /// One connection (a client's `exclude_self`; the user's other tabs still receive).
    Connection(u64),
    /// Every connection of a user.
    User(&'a str),
}

impl Exclude<'_> {
    /// Whether a broadcast with this exclusion reaches `conn`.
    fn keeps(self, conn: &ConnHandle) -> bool {
        match self {
            Exclude::Nobody => true,
            Exclude::Connection(seq) => conn.seq != seq,
            Exclude::User(user) => conn.info.user_id.as_str() != user,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Hub {
    config: Arc<Config>,
    counters: Arc<Counters>,
    state: Mutex<Registry>,
    events: EventBatch,
    /// The manager's tracker: leave-grace timers and event flushes run on it.
    tracker: TaskTracker,
    /// Cancelled at shutdown: leave graces end at once.
    leave_graces: CancellationToken,
    /// Presence changes for the embedding app.
    feed: AppFeed,
    /// Tells the other nodes that this node's members of a lobby are behind (cluster mode).
    pressure_out: std::sync::OnceLock<PressureOut>,
    /// Holds broadcasts for `queue.write_delay`, when that is set.
    pacer: Option<Arc<crate::cork::Pacer>>,
}

/// Hashes the registry's own connection numbers (never a client's input, so no need for
/// SipHash's resistance to chosen keys): one multiplication (Fibonacci hashing), whose low bits
/// spread sequential numbers over the table and high bits fill hashbrown's tags.
#[derive(Debug, Default, Clone, Copy)]
struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SeqMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<SeqHasher>>;

#[derive(Debug, Default)]
struct Registry {
    conns: SeqMap<Entry>,
    users: HashMap<UserId, Vec<u64>>,
    lobbies: HashMap<LobbyCode, Lobby>,
    ips: HashMap<IpAddr, usize>,
    draining: bool,
    next_generation: u64,
    /// Connections in lobbies, counted over every lobby (a v2 connection counts once per
    /// lobby).
    memberships: usize,
    /// Offsets and recent broadcasts per lobby; outlives the lobby's members until its
    /// entries expire, so a client that was the last one out can still recover.
    histories: Histories,
    /// Counts publishes and departures, to sweep expired histories now and then.
    sweep_tick: u32,
    /// Lobbies whose members are behind on other nodes, until when (cluster mode): publishes
    /// to them are shed here too.
    pressed_elsewhere: HashMap<LobbyCode, std::time::Instant>,
}

/// What a connection is told about a lobby it is now in (v1: in `welcome`; v2: in `joined`).
#[derive(Debug)]
pub(crate) struct LobbyState<'a> {
    pub(crate) presence_events: bool,
    pub(crate) offset: u64,
    pub(crate) epoch: &'a str,
}

/// A lobby to join, with the recovery asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Join<'a> {
    pub(crate) lobby: &'a LobbyCode,
    pub(crate) recovery: Option<&'a Recovery>,
    /// Cluster mode: the lobby's numbering and kept broadcasts, read from the cluster.
    pub(crate) cluster_history: Option<&'a ClusterHistory>,
}

impl<'a> Join<'a> {
    /// A join with no recovery.
    pub(crate) fn new(lobby: &'a LobbyCode) -> Self {
        Self {
            lobby,
            recovery: None,
            cluster_history: None,
        }
    }
}

/// Why a v2 join was refused (the connection and its other lobbies are untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinRefused {
    /// The lobby has `limits.max_per_lobby` connections.
    LobbyFull,
    /// The connection is in `limits.max_lobbies_per_connection` lobbies.
    TooManyLobbies,
    /// The connection's credential does not allow this lobby.
    NotAllowed,
    /// The connection is gone (or the server is draining).
    Gone,
}

/// Why a connection is no longer in a lobby (the `left` frame's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeftReason {
    /// The client left.
    Left,
    /// The backend removed the user from the lobby (a server-side unsubscription).
    Removed,
    /// The backend kicked this connection out of the lobby.
    Kicked,
    /// A refreshed credential no longer allows the lobby.
    NotAllowed,
}

impl LeftReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Removed => "removed",
            Self::Kicked => "kicked",
            Self::NotAllowed => "not_allowed",
        }
    }
}

#[derive(Debug)]
struct Entry {
    conn: Arc<ConnHandle>,
    /// Its lobbies, each with its position in the lobby's member vector (inline for the one
    /// lobby of a v1 connection).
    lobbies: SmallVec<[Membership; 1]>,
    /// The lobbies its credential allows joining; `None`: any.
    allowed: Option<LobbyFilter>,
}

#[derive(Debug)]
struct Membership {
    lobby: LobbyCode,
    pos: usize,
}

impl Entry {
    fn position(&self, lobby: &str) -> Option<usize> {
        self.lobbies.iter().position(|m| m.lobby.as_str() == lobby)
    }
}

impl Hub {
    /// A registry; join/leave event flushes and leave graces run on `tracker`.
    pub(crate) fn new(config: Arc<Config>, counters: Arc<Counters>, tracker: TaskTracker) -> Self {
        Self {
            events: EventBatch::new(config.presence.events_batch, tracker.clone()),
            pacer: crate::cork::Pacer::new(config.write_delay, tracker.clone()),
            config,
            counters,
            state: Mutex::new(Registry::default()),
            tracker,
            leave_graces: CancellationToken::new(),
            feed: AppFeed::default(),
            pressure_out: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere must not take the whole server down with a poisoned lock; every
        // mutation below leaves the indexes consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves every limit and registers `conn` atomically, queueing `welcome` as its first
    /// frame, and joins it to `join`'s lobby if any (v1: always; the lobby's state is in
    /// `welcome`; v2: a `joined` follows). Under [`UserPolicy::Replace`] the user's older
    /// connections are removed and told to close with 4003 in the same step.
    pub(crate) fn register(
        &self,
        conn: Arc<ConnHandle>,
        join: Option<Join<'_>>,
        allowed: Option<LobbyFilter>,
        welcome: impl FnOnce(Option<LobbyState<'_>>) -> Message,
    ) -> Result<(), DisconnectReason> {
        let limits = self.config.limits;
        let mut guard = self.lock();
        let reg = &mut *guard;
        if reg.draining {
            return Err(DisconnectReason::ServerShutdown);
        }
        let info = &conn.info;
        let existing: Vec<u64> = reg.users.get(&info.user_id).cloned().unwrap_or_default();
        let replaced: &[u64] = match self.config.user_policy {
            UserPolicy::Replace => &existing,
            UserPolicy::Multi | UserPolicy::Reject => &[],
        };
        let freed = |pred: &dyn Fn(&Entry) -> bool| {
            replaced
                .iter()
                .filter(|seq| reg.conns.get(seq).is_some_and(pred))
                .count()
        };
        let ip_key = limits.ip_key(info.ip);
        let after = limits::After {
            total: reg.conns.len() - replaced.len() + 1,
            lobby: join.map_or(0, |j| {
                reg.lobbies.get(j.lobby).map_or(0, |l| l.members.len())
                    - freed(&|e| e.position(j.lobby.as_str()).is_some())
                    + 1
            }),
            user: existing.len() - replaced.len() + 1,
            ip: reg.ips.get(&ip_key).copied().unwrap_or(0)
                - freed(&|e| limits.ip_key(e.conn.info.ip) == ip_key)
                + 1,
        };
        limits::check(after, &limits, self.config.user_policy)?;

        // Commit. The new connection joins before the replaced ones leave, so a replacement in
        // the same lobby never shows a leave/join pair.
        reg.users
            .entry(info.user_id.clone())
            .or_default()
            .push(conn.seq);
        *reg.ips.entry(ip_key).or_default() += 1;
        reg.conns.insert(
            conn.seq,
            Entry {
                conn: conn.clone(),
                lobbies: SmallVec::new(),
                allowed,
            },
        );
        match join {
            // v1: the lobby's state goes in `welcome`.
            Some(join) if !conn.v2() => {
                self.join_locked(reg, &conn, join, |state| welcome(Some(state)))
            }
            join => {
                let offered = conn.offer(welcome(None));
                debug_assert_eq!(offered, Offer::Queued, "a new queue has room for welcome");
                if let Some(join) = join {
                    self.join_locked(reg, &conn, join, |state| joined(join.lobby, &state, None));
                }
            }
        }
        for &seq in replaced {
            if let Some((old, _)) = self.remove_locked(reg, seq, false) {
                old.close(DisconnectReason::Replaced);
            }
        }
        self.warn_near_capacity(reg, join.map(|j| j.lobby));
        Ok(())
    }

    /// Joins a registered v2 connection to a lobby, queueing `joined` (with `id`), the replay
    /// it asked for and `recovered`, before anything live from the lobby. Joining a lobby it
    /// is already in answers `joined` again, with no replay.
    pub(crate) fn join(
        &self,
        seq: u64,
        join: Join<'_>,
        id: Option<&RawValue>,
    ) -> Result<(), JoinRefused> {
        let mut guard = self.lock();
        let reg = &mut *guard;
        let already_in = self.check_join(reg, seq, join.lobby)?;
        let conn = reg.conns[&seq].conn.clone();
        if already_in {
            let config = &self.config.history;
            let lobby = &reg.lobbies[join.lobby];
            let presence_events = self.events_on(lobby);
            let frame = reg.histories.update(join.lobby, config, |history, _| {
                let state = LobbyState {
                    presence_events,
                    offset: history.last,
                    epoch: &history.epoch,
                };
                joined(join.lobby, &state, id)
            });
            self.deliver(&conn, frame);
            return Ok(());
        }
        let members = reg.lobbies.get(join.lobby).map_or(0, |l| l.members.len());
        if members >= self.config.limits.max_per_lobby {
            return Err(JoinRefused::LobbyFull);
        }
        self.join_locked(reg, &conn, join, |state| joined(join.lobby, &state, id));
        self.warn_near_capacity(reg, Some(join.lobby));
        Ok(())
    }

    /// Adds a registered connection to a lobby (its limits already checked): queues `first`
    /// (built from the lobby's state), then the replay asked for and `recovered`, and
    /// announces the user if new there. Replay and live traffic meet under this lock.
    fn join_locked(
        &self,
        reg: &mut Registry,
        conn: &Arc<ConnHandle>,
        join: Join<'_>,
        first: impl FnOnce(LobbyState<'_>) -> Message,
    ) {
        let lobby = reg.lobbies.entry(join.lobby.clone()).or_default();
        let (pos, change) = lobby.add(conn.clone());
        let presence_events = self.events_on(lobby);
        let config = &self.config.history;
        let replayed = reg.histories.update(join.lobby, config, |history, _| {
            if let Some(cluster) = join.cluster_history {
                history.follow(&cluster.epoch, cluster.last);
            }
            // Queued even on a full queue's last slot: `effective_queue_capacity` leaves room
            // for a first frame and a whole replay.
            conn.offer(first(LobbyState {
                presence_events,
                offset: history.last,
                epoch: &history.epoch,
            }));
            join.recovery.map_or(0, |recovery| {
                queue_replay(
                    conn,
                    join.lobby,
                    history,
                    recovery,
                    join.cluster_history,
                    config,
                )
            })
        });
        lobby.replayed_until[pos] = replayed;
        self.announce(join.lobby, lobby, change, conn);
        reg.memberships += 1;
        if let Some(entry) = reg.conns.get_mut(&conn.seq) {
            entry.lobbies.push(Membership {
                lobby: join.lobby.clone(),
                pos,
            });
        }
    }

    /// Whether a connection could join `lobby` as far as this node alone can tell: `Ok(true)`
    /// when it is in it already, `Ok(false)` when its credential and its number of lobbies
    /// allow it (the lobby's cap is the cluster's to check).
    pub(crate) fn may_join(&self, seq: u64, lobby: &LobbyCode) -> Result<bool, JoinRefused> {
        self.check_join(&self.lock(), seq, lobby)
    }

    /// The checks of a join that need nothing but the connection's entry: gone or draining,
    /// already in (`Ok(true)`), the credential's lobbies, the lobbies per connection.
    fn check_join(&self, reg: &Registry, seq: u64, lobby: &LobbyCode) -> Result<bool, JoinRefused> {
        let entry = reg
            .conns
            .get(&seq)
            .filter(|_| !reg.draining)
            .ok_or(JoinRefused::Gone)?;
        if entry.position(lobby.as_str()).is_some() {
            return Ok(true);
        }
        if entry
            .allowed
            .as_ref()
            .is_some_and(|a| !a.allows(lobby.as_str()))
        {
            return Err(JoinRefused::NotAllowed);
        }
        if entry.lobbies.len() >= self.config.limits.max_lobbies_per_connection {
            return Err(JoinRefused::TooManyLobbies);
        }
        Ok(false)
    }

    /// Takes a v2 connection out of a lobby, queueing (with `reply`) `left` with `reason`
    /// (and `id`) after everything it was sent from there. Returns whether it was in the
    /// lobby. A client's own `leave` is answered either way (leaving is idempotent); the
    /// server's `left` goes only to a connection that was in the lobby.
    pub(crate) fn leave_lobby(
        &self,
        seq: u64,
        lobby: &LobbyCode,
        reason: LeftReason,
        id: Option<&RawValue>,
        reply: bool,
    ) -> bool {
        let mut guard = self.lock();
        let reg = &mut *guard;
        let Some(entry) = reg.conns.get_mut(&seq) else {
            return false;
        };
        let conn = entry.conn.clone();
        let was_in = match entry.position(lobby.as_str()) {
            Some(i) => {
                let Membership { pos, .. } = entry.lobbies.swap_remove(i);
                self.remove_membership(reg, &conn, lobby, pos, None);
                true
            }
            None => false,
        };
        // A client's `leave` is answered either way; the server's own `left` only when the
        // connection was in the lobby.
        if reply && (was_in || reason == LeftReason::Left) {
            let frame = ServerFrame::Left {
                lobby,
                reason: reason.as_str(),
                id,
            };
            self.deliver(&conn, text(frame.encode()));
        }
        was_in
    }

    /// Removes `conn` from `lobby`'s members at `pos` (its entry already forgot the lobby):
    /// fixes the position of the member moved there, announces a leave (or starts its grace
    /// when `generation` is set) and forgets a lobby left empty.
    fn remove_membership(
        &self,
        reg: &mut Registry,
        conn: &ConnHandle,
        code: &LobbyCode,
        pos: usize,
        generation: Option<u64>,
    ) {
        let Some(lobby) = reg.lobbies.get_mut(code) else {
            return;
        };
        reg.memberships -= 1;
        if lobby.lag[pos].is_behind() {
            self.counters.lagging(false);
        }
        let (moved, change) = lobby.remove(pos, generation);
        self.announce(code, lobby, change, conn);
        if lobby.is_empty() {
            reg.lobbies.remove(code);
            reg.histories.remove_if_empty(code);
        }
        if let Some(entry) = moved.and_then(|m| reg.conns.get_mut(&m.seq))
            && let Some(i) = entry.position(code.as_str())
        {
            entry.lobbies[i].pos = pos;
        }
    }

    /// The lobbies a connection is in, in the order it joined them (the last one moved when
    /// it left one).
    pub(crate) fn lobbies_of(&self, seq: u64) -> Vec<LobbyCode> {
        let reg = self.lock();
        reg.conns.get(&seq).map_or_else(Vec::new, |e| {
            e.lobbies.iter().map(|m| m.lobby.clone()).collect()
        })
    }

    /// The lobby a client frame means: the one it names, which the connection must be in, or
    /// its only lobby when it names none. `Err(true)`: it named one it is not in;
    /// `Err(false)`: it named none and is not in exactly one.
    pub(crate) fn lobby_of(&self, seq: u64, named: Option<&LobbyCode>) -> Result<LobbyCode, bool> {
        let reg = self.lock();
        let entry = reg.conns.get(&seq).ok_or(true)?;
        match named {
            Some(lobby) => entry
                .position(lobby.as_str())
                .map(|_| lobby.clone())
                .ok_or(true),
            None => match entry.lobbies.as_slice() {
                [only] => Ok(only.lobby.clone()),
                _ => Err(false),
            },
        }
    }

    /// Replaces a connection's allowed lobbies (a refreshed credential), and returns the
    /// lobbies it is in that the new ones no longer allow.
    pub(crate) fn set_allowed(&self, seq: u64, allowed: Option<LobbyFilter>) -> Vec<LobbyCode> {
        let mut reg = self.lock();
        let Some(entry) = reg.conns.get_mut(&seq) else {
            return Vec::new();
        };
        let refused = allowed.as_ref().map_or_else(Vec::new, |filter| {
            entry
                .lobbies
                .iter()
                .filter(|m| !filter.allows(m.lobby.as_str()))
                .map(|m| m.lobby.clone())
                .collect()
        });
        entry.allowed = allowed;
        refused
    }

    /// Logs when a connect takes the server or its lobby past `capacity_warn_percent`.
    fn warn_near_capacity(&self, reg: &Registry, lobby: Option<&LobbyCode>) {
        let limits = &self.config.limits;
        if self.crosses_warning(reg.conns.len(), limits.max_connections) {
            tracing::warn!(
                connections = reg.conns.len(),
                max = limits.max_connections,
                "capacity: connections above the warning threshold"
            );
        }
        let Some(lobby) = lobby else {
            return;
        };
        let members = reg.lobbies.get(lobby).map_or(0, |l| l.members.len());
        if self.crosses_warning(members, limits.max_per_lobby) {
            tracing::warn!(%lobby, members, max = limits.max_per_lobby, "capacity: lobby above the warning threshold");
        }
    }

    /// Whether `count` just reached `capacity_warn_percent` of `max` (warned once per crossing).
    fn crosses_warning(&self, count: usize, max: usize) -> bool {
        let percent = usize::from(self.config.capacity_warn_percent);
        percent > 0 && count == (max * percent).div_ceil(100).max(1)
    }

    /// A connection ended: removes it from every index and times its user's leave graces, if
    /// any.
    pub(crate) fn leave(self: &Arc<Self>, seq: u64) {
        for pending in self.unregister(seq) {
            self.time_leave(pending);
        }
    }

    /// Removes a connection from every index. Idempotent: a connection already removed (by a
    /// replacement) is left alone. Returns the leaves that wait for their grace (one per lobby
    /// where it was its user's last connection).
    pub(crate) fn unregister(&self, seq: u64) -> Vec<PendingLeave> {
        let mut reg = self.lock();
        let grace = !self.config.presence.leave_grace.is_zero();
        let Some((conn, lobbies)) = self.remove_locked(&mut reg, seq, grace) else {
            return Vec::new();
        };
        let user = &conn.info.user_id;
        lobbies
            .into_iter()
            .filter_map(|lobby| {
                let generation = reg.lobbies.get(&lobby)?.presence.leaving(user)?;
                Some(PendingLeave {
                    lobby,
                    user: user.clone(),
                    generation,
                    local_presence: !conn.cluster_presence,
                })
            })
            .collect()
    }

    /// Removes a connection from every index and every lobby; returns it and its lobbies.
    fn remove_locked(
        &self,
        reg: &mut Registry,
        seq: u64,
        grace: bool,
    ) -> Option<(Arc<ConnHandle>, Vec<LobbyCode>)> {
        let Entry { conn, lobbies, .. } = reg.conns.remove(&seq)?;
        let info = &conn.info;
        if let Some(seqs) = reg.users.get_mut(&info.user_id) {
            seqs.retain(|&s| s != seq);
            if seqs.is_empty() {
                reg.users.remove(&info.user_id);
            }
        }
        let ip_key = self.config.limits.ip_key(info.ip);
        if let Some(count) = reg.ips.get_mut(&ip_key) {
            *count -= 1;
            if *count == 0 {
                reg.ips.remove(&ip_key);
            }
        }
        let mut left = Vec::with_capacity(lobbies.len());
        for Membership { lobby, pos } in lobbies {
            let generation = grace.then(|| {
                reg.next_generation += 1;
                reg.next_generation
            });
            self.remove_membership(reg, &conn, &lobby, pos, generation);
            left.push(lobby);
        }
        Some((conn, left))
    }

    /// Publishes a broadcast to a lobby: numbers it (unless the cluster did), keeps it in the
    /// lobby's history and offers it to every member `skip` leaves in, except connections
    /// whose recovery already replayed it, and members behind (they get it from the history
    /// once they caught up). The one publish path, alone or in a cluster. Returns how many
    /// queued it and its offset; [`Shed`] when a broadcast numbered here finds its lobby's
    /// members behind (one the cluster numbered is always delivered).
    pub(crate) fn publish(
        &self,
        code: &LobbyCode,
        broadcast: Broadcast<'_>,
        skip: Skip<'_>,
    ) -> Result<(usize, u64), Shed> {
        let started = std::time::Instant::now();
        // Members are written to or woken when this ends, after the registry's lock (or with
        // the batch this publish is part of).
        let _batch = crate::cork::cork();
        let exclude = self.exclude(skip);
        // A broadcast numbered here is numbered under this lock, after any replay; one the
        // cluster numbered may arrive after a recovery that already replayed it.
        let numbered_elsewhere = matches!(broadcast, Broadcast::Numbered { .. });
        let reached = {
            let mut guard = self.lock();
            let reg = &mut *guard;
            if !numbered_elsewhere && self.pressed_locked(reg, code) {
                self.counters.shed_publish();
                return Err(Shed);
            }
            self.maybe_sweep(reg);
            let config = &self.config.history;
            let (offset, frame) = reg.histories.update(code, config, |history, seq| {
                history.publish(broadcast, config, seq)
            });
            let Some(lobby) = reg.lobbies.get_mut(code) else {
                return Ok((0, offset));
            };
            let mut reached = 0;
            let delivery = crate::cork::delivery(self.pacer.as_ref());
            for pos in 0..lobby.members.len() {
                if numbered_elsewhere && lobby.replayed_until[pos] >= offset {
                    continue;
                }
                let conn = &lobby.members[pos];
                if !exclude.keeps(conn) {
                    continue;
                }
                if lobby.lagging > 0 && lobby.lag[pos].is_behind() {
                    self.still_behind(conn);
                    continue;
                }
                match delivery.offer(conn, frame.clone()) {
                    Offer::Queued => reached += 1,
                    Offer::Closed => {}
                    Offer::Full => {
                        if let Some(lag) = self.fell_behind(conn, offset) {
                            self.set_lag(lobby, pos, lag);
                        }
                    }
                }
            }
            if lobby.reading_behind() {
                let _ = self.tell_pressure(code, lobby);
            }
            (reached, offset)
        };
        self.counters.fanout.record(started.elapsed().as_secs_f64());
        Ok(reached)
    }

    /// How many members of a lobby a broadcast skipping `skip` would reach now.
    pub(crate) fn count_recipients(&self, lobby: &str, skip: Skip<'_>) -> usize {
        let exclude = self.exclude(skip);
        let reg = self.lock();
        reg.lobbies
            .get(lobby)
            .map_or(0, |l| l.members.iter().filter(|c| exclude.keeps(c)).count())
    }

    /// Resolves a [`Skip`] against this node's connections.
    fn exclude<'a>(&self, skip: Skip<'a>) -> Exclude<'a> {
        match skip {
            Skip::Nobody => Exclude::Nobody,
            Skip::User(user) => Exclude::User(user),
            Skip::Connection(id) => ConnectionId::seq_on(id, &self.config.node_id)
                .map_or(Exclude::Nobody, Exclude::Connection),
        }
    }

    /// Every so often, forgets histories that expired in lobbies nobody is in.
    fn maybe_sweep(&self, reg: &mut Registry) {
        reg.sweep_tick = reg.sweep_tick.wrapping_add(1);
        if !reg.sweep_tick.is_multiple_of(1024) {
            return;
        }
        let lobbies = &reg.lobbies;
        reg.histories
            .sweep(&self.config.history, |code| lobbies.contains_key(code));
    }

    /// Offers one encoded frame to every connection of a user. Returns how many queued it.
    pub(crate) fn send_to_user(&self, user: &str, frame: &Message) -> usize {
        let reg = self.lock();
        let Some(seqs) = reg.users.get(user) else {
            return 0;
        };
        // Several tabs share one frame (compressed once, if at all).
        let frame = if seqs.len() > 1 {
            Outgoing::shared(frame.clone())
        } else {
            Outgoing::Own(frame.clone())
        };
        seqs.iter()
            .filter_map(|seq| reg.conns.get(seq))
            .filter(|e| self.deliver(&e.conn, frame.clone()) == Offer::Queued)
            .count()
    }

    /// Offers a frame to one connection, applying the slow-consumer policy when it is full:
    /// the frame is dropped, and the connection closed if its socket has stopped taking bytes
    /// for longer than the grace.
    pub(crate) fn deliver(&self, conn: &ConnHandle, frame: impl Into<Outgoing>) -> Offer {
        let offer = conn.offer(frame);
        if offer == Offer::Full {
            match self.config.on_full {
                SlowConsumerPolicy::Drop => self.counters.overflow(true),
                SlowConsumerPolicy::Close => {
                    if !self.close_if_stuck(conn) {
                        self.counters.shed_delivery();
                    }
                }
            }
        }
        offer
    }

    pub(crate) fn connection(&self, seq: u64) -> Option<Arc<ConnHandle>> {
        self.lock().conns.get(&seq).map(|e| e.conn.clone())
    }

    /// The connection a `NODE-SEQ` id names, if this node minted it and it is still here.
    pub(crate) fn connection_by_id(&self, id: &str) -> Option<Arc<ConnHandle>> {
        self.connection(ConnectionId::seq_on(id, &self.config.node_id)?)
    }

    pub(crate) fn user_connections(&self, user: &str) -> Vec<Arc<ConnHandle>> {
        let reg = self.lock();
        reg.users
            .get(user)
            .map(|seqs| {
                seqs.iter()
                    .filter_map(|s| reg.conns.get(s))
                    .map(|e| e.conn.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Lobbies with their connection and user counts.
    pub(crate) fn lobbies(&self) -> Vec<(LobbyCode, usize, usize)> {
        let reg = self.lock();
        let mut list: Vec<_> = reg
            .lobbies
            .iter()
            .map(|(code, l)| (code.clone(), l.members.len(), l.presence.len()))
            .collect();
        list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        list
    }

    pub(crate) fn census(&self) -> Census {
        let reg = self.lock();
        Census {
            connections: reg.conns.len(),
            lobbies: reg.lobbies.len(),
            users: reg.users.len(),
            history_bytes: reg.histories.bytes(),
            memberships: reg.memberships,
        }
    }

    /// Refuses every later registration and returns every current connection.
    pub(crate) fn start_draining(&self) -> Vec<Arc<ConnHandle>> {
        let mut reg = self.lock();
        reg.draining = true;
        reg.conns.values().map(|e| e.conn.clone()).collect()
    }

    /// Checks that every index agrees with every other (tests and debug builds).
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let reg = self.lock();
        let mut ips: HashMap<IpAddr, usize> = HashMap::new();
        let mut users: HashMap<&UserId, usize> = HashMap::new();
        for (seq, entry) in &reg.conns {
            for m in &entry.lobbies {
                let lobby = &reg.lobbies[&m.lobby];
                assert_eq!(lobby.members[m.pos].seq, *seq, "position of {seq}");
            }
            assert!(reg.users[&entry.conn.info.user_id].contains(seq));
            *ips.entry(self.config.limits.ip_key(entry.conn.info.ip))
                .or_default() += 1;
            *users.entry(&entry.conn.info.user_id).or_default() += 1;
        }
        assert_eq!(ips, reg.ips, "ip counts");
        assert_eq!(users.len(), reg.users.len(), "user index");
        let members: usize = reg.lobbies.values().map(|l| l.members.len()).sum();
        let memberships: usize = reg.conns.values().map(|e| e.lobbies.len()).sum();
        assert_eq!(members, memberships, "lobby members");
        assert_eq!(members, reg.memberships, "membership count");
        for lobby in reg.lobbies.values() {
            assert!(!lobby.is_empty());
            assert_eq!(lobby.presence.conns() as usize, lobby.members.len());
            assert_eq!(lobby.replayed_until.len(), lobby.members.len());
            assert_eq!(lobby.lag.len(), lobby.members.len());
            let behind = lobby.lag.iter().filter(|l| l.is_behind()).count();
            assert_eq!(lobby.lagging, behind);
        }
        let behind: usize = reg.lobbies.values().map(|l| l.lagging).sum();
        let counted = self
            .counters
            .lagging
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(behind as u64, counted, "lagging members");
    }
}

/// Queues the replay a reconnecting connection asked for in `lobby` (from this node's ring,
/// and in cluster mode the cluster's kept broadcasts), then `recovered` with whether it was
/// complete. Returns the last offset replayed (0: none).
fn queue_replay(
    conn: &ConnHandle,
    lobby: &LobbyCode,
    history: &mut History,
    recovery: &Recovery,
    cluster_history: Option<&ClusterHistory>,
    config: &HistoryConfig,
) -> u64 {
    let replay = history.replay(recovery, cluster_history, config);
    let ok = replay.is_some();
    let mut last = 0;
    for (offset, frame) in replay.unwrap_or_default() {
        last = offset;
        conn.offer(frame);
    }
    let lobby = conn.v2().then_some(lobby);
    conn.offer(text(ServerFrame::Recovered { lobby, ok }.encode()));
    last
}

/// The v2 `joined` frame for a lobby's state.
fn joined(lobby: &LobbyCode, state: &LobbyState<'_>, id: Option<&RawValue>) -> Message {
    text(
        ServerFrame::Joined {
            lobby,
            offset: state.offset,
            epoch: state.epoch,
            presence_events: state.presence_events,
            id,
        }
        .encode(),
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "proptest.rs"]
mod proptests;

#[cfg(test)]
#[path = "memberships_proptest.rs"]
mod memberships_proptests;
