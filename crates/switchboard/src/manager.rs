//! [`Manager`]: the cheap-clone handle an app keeps, and the methods a backend calls.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::extract::ws::Message;
use axum::response::Response;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, ClusterStats, LocalNode, Published, Skip};
use crate::config::{Config, ConfigError};
use crate::connection::{self, Socket};
use crate::disconnect::DisconnectReason;
use crate::handle::{ConnHandle, ConnectionInfo, Offer};
use crate::handler::{Handler, NoHandler};
use crate::history::Recovery;
use crate::hub::{Exclude, Hub, PendingLeave};
use crate::ids::{ConnectionId, InvalidId, LobbyCode, UserId};
use crate::protocol::ServerFrame;
use crate::protocol::text;
use crate::stats::{Counters, Stats};
use crate::ws::Upgrade;

/// The subprotocol a client may offer; it is echoed when offered.
pub const SUBPROTOCOL: &str = "switchboard.v1";

/// Who wants to connect where: the embedding app fills this in after authenticating.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The lobby to join.
    pub lobby: LobbyCode,
    /// The authenticated user.
    pub user_id: UserId,
    /// The client's IP, for the per-IP limit.
    pub ip: IpAddr,
    /// When the credential expires: the connection is then closed with 4010.
    pub expires_at: Option<SystemTime>,
    /// Recovery after a reconnect: replay what was missed since this offset of this epoch.
    pub recovery: Option<Recovery>,
}

impl ConnectRequest {
    /// A request with no expiry.
    pub fn new(lobby: LobbyCode, user_id: UserId, ip: IpAddr) -> Self {
        Self {
            lobby,
            user_id,
            ip,
            expires_at: None,
            recovery: None,
        }
    }

    /// Asks for the broadcasts after `since` (of `epoch`) before live traffic.
    #[must_use]
    pub fn recover(mut self, recovery: Recovery) -> Self {
        self.recovery = Some(recovery);
        self
    }

    /// Closes the connection with 4010 `token_expired` at `at`.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// Errors of the backend-facing methods.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lobby code or user id is malformed.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The payload could not be serialized as JSON.
    #[error("payload is not serializable as JSON: {0}")]
    Payload(#[from] serde_json::Error),
    /// No connection with that id on this server.
    #[error("no such connection")]
    NoSuchConnection,
    /// The connection's outbound queue is full: under the slow-consumer policy `close` it is
    /// being closed (4008), under `drop` this frame was dropped (and counted).
    #[error("the connection's outbound queue is full")]
    QueueFull,
    /// The connection did not answer a ping in time.
    #[error("no pong within {0:?}")]
    PingTimeout(Duration),
    /// Cluster mode: this node's outbound queue to the cluster is full, so the frame was sent
    /// nowhere; retry later.
    #[error("the cluster's outbound queue is full; retry later")]
    Overloaded,
}

/// A lobby and its counts, as listed by [`Manager::lobbies`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct LobbyInfo {
    /// The lobby code.
    pub lobby: LobbyCode,
    /// Connections in it.
    pub connections: usize,
    /// Distinct users in it.
    pub users: usize,
}

/// Manages WebSocket connections: limits, lobbies, users, health, broadcast, presence.
///
/// Clone it freely: clones share one state. See the crate docs for an example.
#[derive(Clone, Debug)]
pub struct Manager {
    shared: Arc<Shared>,
}

/// State shared by the manager handle and every connection task.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) hub: Hub,
    pub(crate) counters: Arc<Counters>,
    pub(crate) handler: Arc<dyn Handler>,
    /// Every connection and writer task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled at shutdown: leave-grace timers end early.
    shutdown: CancellationToken,
    next_seq: AtomicU64,
    /// Origin of the protocol ping payloads (microseconds since it).
    epoch: Instant,
    /// New connections per IP per second, if limited.
    connect_rate: Option<ConnectRate>,
    /// The other nodes, once attached.
    cluster: OnceLock<Arc<dyn Cluster>>,
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
    /// Publishes a broadcast (`message` encoded without an offset). In cluster mode the
    /// cluster numbers and delivers it everywhere, this node included (so the count of this
    /// node's recipients is its current member count); alone, or with the cluster away, this
    /// node numbers and delivers it. Returns the connections reached on this node, or
    /// [`Error::Overloaded`] when the cluster's outbound queue is full (sent nowhere).
    pub(crate) fn publish_message(
        &self,
        lobby: &LobbyCode,
        frame: &str,
        exclude: Exclude<'_>,
        exclude_user: Option<&str>,
    ) -> Result<usize, Error> {
        if let Some(cluster) = self.cluster() {
            let conn_id;
            let skip = match (exclude, exclude_user) {
                (Exclude::Connection(seq), _) => {
                    conn_id = ConnectionId::new(&self.config.node_id, seq);
                    Skip::Connection(conn_id.as_str())
                }
                (_, Some(user)) => Skip::User(user),
                _ => Skip::Nobody,
            };
            match cluster.publish_message(lobby, frame, skip) {
                Published::Queued => return Ok(self.hub.count_recipients(lobby.as_str(), exclude)),
                Published::Overloaded => return Err(Error::Overloaded),
                Published::Unavailable => {}
            }
        }
        Ok(self.hub.publish_message(lobby, frame, exclude))
    }

    /// Sends an encoded frame to every connection of `user`, on every node: the cluster first,
    /// so that a full outbound queue ([`Error::Overloaded`]) means sent nowhere. Returns the
    /// connections reached on this node.
    pub(crate) fn send_to_user(&self, user: &str, frame: &Message) -> Result<usize, Error> {
        if let Some(cluster) = self.cluster()
            && cluster.publish_user(user, frame_text(frame)) == Published::Overloaded
        {
            return Err(Error::Overloaded);
        }
        Ok(self.hub.send_to_user(user, frame))
    }

    /// The cluster, if this node is part of one.
    pub(crate) fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        self.cluster.get().cloned()
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
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }

    /// The round trip of a pong echoing `stamp` ([`ping_stamp`](Self::ping_stamp)).
    pub(crate) fn rtt_since(&self, stamp: u64) -> Option<Duration> {
        let now = self.epoch.elapsed().as_micros() as u64;
        now.checked_sub(stamp).map(Duration::from_micros)
    }

    /// The manager's clock in whole seconds (for rate-limit windows).
    pub(crate) fn clock_secs(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Times a leave grace; at shutdown the leave happens at once.
    pub(crate) fn time_leave(self: &Arc<Self>, pending: PendingLeave) {
        let shared = self.clone();
        let grace = self.config.presence.leave_grace;
        self.tracker.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = shared.shutdown.cancelled() => {}
            }
            shared.hub.expire_leave(&pending);
        });
    }
}

impl Manager {
    /// A manager that refuses application messages (`unknown_type`).
    ///
    /// Metrics go to the `metrics` recorder installed when the manager is created: install
    /// yours (e.g. a Prometheus exporter) first.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::with_handler(config, NoHandler)
    }

    /// A manager whose application messages and connection events go to `handler`.
    pub fn with_handler(config: Config, handler: impl Handler) -> Result<Self, ConfigError> {
        config.validate()?;
        let connect_rate = ConnectRate::new(config.rate.connects_per_ip_per_sec);
        let config = Arc::new(config);
        let counters = Arc::new(Counters::default());
        Ok(Self {
            shared: Arc::new(Shared {
                hub: Hub::new(config.clone(), counters.clone()),
                config,
                counters,
                handler: Arc::new(handler),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                next_seq: AtomicU64::new(1),
                epoch: Instant::now(),
                connect_rate,
                cluster: OnceLock::new(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Completes a WebSocket upgrade and runs the connection: limits are reserved, `welcome`
    /// sent, and from then on the manager owns it. Refusals by a limit are closes with 4002,
    /// which the client can read, rather than HTTP statuses it cannot.
    pub fn accept(&self, upgrade: Upgrade, request: ConnectRequest) -> Response {
        let shared = self.shared.clone();
        upgrade.on_upgrade(SUBPROTOCOL, move |io| {
            let tracker = shared.tracker.clone();
            let socket = Socket::new(io, shared.config.max_message_bytes);
            tracker.track_future(connection::run(shared, socket, request))
        })
    }

    /// Completes a WebSocket upgrade only to close it with `reason` (e.g. 4001 for a bad
    /// token), so that a browser client can tell why.
    pub fn refuse(&self, upgrade: Upgrade, reason: DisconnectReason) -> Response {
        let shared = self.shared.clone();
        shared.counters.rejected(reason);
        upgrade.on_upgrade(SUBPROTOCOL, move |io| {
            let timeout = shared.config.close_timeout;
            let socket = Socket::new(io, shared.config.max_message_bytes);
            shared
                .tracker
                .track_future(socket.close(None, reason, timeout))
        })
    }

    /// Sends `data` to every connection in `lobby` as a `message` frame from the backend
    /// (`from: null`), skipping every connection of `exclude_user`. The frame is encoded once.
    /// Returns how many connections it was queued for.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        lobby: &str,
        data: &T,
        exclude_user: Option<&str>,
    ) -> Result<usize, Error> {
        let lobby = LobbyCode::parse(lobby)?;
        let data = to_raw(data)?;
        let frame = ServerFrame::Message {
            lobby: &lobby,
            from: None,
            data: &data,
        }
        .encode();
        let exclude = exclude_user.map_or(Exclude::Nobody, Exclude::User);
        self.shared
            .publish_message(&lobby, &frame, exclude, exclude_user)
    }

    /// Sends `data` to every connection of `user` as a `direct` frame from the backend.
    /// Returns how many connections it was queued for.
    pub fn send_to_user<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
    ) -> Result<usize, Error> {
        let data = to_raw(data)?;
        self.shared.send_to_user(user, &direct(&data))
    }

    /// Sends `data` to one connection as a `direct` frame from the backend.
    pub fn send_to_connection<T: Serialize + ?Sized>(
        &self,
        id: &str,
        data: &T,
    ) -> Result<(), Error> {
        let conn = self.find(id)?;
        let data = to_raw(data)?;
        match self.shared.hub.deliver(&conn, direct(&data)) {
            Offer::Queued => Ok(()),
            Offer::Full => Err(Error::QueueFull),
            Offer::Closed => Err(Error::NoSuchConnection),
        }
    }

    /// The users present in a lobby, sorted (each once, however many connections they have).
    pub fn presence(&self, lobby: &str) -> Result<Vec<UserId>, Error> {
        Ok(self.shared.hub.presence(&LobbyCode::parse(lobby)?))
    }

    /// Every lobby with its connection and user counts, sorted by code.
    pub fn lobbies(&self) -> Vec<LobbyInfo> {
        self.shared
            .hub
            .lobbies()
            .into_iter()
            .map(|(lobby, connections, users)| LobbyInfo {
                lobby,
                connections,
                users,
            })
            .collect()
    }

    /// What is known about one connection.
    pub fn connection(&self, id: &str) -> Option<ConnectionInfo> {
        self.find(id).ok().map(|c| c.info.clone())
    }

    /// The connections of a user.
    pub fn user_connections(&self, user: &str) -> Vec<ConnectionInfo> {
        self.shared
            .hub
            .user_connections(user)
            .iter()
            .map(|c| c.info.clone())
            .collect()
    }

    /// Closes every connection of a user with `reason` (4009 `kicked` for a backend's kick).
    /// Returns how many were closed.
    pub fn disconnect_user(&self, user: &str, reason: DisconnectReason) -> usize {
        let conns = self.shared.hub.user_connections(user);
        conns.iter().filter(|c| c.close(reason)).count()
    }

    /// Closes one connection with `reason`.
    pub fn disconnect(&self, id: &str, reason: DisconnectReason) -> Result<(), Error> {
        self.find(id)?.close(reason);
        Ok(())
    }

    /// Sends a protocol ping to a connection now and waits for its pong: the round trip.
    /// (Only the first echo of the last ping sent to a connection measures a round trip;
    /// this ping becomes that one.)
    pub async fn ping(&self, id: &str, timeout: Duration) -> Result<Duration, Error> {
        let conn = self.find(id)?;
        let pong = conn.wait_for_pong();
        match self
            .shared
            .hub
            .deliver(&conn, conn.ping(self.shared.ping_stamp()))
        {
            Offer::Queued => {}
            Offer::Full => return Err(Error::QueueFull),
            Offer::Closed => return Err(Error::NoSuchConnection),
        }
        // A connection that closes meanwhile answers at once, not after the timeout.
        let answer = async {
            tokio::select! {
                rtt = pong => rtt.map_err(|_| Error::NoSuchConnection),
                () = conn.closed() => Err(Error::NoSuchConnection),
            }
        };
        tokio::time::timeout(timeout, answer)
            .await
            .unwrap_or(Err(Error::PingTimeout(timeout)))
    }

    /// The last round trip measured on a connection (by a protocol pong or a `health_pong`).
    pub fn latency(&self, id: &str) -> Option<Duration> {
        self.find(id).ok()?.rtt()
    }

    /// Connections, lobbies, users and counters. O(1) in the number of connections.
    pub fn stats(&self) -> Stats {
        let census = self.shared.hub.census();
        let max = self.shared.config.limits.max_connections;
        Stats::new(census, max, &self.shared.counters)
    }

    /// Graceful shutdown: refuses new connections at once, closes every connection with 1001
    /// spread evenly over `drain` (so clients do not all come back at once), then waits for
    /// every connection task to end, at most until `deadline` (from the call). Returns whether
    /// everything ended in time. Calling it again is harmless.
    pub async fn shutdown(&self, drain: Duration, deadline: Duration) -> bool {
        let give_up = Instant::now() + deadline;
        let conns = self.shared.hub.start_draining();
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        let start = Instant::now();
        let n = conns.len().max(1) as u32;
        for (i, conn) in conns.iter().enumerate() {
            tokio::time::sleep_until((start + drain * i as u32 / n).min(give_up)).await;
            conn.close(DisconnectReason::ServerShutdown);
        }
        tokio::time::timeout_at(give_up, self.shared.tracker.wait())
            .await
            .is_ok()
    }

    /// The handle a cluster delivers through (what other nodes send to this one).
    pub fn local_node(&self) -> LocalNode {
        LocalNode::new(&self.shared)
    }

    /// Joins this manager to a cluster (built with [`Manager::local_node`]). Call it once,
    /// before serving connections.
    pub fn attach_cluster(&self, cluster: Arc<dyn Cluster>) {
        if self.shared.cluster.set(cluster).is_err() {
            tracing::warn!("a cluster was already attached; ignoring the second one");
        }
    }

    /// `"up"` / `"down"` when part of a cluster.
    pub fn cluster_status(&self) -> Option<&'static str> {
        self.shared.cluster().map(|c| c.status())
    }

    /// Cluster-wide counts, when part of a cluster that answers.
    pub async fn cluster_stats(&self) -> Option<ClusterStats> {
        self.shared.cluster()?.stats().await
    }

    /// The users of a lobby on every node (this node's view when the cluster cannot answer).
    pub async fn presence_everywhere(&self, lobby: &str) -> Result<Vec<String>, Error> {
        let code = LobbyCode::parse(lobby)?;
        if let Some(cluster) = self.shared.cluster()
            && let Some(users) = cluster.presence(&code).await
        {
            return Ok(users);
        }
        Ok(self
            .shared
            .hub
            .presence(&code)
            .into_iter()
            .map(|u| u.as_str().to_owned())
            .collect())
    }

    /// Every lobby with counts on every node (this node's view when the cluster cannot
    /// answer).
    pub async fn lobbies_everywhere(&self) -> Vec<crate::cluster::ClusterLobby> {
        if let Some(cluster) = self.shared.cluster()
            && let Some(lobbies) = cluster.lobbies().await
        {
            return lobbies;
        }
        self.lobbies()
            .into_iter()
            .map(|l| crate::cluster::ClusterLobby {
                lobby: l.lobby.as_str().to_owned(),
                connections: l.connections,
                users: l.users,
            })
            .collect()
    }

    /// Closes every connection of a user on every node; how many.
    pub async fn disconnect_user_everywhere(&self, user: &str, reason: DisconnectReason) -> usize {
        let here = self.disconnect_user(user, reason);
        let elsewhere = match self.shared.cluster() {
            Some(cluster) => cluster.close_user(user, reason).await.unwrap_or(0),
            None => 0,
        };
        here + elsewhere
    }

    /// Closes one connection wherever it is (its id names its node).
    pub async fn disconnect_everywhere(
        &self,
        id: &str,
        reason: DisconnectReason,
    ) -> Result<(), Error> {
        if self.disconnect(id, reason).is_ok() {
            return Ok(());
        }
        match self.shared.cluster() {
            Some(cluster) if cluster.close_connection(id, reason).await == Some(true) => Ok(()),
            _ => Err(Error::NoSuchConnection),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn find(&self, id: &str) -> Result<Arc<ConnHandle>, Error> {
        ConnectionId::seq_on(id, &self.shared.config.node_id)
            .and_then(|seq| self.shared.hub.connection(seq))
            .ok_or(Error::NoSuchConnection)
    }
}

/// The text of an encoded frame (every frame the manager encodes is text).
pub(crate) fn frame_text(frame: &Message) -> &str {
    match frame {
        Message::Text(text) => text.as_str(),
        _ => "",
    }
}

fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::value::to_raw_value(data)
}

fn direct(data: &RawValue) -> Message {
    text(ServerFrame::Direct { from: None, data }.encode())
}
