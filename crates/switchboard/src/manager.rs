//! [`Manager`]: the cheap-clone handle an app keeps, and the methods a backend calls.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::time::Instant;

use crate::client;
use crate::cluster::{
    Cluster, ClusterStats, ConnectionDetails, FoundConnection, LocalNode, Lookup,
};
use crate::config::{Config, ConfigError};
use crate::connection::{self, Socket};
use crate::disconnect::DisconnectReason;
use crate::error::{Error, SsePostError};
use crate::handle::{ConnHandle, ConnectionInfo, ConnectionState, Offer};
use crate::handler::{AppHandler, Handler, NoHandler};
use crate::history::Recovery;
use crate::hub::{Join, LeftReason, Notice};
use crate::ids::{LobbyCode, UserId};
use crate::request::ConnectRequest;
use crate::shared::Shared;
use crate::skip::Skip;
use crate::stats::Stats;
use crate::ws::Upgrade;

/// The subprotocol of protocol v1 a client may offer; it is echoed when offered.
pub const SUBPROTOCOL: &str = "switchboard.v1";

/// The subprotocol of protocol v2 (one connection in many lobbies); echoed when offered, and
/// chosen over v1 when a client offers both.
pub const SUBPROTOCOL_V2: &str = "switchboard.v2";

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
        let shared = Arc::new(Shared::new(config));
        let handler = AppHandler::new(handler);
        let app = handler.clone();
        let presence = handler.wants_presence();
        shared.hub.listen(
            Arc::new(move |notice| match notice {
                Notice::Presence {
                    lobby,
                    user,
                    joined,
                } => app.on_presence(&lobby, &user, joined),
                Notice::Lost(lost) => app.on_connection_lost(&lost),
            }),
            presence,
        );
        Ok(Self { shared, handler })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Completes a WebSocket upgrade and runs the connection: limits are reserved, `welcome`
    /// sent, and from then on the manager owns it. Refusals by a limit are closes with 4002,
    /// which the client can read, rather than HTTP statuses it cannot.
    ///
    /// A client that offers the subprotocol [`SUBPROTOCOL_V2`] speaks protocol v2 (any number
    /// of lobbies, joined and left on the live connection; `request.lobby` may be `None`);
    /// any other client speaks v1, in `request.lobby` (a v1 request without one is refused
    /// with 400).
    pub fn accept(&self, upgrade: Upgrade, request: ConnectRequest) -> Response {
        let v2 = upgrade.offers(SUBPROTOCOL_V2);
        if request.lobby.is_none() && !v2 {
            let message = "protocol v1 connects to a lobby: /ws/{lobby} (or offer switchboard.v2)";
            return (axum::http::StatusCode::BAD_REQUEST, message).into_response();
        }
        let (shared, handler) = (self.shared.clone(), self.handler.clone());
        let (subprotocol, version) = if v2 {
            (SUBPROTOCOL_V2, 2)
        } else {
            (SUBPROTOCOL, 1)
        };
        let upgrade = upgrade.with_deflate(shared.config.compression.enabled);
        let deflate = upgrade.deflate();
        upgrade.on_upgrade(subprotocol, move |io| {
            let socket = Socket::new(io, shared.config.max_message_bytes, deflate);
            connection::start(shared, handler, socket, request, version)
        })
    }

    /// Completes a WebSocket upgrade only to close it with `reason` (e.g. 4001 for a bad
    /// token), so that a browser client can tell why.
    pub fn refuse(&self, upgrade: Upgrade, reason: DisconnectReason) -> Response {
        let shared = self.shared.clone();
        shared.counters.rejected(reason);
        let subprotocol = if upgrade.offers(SUBPROTOCOL_V2) {
            SUBPROTOCOL_V2
        } else {
            SUBPROTOCOL
        };
        upgrade.on_upgrade(subprotocol, move |io| {
            let timeout = shared.config.close_timeout;
            let socket = Socket::new(io, shared.config.max_message_bytes, None);
            shared
                .tracker
                .track_future(socket.close(None, reason, timeout))
        })
    }

    /// Sends `data` to every connection in `lobby`, on every node, as a `message` frame from
    /// the backend (`from: null`), leaving out whom `skip` names. The frame is encoded once.
    /// Returns how many connections of this node it was queued for.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        lobby: &str,
        data: &T,
        skip: Skip<'_>,
    ) -> Result<usize, Error> {
        let lobby = LobbyCode::parse(lobby)?;
        client::broadcast(&self.shared, &lobby, data, skip)
    }

    /// Sends `data` to every connection of `user`, on every node, as a `direct` frame from the
    /// backend. Returns how many connections of this node it was queued for.
    pub fn send_to_user<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
    ) -> Result<usize, Error> {
        client::send_to_user(&self.shared, user, data)
    }

    /// Sends `data` to one connection, on whichever node holds it, as a `direct` frame from
    /// the backend. [`Error::NoSuchConnection`] when no node has it; [`Error::Overloaded`]
    /// when the cluster cannot take the frame now.
    pub async fn send_to_connection<T: Serialize + ?Sized>(
        &self,
        id: &str,
        data: &T,
    ) -> Result<(), Error> {
        let conn = self.find(id).ok();
        client::send_to_connection(&self.shared, id, conn.as_deref(), data).await
    }

    /// The users present in a lobby on every node, sorted (each once, however many
    /// connections they have). This node's view when the cluster cannot answer.
    pub async fn presence(&self, lobby: &str) -> Result<Vec<UserId>, Error> {
        let code = LobbyCode::parse(lobby)?;
        Ok(match self.shared.presence_everywhere(&code).await {
            Some(users) => users.iter().filter_map(|u| UserId::parse(u).ok()).collect(),
            None => self.shared.hub.presence(&code),
        })
    }

    /// Every lobby with its connection and user counts on every node, sorted by code. This
    /// node's view when the cluster cannot answer.
    pub async fn lobbies(&self) -> Vec<LobbyInfo> {
        if let Some(lobbies) = self.shared.lobbies_everywhere().await {
            return lobbies
                .into_iter()
                .filter_map(|l| {
                    Some(LobbyInfo {
                        lobby: LobbyCode::parse(&l.lobby).ok()?,
                        connections: l.connections,
                        users: l.users,
                    })
                })
                .collect();
        }
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

    /// What is known about one connection of this node.
    pub fn connection(&self, id: &str) -> Option<ConnectionInfo> {
        self.find(id).ok().map(|c| c.info.clone())
    }

    /// The connections of a user on this node.
    pub fn user_connections(&self, user: &str) -> Vec<ConnectionInfo> {
        self.shared
            .hub
            .user_connections(user)
            .iter()
            .map(|c| c.info.clone())
            .collect()
    }

    /// Closes every connection of a user, on every node, with `reason` (4009 `kicked` for a
    /// backend's kick). Returns how many were closed.
    pub async fn disconnect_user(&self, user: &str, reason: DisconnectReason) -> usize {
        let conns = self.shared.hub.user_connections(user);
        let here = conns.iter().filter(|c| c.close(reason)).count();
        here + self.shared.close_user_elsewhere(user, reason).await
    }

    /// Closes one connection with `reason`, wherever it is (its id names its node).
    pub async fn disconnect(&self, id: &str, reason: DisconnectReason) -> Result<(), Error> {
        if let Ok(conn) = self.find(id) {
            conn.close(reason);
            return Ok(());
        }
        if self.shared.close_connection_elsewhere(id, reason).await {
            Ok(())
        } else {
            Err(Error::NoSuchConnection)
        }
    }

    /// Joins a protocol-v2 connection of this node to a lobby (a server-side subscription):
    /// it gets `joined` without an `id`, then the lobby's traffic. The same limits as a
    /// client's `join` apply ([`Error::Refused`] carries the code). A v1 connection cannot
    /// join a second lobby: [`Error::ProtocolV1`].
    pub async fn join(&self, connection_id: &str, lobby: &str) -> Result<(), Error> {
        let lobby = LobbyCode::parse(lobby)?;
        let conn = self.find(connection_id)?;
        if !conn.v2() {
            return Err(Error::ProtocolV1);
        }
        self.shared
            .join(&conn, Join::new(&lobby), None)
            .await
            .map_err(Error::Refused)
    }

    /// Kicks a connection of this node out of a lobby (moderation): a v2 connection gets
    /// `left` with reason `kicked` and stays connected; a v1 connection, which lives in its
    /// one lobby, is closed with 4009 `kicked`. Returns whether it was in the lobby.
    pub async fn leave(&self, connection_id: &str, lobby: &str) -> Result<bool, Error> {
        let lobby = LobbyCode::parse(lobby)?;
        let conn = self.find(connection_id)?;
        Ok(self
            .shared
            .remove_from(&conn, &lobby, LeftReason::Kicked)
            .await)
    }

    /// Joins every protocol-v2 connection of `user` to a lobby, on every node (v1 connections
    /// are left as they are). Returns how many joined on this node (already being in it
    /// counts); in a cluster the other nodes holding the user's connections are told to join
    /// theirs ([`Error::Overloaded`] when that cannot be queued: then no node was told).
    pub async fn join_user(&self, user: &str, lobby: &str) -> Result<usize, Error> {
        let lobby = LobbyCode::parse(lobby)?;
        self.shared.tell_user_elsewhere(user, &lobby, true)?;
        Ok(self.shared.join_user_here(user, &lobby).await)
    }

    /// Takes every connection of `user` out of a lobby, on every node, as
    /// [`leave`](Self::leave) does one. Returns how many were in it on this node.
    pub async fn leave_user(&self, user: &str, lobby: &str) -> Result<usize, Error> {
        let lobby = LobbyCode::parse(lobby)?;
        self.shared.tell_user_elsewhere(user, &lobby, false)?;
        Ok(self.shared.remove_user_here(user, &lobby).await)
    }

    /// The lobbies a connection of this node is in (`None`: no such connection).
    pub fn lobbies_of(&self, connection_id: &str) -> Option<Vec<LobbyCode>> {
        let conn = self.find(connection_id).ok()?;
        Some(self.shared.hub.lobbies_of(conn.seq))
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

    /// This node's connections that `what` names, with their live details (what an operator
    /// sees of them).
    pub fn details(&self, what: Lookup<'_>) -> Vec<ConnectionDetails> {
        ConnectionDetails::find(&self.shared.hub, what, usize::MAX)
    }

    /// The connections other nodes hold that `what` names, with their owners' live details
    /// when they answer in time ([`Cluster::lookup`]); `None` without a cluster, or when it
    /// cannot answer.
    pub async fn lookup_elsewhere(&self, what: Lookup<'_>) -> Option<Vec<FoundConnection>> {
        self.shared.lookup_elsewhere(what).await
    }

    /// What one of this node's connections is doing now: its transport, the frames queued for
    /// it, its last round trip.
    pub fn connection_state(&self, id: &str) -> Option<ConnectionState> {
        Some(self.find(id).ok()?.state())
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
        self.shared.hub.end_leave_graces();
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
        crate::sse::open(&self.shared, &self.handler, request, None).await
    }

    /// Opens a protocol-v2 SSE stream for `request` (whose `lobby`, if any, is joined first),
    /// then joins `joins` in order, each with its recovery (from the browser's `Last-Event-ID`:
    /// [`crate::sse::positions_from_event_id`]); a refused join is an `error` event and the
    /// others go on. Refusals of the connection itself are as for [`accept_sse`](Self::accept_sse).
    pub async fn accept_sse_v2(
        &self,
        request: ConnectRequest,
        joins: Vec<(LobbyCode, Option<Recovery>)>,
    ) -> Response {
        crate::sse::open(&self.shared, &self.handler, request, Some(joins)).await
    }

    /// Hands a client frame posted for an SSE connection to that connection, as if it had
    /// arrived on its socket. `user` and `lobby` are the poster's, checked against the
    /// connection's (`lobby` empty: the v2 route, for a protocol-v2 connection whose frames
    /// name their lobby) (by the node that holds it: a connection on another node is reached
    /// through the cluster).
    pub async fn sse_post(
        &self,
        connection_id: &str,
        user: &str,
        lobby: &str,
        frame: &str,
    ) -> Result<(), SsePostError> {
        self.shared
            .post_anywhere(connection_id, user, lobby, frame)
            .await
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
        self.shared.cluster_status()
    }

    /// Cluster-wide counts, when part of a cluster that answers.
    pub async fn cluster_stats(&self) -> Option<ClusterStats> {
        self.shared.cluster_stats().await
    }

    fn find(&self, id: &str) -> Result<Arc<ConnHandle>, Error> {
        self.shared
            .hub
            .connection_by_id(id)
            .ok_or(Error::NoSuchConnection)
    }
}
