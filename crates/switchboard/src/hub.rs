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
use tokio_util::task::TaskTracker;

use crate::config::{Config, SlowConsumerPolicy, UserPolicy};
use crate::disconnect::DisconnectReason;
use crate::event_batch::EventBatch;
use crate::handle::{ConnHandle, Offer};
use crate::history::{Broadcast, ClusterHistory, Histories, History, HistoryConfig, Recovery};
use crate::ids::{ConnectionId, LobbyCode, UserId};
use crate::lobby::{Lobby, PresenceChange};
use crate::protocol::{ServerFrame, text};
use crate::skip::Skip;
use crate::stats::{Census, Counters};

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

/// A leave grace that must be timed by the caller: call [`Hub::expire_leave`] after the grace.
#[derive(Debug)]
pub(crate) struct PendingLeave {
    pub(crate) lobby: LobbyCode,
    pub(crate) user: UserId,
    pub(crate) generation: u64,
}

#[derive(Debug)]
pub(crate) struct Hub {
    config: Arc<Config>,
    counters: Arc<Counters>,
    state: Mutex<Registry>,
    events: EventBatch,
}

#[derive(Debug, Default)]
struct Registry {
    conns: HashMap<u64, Entry>,
    users: HashMap<UserId, Vec<u64>>,
    lobbies: HashMap<LobbyCode, Lobby>,
    ips: HashMap<IpAddr, usize>,
    draining: bool,
    next_generation: u64,
    /// Offsets and recent broadcasts per lobby; outlives the lobby's members until its
    /// entries expire, so a client that was the last one out can still recover.
    histories: Histories,
    /// Counts publishes and departures, to sweep expired histories now and then.
    sweep_tick: u32,
}

/// What `welcome` tells a new connection about its lobby.
#[derive(Debug)]
pub(crate) struct WelcomeState<'a> {
    pub(crate) presence_events: bool,
    pub(crate) offset: u64,
    pub(crate) epoch: &'a str,
}

#[derive(Debug)]
struct Entry {
    conn: Arc<ConnHandle>,
    /// Position in its lobby's member vector.
    pos: usize,
}

impl Hub {
    /// A registry; join/leave event flushes run on `tracker`.
    pub(crate) fn new(config: Arc<Config>, counters: Arc<Counters>, tracker: TaskTracker) -> Self {
        Self {
            events: EventBatch::new(config.presence.events_batch, tracker),
            config,
            counters,
            state: Mutex::new(Registry::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere must not take the whole server down with a poisoned lock; every
        // mutation below leaves the indexes consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves every limit and registers `conn` atomically, queueing `welcome` as its first
    /// frame. Under [`UserPolicy::Replace`] the user's older connections are removed and told
    /// to close with 4003 in the same step.
    pub(crate) fn register(
        &self,
        conn: Arc<ConnHandle>,
        welcome: impl FnOnce(WelcomeState<'_>) -> Message,
        recovery: Option<&Recovery>,
        cluster_history: Option<&ClusterHistory>,
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
        let freed = |pred: &dyn Fn(&ConnHandle) -> bool| {
            replaced
                .iter()
                .filter(|seq| reg.conns.get(seq).is_some_and(|e| pred(&e.conn)))
                .count()
        };
        let ip_key = limits.ip_key(info.ip);
        let after = crate::limits::After {
            total: reg.conns.len() - replaced.len() + 1,
            lobby: reg.lobbies.get(&info.lobby).map_or(0, |l| l.members.len())
                - freed(&|c| c.info.lobby == info.lobby)
                + 1,
            user: existing.len() - replaced.len() + 1,
            ip: reg.ips.get(&ip_key).copied().unwrap_or(0)
                - freed(&|c| limits.ip_key(c.info.ip) == ip_key)
                + 1,
        };
        crate::limits::check(after, &limits, self.config.user_policy)?;

        // Commit. The new connection joins before the replaced ones leave, so a replacement in
        // the same lobby never shows a leave/join pair.
        let lobby = reg.lobbies.entry(info.lobby.clone()).or_default();
        let (pos, change) = lobby.add(conn.clone());
        let presence_events = self.events_on(lobby);
        let config = &self.config.history;
        reg.histories.update(&info.lobby, config, |history, _| {
            if let Some(cluster) = cluster_history {
                history.follow(&cluster.epoch, cluster.last);
            }
            let offered = conn.offer(welcome(WelcomeState {
                presence_events,
                offset: history.last,
                epoch: &history.epoch,
            }));
            debug_assert_eq!(offered, Offer::Queued, "a new queue has room for welcome");
            // Replay before the connection can see anything live: both happen under this lock.
            if let Some(recovery) = recovery {
                queue_replay(&conn, history, recovery, cluster_history, config);
            }
        });
        if change == PresenceChange::Joined && !conn.cluster_presence {
            self.announce(
                lobby,
                conn.seq,
                |lobby, user_id| ServerFrame::MemberJoined { lobby, user_id },
                info,
            );
        }
        reg.users
            .entry(info.user_id.clone())
            .or_default()
            .push(conn.seq);
        *reg.ips.entry(ip_key).or_default() += 1;
        reg.conns.insert(
            conn.seq,
            Entry {
                conn: conn.clone(),
                pos,
            },
        );
        for &seq in replaced {
            if let Some(old) = self.remove_locked(reg, seq, false) {
                old.close(DisconnectReason::Replaced);
            }
        }
        self.warn_near_capacity(reg, &info.lobby);
        Ok(())
    }

    /// Logs when a connect takes the server or its lobby past `capacity_warn_percent`.
    fn warn_near_capacity(&self, reg: &Registry, lobby: &LobbyCode) {
        let limits = &self.config.limits;
        if self.crosses_warning(reg.conns.len(), limits.max_connections) {
            tracing::warn!(
                connections = reg.conns.len(),
                max = limits.max_connections,
                "capacity: connections above the warning threshold"
            );
        }
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

    /// Removes a connection from every index. Idempotent: a connection already removed (by a
    /// replacement) is left alone. Returns a leave that waits for its grace, if any.
    pub(crate) fn unregister(&self, seq: u64) -> Option<PendingLeave> {
        let mut reg = self.lock();
        let grace = !self.config.presence.leave_grace.is_zero();
        let conn = self.remove_locked(&mut reg, seq, grace)?;
        let lobby = reg.lobbies.get(&conn.info.lobby)?;
        let presence = lobby.users.get(&conn.info.user_id)?;
        presence.leaving.map(|generation| PendingLeave {
            lobby: conn.info.lobby.clone(),
            user: conn.info.user_id.clone(),
            generation,
        })
    }

    fn remove_locked(&self, reg: &mut Registry, seq: u64, grace: bool) -> Option<Arc<ConnHandle>> {
        let Entry { conn, pos } = reg.conns.remove(&seq)?;
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
        let generation = grace.then(|| {
            reg.next_generation += 1;
            reg.next_generation
        });
        if let Some(lobby) = reg.lobbies.get_mut(&info.lobby) {
            let (moved, change) = lobby.remove(pos, generation);
            if change == PresenceChange::Left && !conn.cluster_presence {
                self.announce(
                    lobby,
                    seq,
                    |lobby, user_id| ServerFrame::MemberLeft { lobby, user_id },
                    info,
                );
            }
            if lobby.is_empty() {
                reg.lobbies.remove(&info.lobby);
                reg.histories.remove_if_empty(&info.lobby);
            }
            if let Some(entry) = moved.and_then(|m| reg.conns.get_mut(&m.seq)) {
                entry.pos = pos;
            }
        }
        Some(conn)
    }

    /// Ends a leave grace: if the user has not come back, they leave now.
    pub(crate) fn expire_leave(&self, pending: &PendingLeave) {
        let mut reg = self.lock();
        let Some(lobby) = reg.lobbies.get_mut(&pending.lobby) else {
            return;
        };
        if lobby.expire_leave(&pending.user, pending.generation) {
            let user_id = &pending.user;
            if self.events_on(lobby) {
                let frame = text(
                    ServerFrame::MemberLeft {
                        lobby: &pending.lobby,
                        user_id,
                    }
                    .encode(),
                );
                self.fan_out_events(&lobby.members, &frame, Exclude::Nobody);
            }
            if lobby.is_empty() {
                reg.lobbies.remove(&pending.lobby);
            }
        }
    }

    /// Sends a join/leave event about `info`'s user to the lobby, if events are on there.
    fn announce(
        &self,
        lobby: &Lobby,
        skip: u64,
        frame: impl for<'a> Fn(&'a LobbyCode, &'a UserId) -> ServerFrame<'a>,
        info: &crate::ConnectionInfo,
    ) {
        if self.events_on(lobby) {
            let encoded = text(frame(&info.lobby, &info.user_id).encode());
            self.fan_out_events(&lobby.members, &encoded, Exclude::Connection(skip));
        }
    }

    /// Offers a join/leave event to members. A member whose queue is full does not lose its
    /// connection over it (a join storm would otherwise close a whole lobby): the event is
    /// dropped and the member is marked behind, and its writer sends a fresh `presence` list
    /// once it has caught up.
    fn fan_out_events(
        &self,
        members: &[Arc<ConnHandle>],
        frame: &Message,
        exclude: Exclude<'_>,
    ) -> usize {
        members
            .iter()
            .filter(|c| exclude.keeps(c))
            .filter(|c| match self.events.offer(c, frame.clone()) {
                Offer::Queued => true,
                Offer::Closed => false,
                Offer::Full => {
                    c.presence_behind
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    self.counters.overflow(true);
                    false
                }
            })
            .count()
    }

    /// Offers a presence event from another node to this node's members of a lobby.
    pub(crate) fn broadcast_event(&self, lobby: &str, frame: &Message) -> usize {
        let reg = self.lock();
        reg.lobbies.get(lobby).map_or(0, |l| {
            self.fan_out_events(&l.members, frame, Exclude::Nobody)
        })
    }

    /// Whether join/leave events are sent in this lobby right now.
    pub(crate) fn events_on(&self, lobby: &Lobby) -> bool {
        let presence = &self.config.presence;
        presence.events && lobby.users.len() <= presence.events_max_members
    }

    /// Publishes a broadcast to a lobby: numbers it (unless the cluster did), keeps it in the
    /// lobby's history and offers it to every member `skip` leaves in, except connections
    /// whose recovery already replayed it. The one publish path, alone or in a cluster.
    /// Returns how many queued it.
    pub(crate) fn publish(
        &self,
        lobby: &LobbyCode,
        broadcast: Broadcast<'_>,
        skip: Skip<'_>,
    ) -> usize {
        let started = std::time::Instant::now();
        let exclude = self.exclude(skip);
        // A broadcast numbered here is numbered under this lock, after any replay; one the
        // cluster numbered may arrive after a recovery that already replayed it.
        let numbered_elsewhere = matches!(broadcast, Broadcast::Numbered { .. });
        let reached = {
            let mut guard = self.lock();
            let reg = &mut *guard;
            self.maybe_sweep(reg);
            let config = &self.config.history;
            let (offset, frame) = reg.histories.update(lobby, config, |history, seq| {
                history.publish(broadcast, config, seq)
            });
            let Some(lobby) = reg.lobbies.get(lobby) else {
                return 0;
            };
            lobby
                .members
                .iter()
                .filter(|c| {
                    !numbered_elsewhere
                        || c.replayed_until.load(std::sync::atomic::Ordering::Relaxed) < offset
                })
                .filter(|c| exclude.keeps(c))
                .filter(|c| self.deliver(c, frame.clone()) == Offer::Queued)
                .count()
        };
        self.counters.fanout.record(started.elapsed().as_secs_f64());
        reached
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
        seqs.iter()
            .filter_map(|seq| reg.conns.get(seq))
            .filter(|e| self.deliver(&e.conn, frame.clone()) == Offer::Queued)
            .count()
    }

    /// Offers a frame to one connection, applying the slow-consumer policy when it is full.
    pub(crate) fn deliver(&self, conn: &ConnHandle, frame: Message) -> Offer {
        let offer = conn.offer(frame);
        if offer == Offer::Full {
            let drop = self.config.on_full == SlowConsumerPolicy::Drop;
            if !drop {
                conn.close(DisconnectReason::SlowConsumer);
            }
            self.counters.overflow(drop);
        }
        offer
    }

    /// The users of a lobby, sorted; `None` when the lobby has nobody.
    pub(crate) fn presence(&self, lobby: &LobbyCode) -> Vec<UserId> {
        let reg = self.lock();
        reg.lobbies
            .get(lobby)
            .map(|l| l.user_list().into_iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Encodes a `presence` answer under the lock, without copying the user list.
    pub(crate) fn presence_frame(&self, lobby: &LobbyCode) -> Message {
        let reg = self.lock();
        let users = reg.lobbies.get(lobby).map_or_else(Vec::new, |l| {
            l.user_list().into_iter().map(UserId::as_str).collect()
        });
        text(ServerFrame::Presence { lobby, users }.encode())
    }

    pub(crate) fn connection(&self, seq: u64) -> Option<Arc<ConnHandle>> {
        self.lock().conns.get(&seq).map(|e| e.conn.clone())
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
            .map(|(code, l)| (code.clone(), l.members.len(), l.users.len()))
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
            let lobby = &reg.lobbies[&entry.conn.info.lobby];
            assert_eq!(lobby.members[entry.pos].seq, *seq, "position of {seq}");
            assert!(reg.users[&entry.conn.info.user_id].contains(seq));
            *ips.entry(self.config.limits.ip_key(entry.conn.info.ip))
                .or_default() += 1;
            *users.entry(&entry.conn.info.user_id).or_default() += 1;
        }
        assert_eq!(ips, reg.ips, "ip counts");
        assert_eq!(users.len(), reg.users.len(), "user index");
        let members: usize = reg.lobbies.values().map(|l| l.members.len()).sum();
        assert_eq!(members, reg.conns.len(), "lobby members");
        for lobby in reg.lobbies.values() {
            assert!(!lobby.is_empty());
            let counted: u32 = lobby.users.values().map(|p| p.conns).sum();
            assert_eq!(counted as usize, lobby.members.len());
        }
    }
}

/// Queues the replay a reconnecting connection asked for (from this node's ring, and in cluster
/// mode the cluster's kept broadcasts), then `recovered` with whether it was complete.
fn queue_replay(
    conn: &ConnHandle,
    history: &mut History,
    recovery: &Recovery,
    cluster_history: Option<&ClusterHistory>,
    config: &HistoryConfig,
) {
    let replay = history.replay(recovery, cluster_history, config);
    let ok = replay.is_some();
    for (offset, frame) in replay.unwrap_or_default() {
        conn.replayed_until
            .store(offset, std::sync::atomic::Ordering::Relaxed);
        conn.offer(frame);
    }
    conn.offer(text(ServerFrame::Recovered { ok }.encode()));
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "hub_proptest.rs"]
mod proptests;
