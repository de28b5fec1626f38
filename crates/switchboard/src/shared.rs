//! [`Shared`]: the state the manager handle and every connection task share (config, the
//! registry, counters, the task tracker, the cluster), and the routing
//! decisions made on it. This is the one place that decides "this node or the cluster": the
//! publish path, sends to a user, admission and release, presence and lobby lists, closes and
//! SSE posts for other nodes. Also the connect rate and the ping clock.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::Message;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::cluster::{Admission, Cluster, ClusterLobby, ClusterStats, Published};
use crate::config::Config;
use crate::disconnect::DisconnectReason;
use crate::error::{Error, SsePostError};
use crate::handle::{ConnHandle, ConnectionInfo};
use crate::history::{Broadcast, ClusterHistory};
use crate::hub::{Hub, Join, JoinRefused, LeftReason};
use crate::ids::LobbyCode;
use crate::protocol::{ClientError, ErrorCode, ServerFrame, frame_text, text};
use crate::skip::Skip;
use crate::stats::Counters;

/// State shared by the manager handle and every connection task.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) counters: Arc<Counters>,
    /// Every connection and writer task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    next_seq: AtomicU64,
    /// When the manager started: the origin of the ping stamps and rate windows (not the
    /// history's `epoch`, which names a lobby's numbering).
    started: Instant,
    /// New connections per IP per second, if limited.
    connect_rate: Option<ConnectRate>,
    /// The other nodes, once attached.
    cluster: OnceLock<Arc<dyn Cluster>>,
}

/// What a publish did on this node.
#[derive(Debug)]
pub(crate) struct Publication {
    /// This node's connections it was queued for.
    pub(crate) reached: usize,
    /// The offset the lobby gave it, when this node numbered it.
    pub(crate) offset: Option<u64>,
    /// Cluster mode, when asked for: the offset Redis gives it, once it has.
    pub(crate) numbered: Option<tokio::sync::oneshot::Receiver<u64>>,
}

/// What the cluster holds for a new connection.
#[derive(Debug, Default)]
pub(crate) struct ClusterSeat {
    /// The cluster counts the connection until [`Shared::release_in_cluster`].
    pub(crate) held: bool,
    /// Set when the cluster admitted it: presence events for it come from the cluster, and
    /// whether the lobby sends them is decided by its size cluster-wide.
    pub(crate) presence_events: Option<bool>,
    /// The lobby's offsets, epoch and kept broadcasts, which are the cluster's.
    pub(crate) history: Option<ClusterHistory>,
}

/// A token bucket per client IP. Idle buckets are swept every [`ConnectRate::SWEEP_EVERY`]
/// checks, so the map holds only IPs seen in the last second or so.
struct ConnectRate {
    buckets: governor::DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
}

impl ConnectRate {
    const SWEEP_EVERY: u64 = 1024;

    fn new(per_sec: u32) -> Option<Self> {
        let rate = std::num::NonZeroU32::new(per_sec)?;
        Some(Self {
            buckets: governor::RateLimiter::hashmap(governor::Quota::per_second(rate)),
            checks: AtomicU64::new(0),
        })
    }

    fn allow(&self, ip: IpAddr) -> bool {
        if self.checks.fetch_add(1, Ordering::Relaxed) % Self::SWEEP_EVERY == Self::SWEEP_EVERY - 1
        {
            self.buckets.retain_recent();
        }
        self.buckets.check_key(&ip).is_ok()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The state of a new manager: `config` is already validated.
    pub(crate) fn new(config: Config) -> Self {
        let connect_rate = ConnectRate::new(config.rate.connects_per_ip_per_sec);
        let config = Arc::new(config);
        let counters = Arc::new(Counters::default());
        let tracker = TaskTracker::new();
        Self {
            hub: Arc::new(Hub::new(config.clone(), counters.clone(), tracker.clone())),
            config,
            counters,
            tracker,
            next_seq: AtomicU64::new(1),
            started: Instant::now(),
            connect_rate,
            cluster: OnceLock::new(),
        }
    }

    /// Publishes a broadcast (`message` encoded without an offset) to a lobby on every node.
    /// In cluster mode the cluster numbers it and every node, this one included, delivers it
    /// through [`Hub::publish`] (so the count of this node's recipients is its current member
    /// count); alone, or with the cluster away, this node numbers and delivers it through the
    /// same function. Returns the connections reached on this node, [`Error::Overloaded`]
    /// when the cluster's outbound queue is full (sent nowhere), or [`Error::LobbyBusy`] when
    /// the lobby's members are behind, here or on another node (shed where it entered).
    ///
    /// With `want_offset` in cluster mode, the offset Redis gives it arrives later, through
    /// [`Publication::numbered`].
    pub(crate) fn publish(
        &self,
        lobby: &LobbyCode,
        frame: &str,
        skip: Skip<'_>,
        want_offset: bool,
    ) -> Result<Publication, Error> {
        if let Some(cluster) = self.cluster.get() {
            if self.hub.pressed(lobby) {
                return Err(Error::LobbyBusy);
            }
            let (sender, numbered) = match want_offset {
                true => {
                    let (sender, receiver) = tokio::sync::oneshot::channel();
                    (Some(sender), Some(receiver))
                }
                false => (None, None),
            };
            match cluster.publish_message(lobby, frame, skip, sender) {
                // Redis numbers it later: the offset comes through `numbered`.
                Published::Queued => {
                    return Ok(Publication {
                        reached: self.hub.count_recipients(lobby.as_str(), skip),
                        offset: None,
                        numbered,
                    });
                }
                Published::Overloaded => return Err(Error::Overloaded),
                Published::Unavailable => {}
            }
        }
        let (reached, offset) = self
            .hub
            .publish(lobby, Broadcast::Unnumbered(frame), skip)
            .map_err(|_| Error::LobbyBusy)?;
        Ok(Publication {
            reached,
            offset: Some(offset),
            numbered: None,
        })
    }

    /// Sends an encoded frame to every connection of `user`, on every node: the cluster first,
    /// so that a full outbound queue ([`Error::Overloaded`]) means sent nowhere. Returns the
    /// connections reached on this node.
    pub(crate) fn send_to_user(&self, user: &str, frame: &Message) -> Result<usize, Error> {
        if let Some(cluster) = self.cluster.get()
            && cluster.publish_user(user, frame_text(frame)) == Published::Overloaded
        {
            return Err(Error::Overloaded);
        }
        Ok(self.hub.send_to_user(user, frame))
    }

    /// Reserves a new connection's place in the cluster (its limits and user policy across
    /// nodes) and reads the lobby's cluster-wide history for its `welcome` and recovery. Alone,
    /// or with the cluster away, there is nothing to reserve: this node's limits decide.
    pub(crate) async fn admit_in_cluster(
        &self,
        info: &ConnectionInfo,
        lobby: Option<&LobbyCode>,
        since: Option<u64>,
    ) -> Result<ClusterSeat, DisconnectReason> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(ClusterSeat::default());
        };
        match cluster.admit(info, lobby).await {
            Admission::Refused(reason) => Err(reason),
            Admission::Unavailable => Ok(ClusterSeat {
                held: true,
                ..ClusterSeat::default()
            }),
            // Read after `admit` subscribed this node to the lobby, so nothing falls between.
            Admission::Admitted { presence_events } => Ok(ClusterSeat {
                held: true,
                presence_events: Some(presence_events),
                history: match lobby {
                    Some(lobby) => cluster.history(lobby, since).await,
                    None => None,
                },
            }),
        }
    }

    /// Frees what [`admit_in_cluster`](Self::admit_in_cluster) held, once the connection ended
    /// or was refused here.
    pub(crate) async fn release_in_cluster(&self, info: &ConnectionInfo) {
        if let Some(cluster) = self.cluster.get() {
            cluster.release(info).await;
        }
    }

    /// Whether this node is part of a cluster.
    pub(crate) fn in_cluster(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// Joins a v2 connection of this node to a lobby here, without asking the cluster: what
    /// [`join`](Self::join) does alone. Callers that must not wait use it when
    /// [`in_cluster`](Self::in_cluster) is false.
    pub(crate) fn join_here(
        &self,
        seq: u64,
        join: Join<'_>,
        id: Option<&RawValue>,
    ) -> Result<(), ClientError> {
        self.hub
            .join(seq, join, id)
            .map_err(|refused| self.join_refusal(refused, join.lobby))
    }

    /// Joins a v2 connection of this node to a lobby (a client's `join`, or the backend's),
    /// queueing `joined` (with `id`), the replay asked for and `recovered`. In cluster mode
    /// the cluster reserves the lobby's place cluster-wide first and its kept broadcasts fill
    /// the replay; this node's own checks (already in, the credential, lobbies per connection)
    /// come before that round trip. A join the cluster admitted but this node then refuses
    /// (the connection closed meanwhile) is given back.
    pub(crate) async fn join(
        &self,
        conn: &ConnHandle,
        join: Join<'_>,
        id: Option<&RawValue>,
    ) -> Result<(), ClientError> {
        let Some(cluster) = self.cluster.get() else {
            return self.join_here(conn.seq, join, id);
        };
        match self.hub.may_join(conn.seq, join.lobby) {
            // Already in: answered at once, nothing to reserve.
            Ok(true) => return self.join_here(conn.seq, join, id),
            Ok(false) => {}
            Err(refused) => return Err(self.join_refusal(refused, join.lobby)),
        }
        let cluster_history = match cluster.join(&conn.info, join.lobby).await {
            Admission::Refused(DisconnectReason::LobbyFull) => {
                return Err(self.join_refusal(JoinRefused::LobbyFull, join.lobby));
            }
            Admission::Refused(_) => {
                return Err(self.join_refusal(JoinRefused::Gone, join.lobby));
            }
            // Redis away: this node's view decides, as for a connect.
            Admission::Unavailable => None,
            // Read after `join` subscribed this node to the lobby, so nothing falls between.
            Admission::Admitted { .. } => {
                let since = join.recovery.map(|r| r.since);
                cluster.history(join.lobby, since).await
            }
        };
        let join = Join {
            cluster_history: cluster_history.as_ref(),
            ..join
        };
        let joined = self.join_here(conn.seq, join, id);
        if joined.is_err() {
            cluster.leave(&conn.info, join.lobby).await;
        }
        joined
    }

    /// Takes a v2 connection of this node out of a lobby here, without telling the cluster:
    /// what [`leave`](Self::leave) does alone. Callers that must not wait use it when
    /// [`in_cluster`](Self::in_cluster) is false.
    pub(crate) fn leave_here(
        &self,
        seq: u64,
        lobby: &LobbyCode,
        reason: LeftReason,
        id: Option<&RawValue>,
    ) -> bool {
        self.hub.leave_lobby(seq, lobby, reason, id, true)
    }

    /// Takes a v2 connection of this node out of a lobby, queueing `left` with `reason` (and
    /// `id`). Returns whether it was in the lobby. In cluster mode the connection leaves this
    /// node's lobby first (so it hears nothing more from there, its own `member_left`
    /// included), then the cluster's count is freed, and only then is `left` queued: a client
    /// that rejoins on reading it finds the place free.
    pub(crate) async fn leave(
        &self,
        conn: &ConnHandle,
        lobby: &LobbyCode,
        reason: LeftReason,
        id: Option<&RawValue>,
    ) -> bool {
        let Some(cluster) = self.cluster.get() else {
            return self.leave_here(conn.seq, lobby, reason, id);
        };
        let was_in = self.hub.leave_lobby(conn.seq, lobby, reason, id, false);
        cluster.leave(&conn.info, lobby).await;
        if was_in || reason == LeftReason::Left {
            let left = ServerFrame::Left {
                lobby,
                reason: reason.as_str(),
                id,
            };
            self.hub.deliver(conn, text(left.encode()));
        }
        was_in
    }

    /// Joins every v2 connection of `user` on this node to `lobby` (the backend's join);
    /// returns how many are in it now.
    pub(crate) async fn join_user_here(&self, user: &str, lobby: &LobbyCode) -> usize {
        let mut joined = 0;
        for conn in self.hub.user_connections(user) {
            if conn.v2() && self.join(&conn, Join::new(lobby), None).await.is_ok() {
                joined += 1;
            }
        }
        joined
    }

    /// Takes every connection of `user` on this node out of `lobby` (the backend's removal);
    /// returns how many were in it.
    pub(crate) async fn remove_user_here(&self, user: &str, lobby: &LobbyCode) -> usize {
        let mut removed = 0;
        for conn in self.hub.user_connections(user) {
            if self.remove_from(&conn, lobby, LeftReason::Removed).await {
                removed += 1;
            }
        }
        removed
    }

    /// Takes one connection out of a lobby on the backend's word: a v2 connection gets `left`
    /// with `reason` (`removed` or `kicked`); a v1 connection, which lives in its one lobby, is
    /// closed with 4009 `kicked`. Returns whether it was in the lobby.
    pub(crate) async fn remove_from(
        &self,
        conn: &ConnHandle,
        lobby: &LobbyCode,
        reason: LeftReason,
    ) -> bool {
        if conn.v2() {
            return self.leave(conn, lobby, reason, None).await;
        }
        let member = self.hub.lobby_of(conn.seq, Some(lobby)).is_ok();
        if member {
            conn.close(DisconnectReason::Kicked);
        }
        member
    }

    /// Tells the other nodes holding connections of `user` to join them to `lobby` (or, with
    /// `join` false, to take them out). [`Error::Overloaded`]: it could not be queued.
    pub(crate) fn tell_user_elsewhere(
        &self,
        user: &str,
        lobby: &LobbyCode,
        join: bool,
    ) -> Result<(), Error> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(());
        };
        match cluster.membership_for_user(user, lobby, join) {
            Published::Overloaded => Err(Error::Overloaded),
            _ => Ok(()),
        }
    }

    fn join_refusal(&self, refused: JoinRefused, lobby: &LobbyCode) -> ClientError {
        match refused {
            JoinRefused::LobbyFull => {
                ClientError::new(ErrorCode::LobbyFull, format!("lobby `{lobby}` is full"))
            }
            JoinRefused::TooManyLobbies => ClientError::new(
                ErrorCode::TooManyLobbies,
                format!(
                    "a connection may be in {} lobbies at most",
                    self.config.limits.max_lobbies_per_connection
                ),
            ),
            JoinRefused::NotAllowed => ClientError::new(
                ErrorCode::NotAllowed,
                format!("your credential does not allow lobby `{lobby}`"),
            ),
            JoinRefused::Gone => {
                ClientError::new(ErrorCode::NotAllowed, "the connection is closing")
            }
        }
    }

    /// Queues the lobby's presence list (its users on every node) for a connection. Alone it
    /// is encoded at once; the cluster's list needs a round trip, so it is fetched from a task
    /// on the tracker (shutdown waits for it) and the connection goes on meanwhile; this
    /// node's list stands in when the cluster cannot answer.
    pub(crate) fn queue_presence_list(
        self: &Arc<Self>,
        conn: &Arc<ConnHandle>,
        lobby: LobbyCode,
        id: Option<Box<RawValue>>,
    ) {
        if self.cluster.get().is_none() {
            let frame = self.hub.presence_frame(&lobby, id.as_deref());
            self.hub.deliver(conn, frame);
            return;
        }
        let (shared, conn) = (self.clone(), conn.clone());
        self.tracker.spawn(async move {
            let frame = match shared.presence_everywhere(&lobby).await {
                Some(users) => {
                    let users = users.iter().map(String::as_str).collect();
                    let (lobby, id) = (&lobby, id.as_deref());
                    text(ServerFrame::Presence { lobby, users, id }.encode())
                }
                None => shared.hub.presence_frame(&lobby, id.as_deref()),
            };
            shared.hub.deliver(&conn, frame);
        });
    }

    /// Queues a fresh presence list of every lobby of a connection (its join/leave events were
    /// dropped on a full queue).
    pub(crate) fn queue_presence_lists(self: &Arc<Self>, conn: &Arc<ConnHandle>) {
        for lobby in self.hub.lobbies_of(conn.seq) {
            self.queue_presence_list(conn, lobby, None);
        }
    }

    /// The users of a lobby on every node, or `None` alone or when the cluster cannot answer.
    pub(crate) async fn presence_everywhere(&self, lobby: &LobbyCode) -> Option<Vec<String>> {
        self.cluster.get()?.presence(lobby).await
    }

    /// Every lobby with counts on every node, or `None` alone or when the cluster cannot
    /// answer.
    pub(crate) async fn lobbies_everywhere(&self) -> Option<Vec<ClusterLobby>> {
        self.cluster.get()?.lobbies().await
    }

    /// Closes the user's connections on the other nodes; how many (0 alone or when the
    /// cluster cannot answer).
    pub(crate) async fn close_user_elsewhere(&self, user: &str, reason: DisconnectReason) -> usize {
        match self.cluster.get() {
            Some(cluster) => cluster.close_user(user, reason).await.unwrap_or(0),
            None => 0,
        }
    }

    /// Closes a connection held by another node; whether it was found there.
    pub(crate) async fn close_connection_elsewhere(
        &self,
        id: &str,
        reason: DisconnectReason,
    ) -> bool {
        match self.cluster.get() {
            Some(cluster) => cluster.close_connection(id, reason).await == Some(true),
            None => false,
        }
    }

    /// Hands a frame to a connection held by the node its id names, through the cluster.
    pub(crate) async fn send_to_connection_elsewhere(
        &self,
        id: &str,
        frame: &Message,
    ) -> Result<(), Error> {
        // An id names its node (`NODE-SEQ`); anything else is no connection anywhere.
        let Some(cluster) = self.cluster.get().filter(|_| id.contains('-')) else {
            return Err(Error::NoSuchConnection);
        };
        match cluster.send_to_connection(id, frame_text(frame)).await {
            Some(true) => Ok(()),
            Some(false) => Err(Error::NoSuchConnection),
            None => Err(Error::Overloaded),
        }
    }

    /// Hands a posted client frame to its SSE connection, on this node or (through the
    /// cluster) on the node its id names.
    pub(crate) async fn post_anywhere(
        &self,
        connection_id: &str,
        user: &str,
        lobby: &str,
        frame: &str,
    ) -> Result<(), SsePostError> {
        match self.post_to_sse(connection_id, user, lobby, frame) {
            Err(SsePostError::NotFound) => {}
            done => return done,
        }
        // An id names its node (`NODE-SEQ`); anything else is no connection anywhere.
        let Some(cluster) = self.cluster.get().filter(|_| connection_id.contains('-')) else {
            return Err(SsePostError::NotFound);
        };
        match cluster
            .forward_post(connection_id, user, lobby, frame)
            .await
        {
            Some(true) => Ok(()),
            Some(false) => Err(SsePostError::NotFound),
            None => Err(SsePostError::Unavailable),
        }
    }

    /// `"up"` / `"down"` when part of a cluster.
    pub(crate) fn cluster_status(&self) -> Option<&'static str> {
        self.cluster.get().map(|c| c.status())
    }

    /// Cluster-wide counts, when part of a cluster that answers.
    pub(crate) async fn cluster_stats(&self) -> Option<ClusterStats> {
        self.cluster.get()?.stats().await
    }

    /// The connections other nodes hold that `what` names ([`Cluster::lookup`]).
    pub(crate) async fn lookup_elsewhere(
        &self,
        what: crate::cluster::Lookup<'_>,
    ) -> Option<Vec<crate::cluster::FoundConnection>> {
        self.cluster.get()?.lookup(what).await
    }

    /// Joins a cluster; a second one is ignored (with a warning).
    pub(crate) fn attach_cluster(&self, cluster: Arc<dyn Cluster>) {
        let weak = Arc::downgrade(&cluster);
        if self.cluster.set(cluster).is_err() {
            tracing::warn!("a cluster was already attached; ignoring the second one");
            return;
        }
        self.hub.on_pressure(move |lobby| {
            if let Some(cluster) = weak.upgrade() {
                cluster.tell_pressure(lobby);
            }
        });
    }

    /// Whether a new connection from `ip` (counted as [`crate::Limits::ip_key`]) fits the
    /// per-IP connect rate.
    pub(crate) fn allow_connect(&self, ip: IpAddr) -> bool {
        let key = self.config.limits.ip_key(ip);
        self.connect_rate.as_ref().is_none_or(|r| r.allow(key))
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A protocol ping's payload: the time since the manager started, in microseconds
    /// (at least 1: 0 means "no ping outstanding" to a connection).
    pub(crate) fn ping_stamp(&self) -> u64 {
        (self.started.elapsed().as_micros() as u64).max(1)
    }

    /// The round trip of a pong echoing `stamp` ([`ping_stamp`](Self::ping_stamp)).
    pub(crate) fn rtt_since(&self, stamp: u64) -> Option<Duration> {
        let now = self.started.elapsed().as_micros() as u64;
        now.checked_sub(stamp).map(Duration::from_micros)
    }

    /// The manager's clock in whole seconds (for rate-limit windows).
    pub(crate) fn clock_secs(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Delivers a frame posted for an SSE connection of this node, as if it had arrived on
    /// its socket; `user` and `lobby` are the poster's, checked against the connection's (an
    /// empty `lobby`, the protocol-v2 route's, is for a v2 connection).
    pub(crate) fn post_to_sse(
        &self,
        connection_id: &str,
        user: &str,
        lobby: &str,
        frame: &str,
    ) -> Result<(), SsePostError> {
        // The same bound as a WebSocket message, checked before anything is looked up, stored or
        // forwarded; a frame from another node is checked again here.
        let limit = self.config.max_message_bytes;
        if frame.len() > limit {
            return Err(SsePostError::TooLarge(limit));
        }
        let conn = self
            .hub
            .connection_by_id(connection_id)
            .ok_or(SsePostError::NotFound)?;
        let inbound = conn.inbound.as_ref().ok_or(SsePostError::NotFound)?;
        // The v2 route names no lobby (""): a v2 connection's frames name their own.
        let in_lobby = if lobby.is_empty() {
            conn.v2()
        } else {
            crate::ids::LobbyCode::parse(lobby)
                .ok()
                .is_some_and(|code| self.hub.lobby_of(conn.seq, Some(&code)).is_ok())
        };
        if conn.info.user_id.as_str() != user || !in_lobby {
            return Err(SsePostError::Forbidden);
        }
        inbound
            .try_send(Message::Text(frame.into()))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SsePostError::Busy,
                mpsc::error::TrySendError::Closed(_) => SsePostError::NotFound,
            })
    }
}

impl crate::cluster::Node for Shared {
    fn presence_changed(&self, lobby: &LobbyCode, user: &crate::ids::UserId, joined: bool) {
        self.hub.presence_changed(lobby, user, joined);
    }

    fn connection_lost(&self, lost: crate::handle::LostConnection) {
        self.hub.connection_lost(lost);
    }

    fn membership_for_user(self: Arc<Self>, user: &str, lobby: &str, join: bool) {
        let (Ok(lobby), user) = (LobbyCode::parse(lobby), user.to_owned()) else {
            return;
        };
        let shared = self.clone();
        self.tracker.spawn(async move {
            if join {
                shared.join_user_here(&user, &lobby).await;
            } else {
                shared.remove_user_here(&user, &lobby).await;
            }
        });
    }

    fn node_id(&self) -> &str {
        &self.config.node_id
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn post(&self, id: &str, user: &str, lobby: &str, frame: &str) -> bool {
        self.post_to_sse(id, user, lobby, frame).is_ok()
    }
}
