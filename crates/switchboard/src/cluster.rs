//! The seam for running several nodes as one: a [`Cluster`] the manager consults at connect
//! and disconnect and tells about what it delivers, and a [`LocalNode`] handle through which
//! the cluster delivers what other nodes sent.
//!
//! Without a cluster everything is local. `switchboard-redis` implements it over Redis; the
//! design is in `docs/cluster.md`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};

use crate::disconnect::DisconnectReason;
use crate::handle::{ConnHandle, ConnectionInfo, LostConnection};
use crate::history::Broadcast;
use crate::hub::Hub;
use crate::ids::{LobbyCode, UserId};
use crate::protocol::text;

pub use crate::skip::Skip;

/// Where a cluster sends the offset it gave a broadcast ([`Cluster::publish_message`]).
pub type OffsetSender = tokio::sync::oneshot::Sender<u64>;

/// A boxed future, so [`Cluster`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the cluster did with a frame handed to it for the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// Queued for the other nodes.
    Queued,
    /// The cluster cannot be reached: this node delivers alone (as a single node would).
    Unavailable,
    /// The node's outbound queue to the cluster is full: nothing was sent anywhere, and the
    /// caller is told so (an `error` `overloaded` to a client, 503 to the HTTP API).
    Overloaded,
}

/// The cluster's answer to a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Every limit reserved cluster-wide; the user's older connections on other nodes are
    /// being closed (policy `replace`). Presence events for this connection come from the
    /// cluster, not from this node.
    Admitted {
        /// Whether the lobby sends join/leave events (its size cluster-wide).
        presence_events: bool,
    },
    /// A cluster-wide limit refuses it.
    Refused(DisconnectReason),
    /// The cluster cannot be reached: limits and presence fall back to this node's view.
    Unavailable,
}

/// Cluster-wide counts, for stats.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Live nodes.
    pub nodes: usize,
    /// Connections on every node.
    pub total_connections: usize,
    /// Lobbies with members on any node.
    pub active_lobbies: usize,
    /// Users with connections on any node.
    pub users: usize,
}

impl ClusterStats {
    /// Counts from a cluster.
    pub fn new(
        nodes: usize,
        total_connections: usize,
        active_lobbies: usize,
        users: usize,
    ) -> Self {
        Self {
            nodes,
            total_connections,
            active_lobbies,
            users,
        }
    }
}

/// A lobby with cluster-wide counts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterLobby {
    /// The lobby code.
    pub lobby: String,
    /// Connections on every node.
    pub connections: usize,
    /// Distinct users on every node.
    pub users: usize,
}

/// One connection as an operator sees it, from the node that holds it (its memory): who,
/// where from, since when, its lobbies, transport, frames queued for it, last ping round trip.
/// What `GET /api/connections/{id}` answers; other nodes get it by asking the owner
/// ([`Cluster::lookup`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[non_exhaustive]
pub struct ConnectionDetails {
    /// `NODE-SEQ`.
    pub id: String,
    /// Its user.
    pub user_id: String,
    /// 1 or 2.
    pub protocol: u8,
    /// The client's IP.
    pub ip: String,
    /// When it was accepted (ms since the Unix epoch).
    pub connected_at: u64,
    /// Its lobbies, in the order it joined them.
    pub lobbies: Vec<String>,
    /// `websocket` or `sse`.
    pub transport: String,
    /// Frames queued for it, not written yet.
    pub queued: usize,
    /// The last ping round trip, in ms.
    pub rtt_ms: Option<f64>,
}

impl ConnectionDetails {
    /// The details of this node's connections that `what` names, at most `max`.
    pub(crate) fn find(hub: &Hub, what: Lookup<'_>, max: usize) -> Vec<Self> {
        let conns = match what {
            Lookup::User(user) => hub.user_connections(user),
            Lookup::Connection(id) => hub.connection_by_id(id).into_iter().collect(),
        };
        conns.iter().take(max).map(|c| Self::of(hub, c)).collect()
    }

    /// The details of a connection of this node, from its registry.
    pub(crate) fn of(hub: &Hub, conn: &ConnHandle) -> Self {
        let state = conn.state();
        Self {
            id: conn.info.id.as_str().to_owned(),
            user_id: conn.info.user_id.as_str().to_owned(),
            protocol: conn.info.protocol,
            ip: conn.info.ip.to_string(),
            connected_at: conn
                .info
                .connected_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            lobbies: hub
                .lobbies_of(conn.seq)
                .into_iter()
                .map(|l| l.as_str().to_owned())
                .collect(),
            transport: state.transport.to_owned(),
            queued: state.queued,
            rtt_ms: state.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
        }
    }
}

/// What an operator looks for ([`Cluster::lookup`], [`LocalNode::details`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Every connection of a user.
    User(&'a str),
    /// One connection, by its `NODE-SEQ` id.
    Connection(&'a str),
}

/// A connection another node holds, found through the cluster: what the cluster's shared
/// state records about it, and its owner's live details when the owner answered in time.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FoundConnection {
    /// The node holding it.
    pub node: String,
    /// `NODE-SEQ`.
    pub id: String,
    /// Its user.
    pub user_id: String,
    /// The client's address as the limits count it.
    pub ip: String,
    /// Its lobbies as the cluster records them.
    pub lobbies: Vec<String>,
    /// The owner's answer; `None` when it gave none (see `unavailable`).
    pub live: Option<ConnectionDetails>,
    /// Why there are no live details: `timeout` (the owner did not answer in time: busy,
    /// frozen or dead), `busy` (this node had too many questions outstanding), `overloaded`
    /// (the question could not be queued).
    pub unavailable: Option<&'static str>,
}

impl FoundConnection {
    /// An entry from the cluster's records.
    pub fn new(
        node: String,
        id: String,
        user_id: String,
        ip: String,
        lobbies: Vec<String>,
    ) -> Self {
        Self {
            node,
            id,
            user_id,
            ip,
            lobbies,
            live: None,
            unavailable: None,
        }
    }
}

/// What several nodes share. Every method must be quick or asynchronous: they are called on
/// connection tasks and by the HTTP API.
///
/// Contract: for every connection, `admit` is called once before it is registered; unless
/// it returned [`Admission::Refused`], `release` is called once after it ended (or after a
/// local refusal).
pub trait Cluster: Send + Sync + 'static {
    /// Reserves the cluster-wide limits for a new connection (in `lobby`, or, protocol v2, in
    /// none yet) and applies the user policy across nodes.
    fn admit<'a>(
        &'a self,
        conn: &'a ConnectionInfo,
        lobby: Option<&'a LobbyCode>,
    ) -> BoxFuture<'a, Admission>;

    /// Frees what `admit` and `join` reserved, every membership included; sends `member_left`
    /// cluster-wide for every lobby where it was the user's last connection.
    fn release<'a>(&'a self, conn: &'a ConnectionInfo) -> BoxFuture<'a, ()>;

    /// Protocol v2: puts an admitted connection in one more lobby, within the lobby's cap
    /// cluster-wide ([`Admission::Refused`] with `LobbyFull`), and sends `member_joined`
    /// cluster-wide when its user is new there.
    fn join<'a>(
        &'a self,
        conn: &'a ConnectionInfo,
        lobby: &'a LobbyCode,
    ) -> BoxFuture<'a, Admission>;

    /// Protocol v2: takes a connection out of one lobby; `member_left` cluster-wide when it
    /// was its user's last connection there.
    fn leave<'a>(&'a self, conn: &'a ConnectionInfo, lobby: &'a LobbyCode) -> BoxFuture<'a, ()>;

    /// A broadcast (`message` encoded without an offset): the cluster numbers it and every
    /// node, this one included, delivers it through [`LocalNode::deliver_numbered`], in one
    /// order. [`Published::Unavailable`]: the cluster cannot take it now; this node delivers
    /// it alone. [`Published::Overloaded`]: nobody delivers it; the caller is told.
    /// With `offset`, the cluster sends there the offset it gave the broadcast once it has
    /// numbered it (dropping it unsent when it could not).
    fn publish_message(
        &self,
        lobby: &LobbyCode,
        frame: &str,
        skip: Skip<'_>,
        offset: Option<OffsetSender>,
    ) -> Published;

    /// The lobby's cluster-wide epoch and last offset, and the broadcasts after `since` it
    /// still keeps (for `welcome` and recovery on any node); `None` when it cannot answer.
    fn history<'a>(
        &'a self,
        lobby: &'a LobbyCode,
        since: Option<u64>,
    ) -> BoxFuture<'a, Option<crate::history::ClusterHistory>>;

    /// A frame for `user`: the other nodes holding the user's connections deliver it. Called
    /// before this node delivers it to its own: on [`Published::Overloaded`] nobody does, and
    /// the caller is told.
    fn publish_user(&self, user: &str, frame: &str) -> Published;

    /// The backend's join (`join`) or removal of `user`'s connections in `lobby`: the other
    /// nodes holding connections of the user do it to theirs.
    fn membership_for_user(&self, user: &str, lobby: &LobbyCode, join: bool) -> Published;

    /// The lobby's users on every node, or `None` when the cluster cannot answer.
    fn presence<'a>(&'a self, lobby: &'a LobbyCode) -> BoxFuture<'a, Option<Vec<String>>>;

    /// Every lobby with cluster-wide counts, or `None` when the cluster cannot answer.
    fn lobbies(&self) -> BoxFuture<'_, Option<Vec<ClusterLobby>>>;

    /// Closes the user's connections on the other nodes; how many, if the cluster answers.
    fn close_user<'a>(
        &'a self,
        user: &'a str,
        reason: DisconnectReason,
    ) -> BoxFuture<'a, Option<usize>>;

    /// Hands an encoded frame to a connection held by another node; whether it exists, if the
    /// cluster answers.
    fn send_to_connection<'a>(&'a self, id: &'a str, frame: &'a str)
    -> BoxFuture<'a, Option<bool>>;

    /// Closes a connection held by another node; whether it exists, if the cluster answers.
    fn close_connection<'a>(
        &'a self,
        id: &'a str,
        reason: DisconnectReason,
    ) -> BoxFuture<'a, Option<bool>>;

    /// Forwards a client frame posted for an SSE connection held by another node; whether
    /// the connection exists, if the cluster answers.
    fn forward_post<'a>(
        &'a self,
        id: &'a str,
        user: &'a str,
        lobby: &'a str,
        frame: &'a str,
    ) -> BoxFuture<'a, Option<bool>>;

    /// The connections other nodes hold of a user, or the one connection `id` names when
    /// another node holds it, each with its owner's live details when the owner answers
    /// within a bounded time; `None` when the cluster cannot answer. Never waits long: a
    /// node that does not answer in time gives its entries without live details.
    fn lookup<'a>(&'a self, what: Lookup<'a>) -> BoxFuture<'a, Option<Vec<FoundConnection>>> {
        let _ = what;
        Box::pin(async { None })
    }

    /// Cluster-wide counts, if the cluster answers.
    fn stats(&self) -> BoxFuture<'_, Option<ClusterStats>>;

    /// `"up"` or `"down"`, for readiness and metrics.
    fn status(&self) -> &'static str;

    /// Tells every node that this node's members of `lobby` are behind, so that each sheds
    /// publishes to it for a while ([`LocalNode::pressed_elsewhere`]); repeated while they
    /// stay behind. Must not wait (it is called under the registry's lock). The default tells
    /// nobody: only this node sheds.
    fn tell_pressure(&self, lobby: &LobbyCode) {
        let _ = lobby;
    }
}

/// What a cluster delivers to on this node: its id, its registry, and its SSE connections'
/// inbound queues. The manager's shared state implements it; the seam keeps this module below
/// the manager.
pub(crate) trait Node: Send + Sync {
    /// The node's id (the prefix of its connection ids).
    fn node_id(&self) -> &str;
    /// The node's registry.
    fn hub(&self) -> &Hub;
    /// Delivers a frame posted for one of the node's SSE connections; whether it was taken.
    fn post(&self, id: &str, user: &str, lobby: &str, frame: &str) -> bool;
    /// Joins the node's v2 connections of `user` to `lobby` (or takes them out), from a task.
    fn membership_for_user(self: Arc<Self>, user: &str, lobby: &str, join: bool);
    /// Tells the node's app about a presence change the cluster made true on this node.
    fn presence_changed(&self, lobby: &LobbyCode, user: &UserId, joined: bool);
    /// Tells the node's app about a dead node's connection this node freed.
    fn connection_lost(&self, lost: LostConnection);
}

/// The local side a cluster delivers to: a weak handle on the manager, so the cluster can be
/// owned by the manager without a reference cycle.
#[derive(Clone)]
pub struct LocalNode {
    shared: Weak<dyn Node>,
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode")
            .field("node_id", &self.node_id())
            .finish()
    }
}

/// A batch of deliveries in progress on this thread ([`LocalNode::batch`]): the members its
/// broadcasts reached are woken when it drops.
#[must_use = "the members are woken when the batch drops"]
pub struct DeliveryBatch {
    _cork: crate::cork::Cork,
}

impl std::fmt::Debug for DeliveryBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveryBatch")
    }
}

impl LocalNode {
    pub(crate) fn new<N: Node + 'static>(node: &Arc<N>) -> Self {
        let node: Arc<dyn Node> = node.clone();
        Self {
            shared: Arc::downgrade(&node),
        }
    }

    /// This node's id (the prefix of its connection ids).
    pub fn node_id(&self) -> Option<String> {
        Some(self.shared.upgrade()?.node_id().to_owned())
    }

    /// Starts a batch of deliveries on this thread: broadcasts delivered until the returned
    /// guard drops wake each member once, when it drops (k broadcasts to a member in one
    /// write, not up to k). Hold it over a synchronous run of deliveries that arrived together
    /// (it cannot be held across an `.await`); nothing waits for it but those wakes.
    pub fn batch(&self) -> DeliveryBatch {
        DeliveryBatch {
            _cork: crate::cork::cork(),
        }
    }

    /// Delivers a join/leave event (encoded) to this node's members of `lobby`. Broadcasts go
    /// through [`LocalNode::deliver_numbered`].
    pub fn deliver_event(&self, lobby: &str, frame: String) -> usize {
        let Some(shared) = self.shared.upgrade() else {
            return 0;
        };
        shared.hub().broadcast_event(lobby, &text(frame))
    }

    /// Delivers a broadcast the cluster numbered to this node's members of `lobby`.
    pub fn deliver_numbered(
        &self,
        lobby: &str,
        epoch: &str,
        offset: u64,
        frame: String,
        skip: Skip<'_>,
    ) -> usize {
        let (Some(shared), Ok(code)) = (self.shared.upgrade(), LobbyCode::parse(lobby)) else {
            return 0;
        };
        let broadcast = Broadcast::Numbered {
            epoch,
            offset,
            frame: text(frame),
        };
        shared
            .hub()
            .publish(&code, broadcast, skip)
            .map_or(0, |(reached, _)| reached)
    }

    /// Delivers an encoded frame from another node to this node's connections of `user`.
    pub fn deliver_user(&self, user: &str, frame: String) -> usize {
        let Some(shared) = self.shared.upgrade() else {
            return 0;
        };
        shared.hub().send_to_user(user, &text(frame))
    }

    /// Queues an encoded frame (a `direct` from the backend, sent on another node) for one of
    /// this node's connections; whether it was queued.
    pub fn deliver_to_connection(&self, id: &str, frame: String) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        shared
            .hub()
            .connection_by_id(id)
            .is_some_and(|c| shared.hub().deliver(&c, text(frame)) == crate::handle::Offer::Queued)
    }

    /// The live details of this node's connections that `what` names, at most `max`
    /// (what another node asks for an operator).
    pub fn details(&self, what: Lookup<'_>, max: usize) -> Vec<ConnectionDetails> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        ConnectionDetails::find(shared.hub(), what, max)
    }

    /// Closes one of this node's connections; whether it was here.
    pub fn close_connection(&self, id: &str, reason: DisconnectReason) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        shared
            .hub()
            .connection_by_id(id)
            .is_some_and(|c| c.close(reason))
    }

    /// Closes this node's connections of `user`; how many.
    pub fn close_user(&self, user: &str, reason: DisconnectReason) -> usize {
        let Some(shared) = self.shared.upgrade() else {
            return 0;
        };
        let conns = shared.hub().user_connections(user);
        conns.iter().filter(|c| c.close(reason)).count()
    }

    /// Joins this node's v2 connections of `user` to `lobby` (`join`), or takes this node's
    /// connections of `user` out of it, as the backend asked on another node. Runs on a task.
    pub fn membership_for_user(&self, user: &str, lobby: &str, join: bool) {
        if let Some(shared) = self.shared.upgrade() {
            shared.membership_for_user(user, lobby, join);
        }
    }

    /// Tells this node's app (`Handler::on_presence`) that `user` joined or left `lobby`,
    /// a change this node's call to the cluster made true: exactly one node is told.
    pub fn presence_changed(&self, lobby: &str, user: &str, joined: bool) {
        let (Some(shared), Ok(lobby), Ok(user)) = (
            self.shared.upgrade(),
            LobbyCode::parse(lobby),
            UserId::parse(user),
        ) else {
            return;
        };
        shared.presence_changed(&lobby, &user, joined);
    }

    /// Tells this node's app (`Handler::on_connection_lost`) about a connection of the dead
    /// `node` whose state this node's sweep freed: exactly one node is told.
    pub fn connection_lost(&self, node: &str, id: &str, user: &str, ip: &str) {
        let (Some(shared), Ok(user_id)) = (self.shared.upgrade(), UserId::parse(user)) else {
            return;
        };
        shared.connection_lost(LostConnection {
            id: id.to_owned(),
            user_id,
            ip: ip.to_owned(),
            node: node.to_owned(),
        });
    }

    /// Another node's members of `lobby` are behind: this node sheds publishes to it for a
    /// second, unless told again.
    pub fn pressed_elsewhere(&self, lobby: &str) {
        if let (Some(shared), Ok(lobby)) = (self.shared.upgrade(), LobbyCode::parse(lobby)) {
            shared.hub().pressed_elsewhere(lobby);
        }
    }

    /// This node is behind its pub/sub stream, which still holds broadcasts of `lobby`: it
    /// sheds publishes to the lobby for a while and tells every node to (through
    /// [`Cluster::tell_pressure`], at most every 250 ms). Whether it told them now.
    pub fn behind_upstream(&self, lobby: &str) -> bool {
        match (self.shared.upgrade(), LobbyCode::parse(lobby)) {
            (Some(shared), Ok(lobby)) => shared.hub().behind_upstream(lobby),
            _ => false,
        }
    }

    /// Whether publishes to `lobby` are shed now (its members are behind here or elsewhere);
    /// a broadcast shed this way is counted.
    pub fn pressed(&self, lobby: &str) -> bool {
        match (self.shared.upgrade(), LobbyCode::parse(lobby)) {
            (Some(shared), Ok(lobby)) => shared.hub().pressed(&lobby),
            _ => false,
        }
    }

    /// Delivers a frame posted (on another node) for one of this node's SSE connections.
    pub fn post(&self, id: &str, user: &str, lobby: &str, frame: &str) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        shared.post(id, user, lobby, frame)
    }

    /// Encodes a presence event frame (`member_joined` / `member_left`).
    pub fn presence_event(lobby: &LobbyCode, user: &UserId, joined: bool) -> String {
        use crate::protocol::ServerFrame;
        if joined {
            ServerFrame::MemberJoined {
                lobby,
                user_id: user,
            }
            .encode()
        } else {
            ServerFrame::MemberLeft {
                lobby,
                user_id: user,
            }
            .encode()
        }
    }
}
