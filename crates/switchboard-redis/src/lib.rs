//! Cluster mode for Switchboard over Redis: several nodes, one set of lobbies.
//!
//! [`RedisCluster`] implements [`switchboard::cluster::Cluster`]:
//!
//! - limits and the user policy are reserved cluster-wide by Lua scripts (`scripts`), one
//!   atomic step per connect;
//! - lobby frames go over one channel per lobby, to which a node subscribes only while it has
//!   members there; frames for a user, and kicks, go over one channel per node;
//! - each node heartbeats into a sorted set, timed by Redis's clock (`TIME`), not its own; any
//!   node frees the connections, presence and reservations of a node silent for longer than
//!   `node_ttl`;
//! - while Redis is away the node keeps serving with local limits, and on its return it
//!   reconnects, resubscribes and re-registers its connections (`resync`).
//!
//! The design is in `docs/cluster.md` (Redis Cluster is not supported yet).
//!
//! Layout: this file holds [`RedisCluster`] (its state, start and stop, key and channel
//! names, announcements); `config` its settings and client; `cluster_impl` the [`Cluster`]
//! trait's methods; `outbound` the bounded queue and publisher; `receive` subscriptions and
//! incoming messages; `lookup` an operator's search across nodes (ask the owner, bounded);
//! `maintenance` heartbeat, sweep, reconnect and resync; `samples` every node's dashboard
//! samples and Redis's health; `scripts` the Lua.

mod cluster_impl;
mod config;
mod lookup;
mod maintenance;
mod outbound;
mod receive;
mod samples;
mod scripts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use switchboard::cluster::{
    Admission, BoxFuture, Cluster, ClusterLobby, ClusterStats, ConnectionDetails, FoundConnection,
    LocalNode, Lookup, OffsetSender, Published, Skip,
};
use switchboard::{
    ClusterHistory, ConnectionInfo, DisconnectReason, HistoryConfig, LobbyCode, UserId, UserPolicy,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::client;
pub use crate::config::{RedisConfig, TlsFiles, UrlError};
pub use crate::lookup::{ASK_TIMEOUT, MAX_ASKS, MAX_LISTED, MAX_REPLY_BYTES};
pub use crate::samples::{MAX_SAMPLE_BYTES, RedisHealth};
use crate::scripts::Scripts;

/// Separates the fields of a pub/sub payload (never in ids, lobby codes or JSON text).
const SEP: char = '\u{1f}';
/// What one queued publish costs on top of its text (the entry, its channel, the pipeline).
const ENTRY_OVERHEAD: usize = 128;
/// The default bound of the outbound queue (`redis.outbound_max_bytes`).
pub const DEFAULT_OUTBOUND_MAX_BYTES: usize = 32 << 20;

/// The Redis-backed cluster. Cheap to share (`Arc`).
pub struct RedisCluster {
    cfg: RedisConfig,
    client: redis::Client,
    local: LocalNode,
    scripts: Scripts,
    /// The command connection, once established (it reconnects by itself afterwards).
    conn: Mutex<Option<ConnectionManager>>,
    up: AtomicBool,
    /// Set when a write to Redis failed: the next healthy heartbeat re-registers everything.
    needs_resync: AtomicBool,
    /// This node's connections admitted so far (what a resync re-registers).
    conns: Mutex<HashMap<String, (ConnectionInfo, Vec<LobbyCode>)>>,
    /// Admits and releases hold it shared from their script to their change of `conns`; a
    /// resync holds it alone from its snapshot of `conns` to its script. Otherwise a resync
    /// could snapshot before a connection admitted in Redis is recorded here, and free it in
    /// Redis while it lives (uncounted by every limit and missing from presence).
    registry: tokio::sync::RwLock<()>,
    subs: tokio::sync::Mutex<Subscriptions>,
    publish: mpsc::UnboundedSender<Outgoing>,
    /// Bytes queued in `publish` (by [`Outgoing::cost`]): the queue's bound.
    queued: AtomicUsize,
    /// Questions this node asked other nodes (`lookup`), waiting for their answers; at most
    /// [`lookup::MAX_ASKS`].
    asks: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<String>>>,
    next_ask: AtomicU64,
    /// Failed calls and lost connections since start (the dashboard's errors per second).
    errors: AtomicU64,
    /// The last heartbeat's round trip, in microseconds (0: none yet).
    heartbeat_rtt_us: AtomicU64,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("node", &self.cfg.node_id)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Local members per lobby, and the subscribing half of the pub/sub connection.
#[derive(Default)]
struct Subscriptions {
    lobbies: HashMap<String, usize>,
    sink: Option<PubSubSink>,
}

/// The admit script's answer: status, refusal reason, joined (0/1), lobby users,
/// replaced "node\tid", left "lobby\tuser".
type AdmitReply = (String, String, i64, i64, Vec<String>, Vec<String>);

enum Outgoing {
    Publish {
        channel: String,
        payload: String,
    },
    /// A broadcast to number and publish with the `PUBLISH` script.
    Message {
        lobby: String,
        frame: String,
        skip: String,
        /// Where to send the offset Redis gives it (an acknowledged client broadcast).
        offset: Option<OffsetSender>,
    },
    /// A command for the other nodes holding connections of `user` (`kind`: `user` for a
    /// direct frame, `join` / `part` for the backend's membership changes).
    User {
        kind: &'static str,
        user: String,
        frame: String,
    },
}

impl Outgoing {
    /// What the entry holds in the queue, in bytes.
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + match self {
                Self::Publish { channel, payload } => channel.len() + payload.len(),
                Self::Message {
                    lobby, frame, skip, ..
                } => lobby.len() + frame.len() + skip.len(),
                Self::User { kind, user, frame } => kind.len() + user.len() + frame.len(),
            }
    }
}

/// Whose publish it is: a caller's that can be told it failed, or the node's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// A client's or the API's frame: up to `outbound_max_bytes`.
    Data,
    /// Presence events, closes: up to twice that, so data cannot crowd them out.
    Control,
}

impl RedisCluster {
    /// Creates the adapter and starts its background tasks (connection, heartbeat, pub/sub,
    /// publisher). Nothing here waits for Redis: a node starts even when Redis is away.
    pub fn start(cfg: RedisConfig, local: LocalNode) -> Result<Arc<Self>, UrlError> {
        // rustls's process-wide crypto provider (ring); a provider already installed stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = client(&cfg)?;
        let (publish, queue) = mpsc::unbounded_channel();
        let cluster = Arc::new(Self {
            cfg,
            client,
            local,
            scripts: Scripts::new(),
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            needs_resync: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            registry: tokio::sync::RwLock::new(()),
            subs: tokio::sync::Mutex::new(Subscriptions::default()),
            publish,
            queued: AtomicUsize::new(0),
            asks: Mutex::new(HashMap::new()),
            next_ask: AtomicU64::new(1),
            errors: AtomicU64::new(0),
            heartbeat_rtt_us: AtomicU64::new(0),
            stop: CancellationToken::new(),
        });
        tokio::spawn(cluster.clone().maintain());
        tokio::spawn(cluster.clone().listen());
        tokio::spawn(cluster.clone().publisher(queue));
        Ok(cluster)
    }

    /// Waits until Redis answered a first heartbeat, at most `timeout`; whether it did.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.up.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Leaves the cluster after a graceful shutdown: frees whatever this node still holds and
    /// removes it from the node set, then stops the background tasks.
    pub async fn leave(&self) {
        if let Some(mut con) = self.connection() {
            let left: Result<Vec<String>, _> = self
                .scripts
                .leave
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(&self.cfg.node_id)
                .invoke_async(&mut con)
                .await;
            if let Ok(left) = left {
                self.announce_left(&left);
            }
        }
        self.stop.cancel();
    }

    fn history_ttl_ms(&self) -> u64 {
        (self.cfg.history.ttl.as_millis() as u64).max(1)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.cfg.key_prefix)
    }

    fn lobby_channel(&self, lobby: &str) -> String {
        self.key(&format!("chan:lobby:{lobby}"))
    }

    fn node_channel(&self, node: &str) -> String {
        self.key(&format!("chan:node:{node}"))
    }

    /// Every node listens here: word that a node's members of a lobby are behind.
    fn nodes_channel(&self) -> String {
        self.key("chan:nodes")
    }

    fn connection(&self) -> Option<ConnectionManager> {
        if !self.up.load(Ordering::SeqCst) {
            return None;
        }
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a failed Redis call: the node serves locally until the next good heartbeat.
    fn failed(&self, what: &str, error: &redis::RedisError) {
        metrics::counter!("switchboard_redis_errors_total").increment(1);
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::error!(%error, what, "redis unavailable: serving with local limits");
        }
        self.needs_resync.store(true, Ordering::SeqCst);
    }

    /// Delivers presence events locally and to the other nodes. `items` are "lobby\tuser".
    /// Tells this node's app about presence changes this node's script made true (so exactly
    /// one node tells), then the clients (`announce_events`). `items` are "lobby\tuser".
    fn announce(&self, items: &[String], joined: bool) {
        self.tell_app(items, joined);
        self.announce_events(items, joined);
    }

    /// Like [`announce`](Self::announce), for changes whose lobbies' user counts are known
    /// (`users[i]` for `items[i]`): the app hears every one, the clients only those in lobbies
    /// of at most `presence.events_max_members` users.
    fn announce_sized(&self, items: &[String], users: &[i64], joined: bool) {
        self.tell_app(items, joined);
        let small: Vec<String> = items
            .iter()
            .zip(users)
            .filter(|(_, users)| **users as usize <= self.cfg.events_max_members)
            .map(|(item, _)| item.clone())
            .collect();
        self.announce_events(&small, joined);
    }

    /// Tells this node's app (`Handler::on_presence`) about presence changes, whatever the
    /// lobby's size: the app hears every one, the clients only in small lobbies.
    fn tell_app(&self, items: &[String], joined: bool) {
        for (lobby, user) in items.iter().filter_map(|item| item.split_once('\t')) {
            self.local.presence_changed(lobby, user, joined);
        }
    }

    /// Sends join/leave events to the lobby's members on every node, when events are on.
    fn announce_events(&self, items: &[String], joined: bool) {
        if !self.cfg.presence_events {
            return;
        }
        for item in items {
            let Some((lobby, user)) = item.split_once('\t') else {
                continue;
            };
            let (Ok(lobby), Ok(user)) = (LobbyCode::parse(lobby), UserId::parse(user)) else {
                continue;
            };
            let frame = LocalNode::presence_event(&lobby, &user, joined);
            self.local.deliver_event(lobby.as_str(), frame.clone());
            self.publish_event(&lobby, &frame);
        }
    }

    fn announce_left(&self, items: &[String]) {
        self.announce(items, false);
    }

    /// Publishes a join/leave event on the lobby's channel for the other nodes.
    fn publish_event(&self, lobby: &LobbyCode, frame: &str) {
        if !self.up.load(Ordering::Relaxed) {
            return;
        }
        let payload = format!("{}{SEP}{frame}", self.cfg.node_id);
        self.enqueue(
            Outgoing::Publish {
                channel: self.lobby_channel(lobby.as_str()),
                payload,
            },
            Priority::Control,
        );
    }

    /// This node's wall clock in ms since the Unix epoch, for history timestamps only
    /// (liveness runs on Redis's clock); shifted by the test-only clock offset.
    fn local_ms(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        now.saturating_add(self.cfg.clock_offset_ms).max(0) as u64
    }

    /// Publishes `payload` on the channel of the node holding connection `id` (its id names
    /// it), if that connection exists there: whether it does, `None` when Redis cannot answer
    /// or the outbound queue is full.
    async fn send_to_owner(&self, id: &str, payload: String, priority: Priority) -> Option<bool> {
        let (node, _) = id.rsplit_once('-')?;
        if node == self.cfg.node_id {
            return Some(false);
        }
        let mut con = self.connection()?;
        let exists: bool = con
            .hexists(self.key(&format!("node:{node}")), id)
            .await
            .ok()?;
        if exists
            && !self.enqueue(
                Outgoing::Publish {
                    channel: self.node_channel(node),
                    payload,
                },
                priority,
            )
        {
            return None;
        }
        Some(exists)
    }

    /// Records that a connection of this node is in `lobby` (what a resync re-registers).
    fn record_membership(&self, conn: &ConnectionInfo, lobby: &LobbyCode) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, lobbies)) = conns.get_mut(conn.id.as_str())
            && !lobbies.contains(lobby)
        {
            lobbies.push(lobby.clone());
        }
    }

    async fn admit_remote(&self, conn: &ConnectionInfo, lobby: Option<&LobbyCode>) -> Admission {
        let Some(mut con) = self.connection() else {
            self.needs_resync.store(true, Ordering::SeqCst);
            return Admission::Unavailable;
        };
        let limits = &self.cfg.limits;
        let policy = match self.cfg.user_policy {
            UserPolicy::Replace => "replace",
            UserPolicy::Multi => "multi",
            UserPolicy::Reject => "reject",
        };
        let result: redis::RedisResult<AdmitReply> = self
            .scripts
            .admit
            .arg(&self.cfg.key_prefix)
            .arg(self.history_ttl_ms())
            .arg(&self.cfg.node_id)
            .arg(conn.id.as_str())
            .arg(conn.user_id.as_str())
            .arg(lobby.map_or("", LobbyCode::as_str))
            .arg(limits.ip_key(conn.ip).to_string())
            .arg(limits.max_connections)
            .arg(limits.max_per_lobby)
            .arg(limits.max_per_user)
            .arg(limits.max_per_ip)
            .arg(policy)
            .invoke_async(&mut con)
            .await;
        let (status, reason, joined, members, replaced, left) = match result {
            Ok(r) => r,
            Err(error) => {
                self.failed("admit", &error);
                return Admission::Unavailable;
            }
        };
        if status != "ok" {
            let reason = DisconnectReason::ALL
                .into_iter()
                .find(|r| r.as_str() == reason)
                .unwrap_or(DisconnectReason::ServerFull);
            return Admission::Refused(reason);
        }
        for old in &replaced {
            let Some((node, id)) = old.split_once('\t') else {
                continue;
            };
            if node != self.cfg.node_id {
                let payload = format!("close{SEP}{id}{SEP}{}", DisconnectReason::Replaced.as_str());
                self.enqueue(
                    Outgoing::Publish {
                        channel: self.node_channel(node),
                        payload,
                    },
                    Priority::Control,
                );
            }
        }
        self.announce_left(&left);
        let events = self.cfg.presence_events && members as usize <= self.cfg.events_max_members;
        if let (1, Some(lobby)) = (joined, lobby) {
            self.announce_sized(&[format!("{lobby}\t{}", conn.user_id)], &[members], true);
        }
        Admission::Admitted {
            presence_events: events,
        }
    }
}
