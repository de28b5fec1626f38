//! [`Manager`]: the cheap-clone handle an app keeps, and the methods a backend calls.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use serde::Serialize;
use tokio::time::Instant;

use crate::client;
use crate::cluster::{Cluster, ClusterStats, LocalNode};
use crate::config::{Config, ConfigError};
use crate::connection::{self, Socket};
use crate::disconnect::DisconnectReason;
use crate::error::{Error, SsePostError};
use crate::handle::{ConnHandle, ConnectionInfo, Offer};
use crate::handler::{AppHandler, Handler, NoHandler};
use crate::hub::Exclude;
use crate::ids::{ConnectionId, LobbyCode, UserId};
use crate::request::ConnectRequest;
use crate::shared::Shared;
use crate::stats::Stats;
use crate::ws::Upgrade;

/// The subprotocol a client may offer; it is echoed when offered.
pub const SUBPROTOCOL: &str = "switchboard.v1";

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
    handler: AppHandler,
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
        Ok(Self {
            shared: Arc::new(Shared::new(config)),
            handler: AppHandler::new(handler),
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
        let (shared, handler) = (self.shared.clone(), self.handler.clone());
        upgrade.on_upgrade(SUBPROTOCOL, move |io| {
            let tracker = shared.tracker.clone();
            let socket = Socket::new(io, shared.config.max_message_bytes);
            tracker.track_future(connection::run(shared, handler, socket, request))
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
        let exclude = exclude_user.map_or(Exclude::Nobody, Exclude::User);
        client::broadcast(&self.shared, &lobby, data, exclude, exclude_user)
    }

    /// Sends `data` to every connection of `user` as a `direct` frame from the backend.
    /// Returns how many connections it was queued for.
    pub fn send_to_user<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
    ) -> Result<usize, Error> {
        client::send_to_user(&self.shared, user, data)
    }

    /// Sends `data` to one connection as a `direct` frame from the backend.
    pub fn send_to_connection<T: Serialize + ?Sized>(
        &self,
        id: &str,
        data: &T,
    ) -> Result<(), Error> {
        let conn = self.find(id)?;
        client::send_direct(&self.shared, &conn, data)
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
        self.shared.end_leave_graces();
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

    /// Opens an SSE stream for `request`, with the same admission as a WebSocket. A refusal
    /// is an HTTP status with a JSON error body: 401 (`unauthorized`), 429 (`rate_limited`),
    /// 503 (a capacity limit or a shutdown, with `Retry-After`).
    pub async fn accept_sse(&self, request: ConnectRequest) -> Response {
        crate::sse::open(&self.shared, &self.handler, request).await
    }

    /// Hands a client frame posted for an SSE connection on this node to that connection, as
    /// if it had arrived on a socket. `user` and `lobby` are the poster's, checked against the
    /// connection's.
    pub fn sse_post(
        &self,
        connection_id: &str,
        user: &str,
        lobby: &str,
        frame: &str,
    ) -> Result<(), SsePostError> {
        self.shared.post_to_sse(connection_id, user, lobby, frame)
    }

    /// Like [`Manager::sse_post`], for a connection on any node (the cluster forwards it;
    /// then only its existence is checked here).
    pub async fn sse_post_everywhere(
        &self,
        connection_id: &str,
        user: &str,
        lobby: &str,
        frame: &str,
    ) -> Result<(), SsePostError> {
        crate::sse::post_everywhere(&self.shared, connection_id, user, lobby, frame).await
    }

    /// The handle a cluster delivers through (what other nodes send to this one).
    pub fn local_node(&self) -> LocalNode {
        LocalNode::new(&self.shared)
    }

    /// Joins this manager to a cluster (built with [`Manager::local_node`]). Call it once,
    /// before serving connections.
    pub fn attach_cluster(&self, cluster: Arc<dyn Cluster>) {
        self.shared.attach_cluster(cluster);
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

    fn find(&self, id: &str) -> Result<Arc<ConnHandle>, Error> {
        ConnectionId::seq_on(id, &self.shared.config.node_id)
            .and_then(|seq| self.shared.hub.connection(seq))
            .ok_or(Error::NoSuchConnection)
    }
}
