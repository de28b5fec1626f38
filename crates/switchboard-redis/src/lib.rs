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
//! The design, and how to run it on a Redis Cluster, is in `docs/cluster.md`.

mod scripts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use switchboard::cluster::{
    Admission, BoxFuture, Cluster, ClusterLobby, ClusterStats, LocalNode, Published, Skip,
};
use switchboard::{
    ClusterHistory, ConnectionInfo, DisconnectReason, HistoryConfig, LobbyCode, UserId, UserPolicy,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::scripts::Scripts;

/// Separates the fields of a pub/sub payload (never in ids, lobby codes or JSON text).
const SEP: char = '\u{1f}';
/// What one queued publish costs on top of its text (the entry, its channel, the pipeline).
const ENTRY_OVERHEAD: usize = 128;
/// The default bound of the outbound queue (`redis.outbound_max_bytes`).
pub const DEFAULT_OUTBOUND_MAX_BYTES: usize = 32 << 20;

/// What the adapter needs to know.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://host:port/db`, or `rediss://` for TLS (verified against the system's roots,
    /// or against `tls.ca_pem` alone when set).
    pub url: String,
    /// TLS (`rediss://`) trust and client identity; empty: the system's roots, no client
    /// certificate.
    pub tls: TlsFiles,
    /// This node's name (the manager's `node_id`).
    pub node_id: String,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// A node silent for longer than this is dead: its state is freed.
    pub node_ttl: Duration,
    /// Namespace of every key and channel.
    pub key_prefix: String,
    /// The limits and policy to enforce cluster-wide.
    pub limits: switchboard::Limits,
    /// The user policy, cluster-wide.
    pub user_policy: UserPolicy,
    /// Join/leave events on at all.
    pub presence_events: bool,
    /// No join/leave events in lobbies with more users than this.
    pub events_max_members: usize,
    /// Broadcasts kept per lobby, cluster-wide, for recovery on any node.
    pub history: HistoryConfig,
    /// Bytes of frames waiting to be published (client and API frames); past it a publish is
    /// refused and its caller told ([`Published::Overloaded`]). The node's own messages
    /// (presence events, closes) may use as much again, so clients cannot crowd them out.
    pub outbound_max_bytes: usize,
    /// Test only: shifts this node's wall clock by this many ms, to show that liveness does
    /// not depend on it (`SWITCHBOARD_TEST_CLOCK_OFFSET_MS` in the server). 0 in production.
    pub clock_offset_ms: i64,
}

impl RedisConfig {
    /// Settings for `url`, taking node id, limits, policy and presence from the manager's.
    pub fn new(url: impl Into<String>, manager: &switchboard::Config) -> Self {
        Self {
            url: url.into(),
            tls: TlsFiles::default(),
            node_id: manager.node_id.clone(),
            heartbeat: Duration::from_millis(2_000),
            node_ttl: Duration::from_millis(6_000),
            key_prefix: "switchboard:".into(),
            limits: manager.limits,
            user_policy: manager.user_policy,
            presence_events: manager.presence.events,
            events_max_members: manager.presence.events_max_members,
            history: manager.history,
            outbound_max_bytes: DEFAULT_OUTBOUND_MAX_BYTES,
            clock_offset_ms: 0,
        }
    }
}

/// PEM files for `rediss://` URLs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsFiles {
    /// Trust only these certificates (PEM), instead of the system's roots: a private CA or a
    /// self-signed Redis.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), for a Redis that requires them
    /// (`tls-auth-clients yes`, Redis's default).
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<PathBuf>,
}

/// A bad Redis configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL (or the TLS settings with it) cannot work.
    #[error("redis.url: {0}")]
    Url(#[from] redis::RedisError),
    /// A TLS file cannot be read.
    #[error("{setting}: cannot read {}: {error}", path.display())]
    File {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// The Redis client for `cfg`: plain, or TLS with the configured trust and identity.
fn client(cfg: &RedisConfig) -> Result<redis::Client, UrlError> {
    let tls = &cfg.tls;
    if tls.ca_file.is_none() && tls.client_cert_file.is_none() {
        return Ok(redis::Client::open(cfg.url.as_str())?);
    }
    let read = |setting: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|error| UrlError::File {
            setting,
            path: path.clone(),
            error,
        })
    };
    let root_cert = tls
        .ca_file
        .as_ref()
        .map(|p| read("redis.ca_file", p))
        .transpose()?;
    let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.client_cert_file", cert)?,
            client_key: read("redis.client_key_file", key)?,
        }),
        _ => None,
    };
    Ok(redis::Client::build_with_tls(
        cfg.url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )?)
}

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
    conns: Mutex<HashMap<String, ConnectionInfo>>,
    /// Admits and releases hold it shared from their script to their change of `conns`; a
    /// resync holds it alone from its snapshot of `conns` to its script. Otherwise a resync
    /// could snapshot before a connection admitted in Redis is recorded here, and free it in
    /// Redis while it lives (uncounted by every limit and missing from presence).
    registry: tokio::sync::RwLock<()>,
    subs: tokio::sync::Mutex<Subscriptions>,
    publish: mpsc::UnboundedSender<Outgoing>,
    /// Bytes queued in `publish` (by [`Outgoing::cost`]): the queue's bound.
    queued: AtomicUsize,
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
    },
    User {
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
                Self::Message { lobby, frame, skip } => lobby.len() + frame.len() + skip.len(),
                Self::User { user, frame } => user.len() + frame.len(),
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
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::error!(%error, what, "redis unavailable: serving with local limits");
        }
        self.needs_resync.store(true, Ordering::SeqCst);
    }

    /// Queues a publish within the byte bound; whether it was queued. A refusal is counted:
    /// `switchboard_redis_overloaded_total` for data (whose caller is told),
    /// `switchboard_redis_publish_dropped_total` for the node's own messages.
    fn enqueue(&self, out: Outgoing, priority: Priority) -> bool {
        let cost = out.cost();
        let ceiling = match priority {
            Priority::Data => self.cfg.outbound_max_bytes,
            Priority::Control => self.cfg.outbound_max_bytes.saturating_mul(2),
        };
        let reserved = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                q.checked_add(cost).filter(|&after| after <= ceiling)
            })
            .is_ok();
        if reserved && self.publish.send(out).is_ok() {
            return true;
        }
        if reserved {
            self.queued.fetch_sub(cost, Ordering::SeqCst);
        }
        match priority {
            Priority::Data => metrics::counter!("switchboard_redis_overloaded_total").increment(1),
            Priority::Control => {
                metrics::counter!("switchboard_redis_publish_dropped_total").increment(1);
            }
        }
        false
    }

    /// Queues a caller's frame: what to tell the caller.
    fn enqueue_data(&self, out: Outgoing) -> Published {
        if !self.up.load(Ordering::Relaxed) {
            return Published::Unavailable;
        }
        if self.enqueue(out, Priority::Data) {
            Published::Queued
        } else {
            Published::Overloaded
        }
    }

    /// Delivers presence events locally and to the other nodes. `items` are "lobby\tuser".
    fn announce(&self, items: &[String], joined: bool) {
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

    /// Keeps a connection and a heartbeat going; frees dead nodes; resyncs after trouble.
    async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let existing = self
                .conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let mut con = match existing {
                Some(con) => con,
                None => match self.connect().await {
                    Ok(con) => {
                        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(con.clone());
                        con
                    }
                    Err(error) => {
                        self.failed("connect", &error);
                        continue;
                    }
                },
            };
            // No time from here: the script reads Redis's clock.
            let beat: Result<(i64, Vec<String>), _> = self
                .scripts
                .heartbeat
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(&self.cfg.node_id)
                .arg(self.cfg.node_ttl.as_millis() as u64)
                .invoke_async(&mut con)
                .await;
            match beat {
                Ok((added, left)) => {
                    if !self.up.swap(true, Ordering::SeqCst) {
                        tracing::info!(node = %self.cfg.node_id, "redis connected");
                    }
                    metrics::gauge!("switchboard_redis_up").set(1.0);
                    self.announce_left(&left);
                    let forgotten = added == 1 && !self.conns_snapshot().is_empty();
                    if forgotten || self.needs_resync.swap(false, Ordering::SeqCst) {
                        self.resync(&mut con).await;
                    }
                }
                Err(error) => {
                    metrics::gauge!("switchboard_redis_up").set(0.0);
                    self.failed("heartbeat", &error);
                }
            }
        }
    }

    async fn connect(&self) -> redis::RedisResult<ConnectionManager> {
        let timeout = self.cfg.heartbeat.min(Duration::from_millis(1_000));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        self.client.get_connection_manager_with_config(config).await
    }

    fn conns_snapshot(&self) -> Vec<ConnectionInfo> {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Makes this node's entries in Redis match its connections exactly.
    async fn resync(&self, con: &mut ConnectionManager) {
        let _alone = self.registry.write().await;
        let conns = self.conns_snapshot();
        let mut invocation = self.scripts.resync.prepare_invoke();
        invocation
            .arg(&self.cfg.key_prefix)
            .arg(self.history_ttl_ms())
            .arg(&self.cfg.node_id);
        for c in &conns {
            invocation
                .arg(c.id.as_str())
                .arg(c.user_id.as_str())
                .arg(c.lobby.as_str())
                .arg(self.cfg.limits.ip_key(c.ip).to_string());
        }
        let synced: Result<(Vec<String>, Vec<String>), _> = invocation.invoke_async(con).await;
        match synced {
            Ok((left, joined)) => {
                tracing::info!(connections = conns.len(), "re-registered with redis");
                self.announce(&left, false);
                self.announce(&joined, true);
            }
            Err(error) => self.failed("resync", &error),
        }
    }

    /// The pub/sub connection: (re)connects, (re)subscribes, and hands messages to the node.
    async fn listen(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let pubsub = tokio::select! {
                () = self.stop.cancelled() => return,
                p = self.client.get_async_pubsub() => p,
            };
            let (mut sink, mut stream) = match pubsub {
                Ok(p) => p.split(),
                Err(error) => {
                    self.failed("pubsub connect", &error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.heartbeat);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let node_channel = self.node_channel(&self.cfg.node_id);
            let subscribed = async {
                sink.subscribe(&node_channel).await?;
                let mut subs = self.subs.lock().await;
                for lobby in subs.lobbies.keys() {
                    sink.subscribe(self.lobby_channel(lobby)).await?;
                }
                subs.sink = Some(sink.clone());
                redis::RedisResult::Ok(())
            };
            if let Err(error) = subscribed.await {
                self.failed("subscribe", &error);
                continue;
            }
            loop {
                let message = tokio::select! {
                    () = self.stop.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(message) = message else { break };
                let channel = message.get_channel_name().to_owned();
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                self.receive(&channel, payload);
            }
            self.subs.lock().await.sink = None;
            metrics::counter!("switchboard_redis_errors_total").increment(1);
            tracing::warn!("redis pub/sub connection lost; reconnecting");
        }
    }

    /// Handles one pub/sub message.
    fn receive(&self, channel: &str, payload: String) {
        let lobby_prefix = self.key("chan:lobby:");
        if let Some(lobby) = channel.strip_prefix(&lobby_prefix)
            && let Some(numbered) = payload.strip_prefix("#M\u{1f}")
        {
            // A broadcast numbered by the cluster: every node delivers it, the sender's too.
            let mut parts = numbered.splitn(4, SEP);
            if let (Some(epoch), Some(offset), Some(skip), Some(frame)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && let Ok(offset) = offset.parse()
            {
                self.local.deliver_numbered(
                    lobby,
                    epoch,
                    offset,
                    frame.to_owned(),
                    Skip::decode(skip),
                );
            }
            return;
        }
        if let Some(lobby) = channel.strip_prefix(&lobby_prefix) {
            // A join/leave event: the origin delivered it to its own members already.
            if let Some((origin, frame)) = payload.split_once(SEP)
                && origin != self.cfg.node_id
            {
                self.local.deliver_event(lobby, frame.to_owned());
            }
            return;
        }
        let mut parts = payload.splitn(3, SEP);
        let (Some(kind), Some(arg), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let reason = || {
            DisconnectReason::ALL
                .into_iter()
                .find(|r| r.as_str() == rest)
                .unwrap_or(DisconnectReason::Kicked)
        };
        match kind {
            "user" => {
                self.local.deliver_user(arg, rest.to_owned());
            }
            "close" => {
                self.local.close_connection(arg, reason());
            }
            "close_user" => {
                self.local.close_user(arg, reason());
            }
            "post" => {
                let mut who = arg.splitn(3, '\t');
                if let (Some(id), Some(user), Some(lobby)) = (who.next(), who.next(), who.next()) {
                    self.local.post(id, user, lobby, rest);
                }
            }
            _ => tracing::debug!(kind, "unknown node message"),
        }
    }

    /// Publishes in order, pipelining whatever is waiting: one round trip per batch, whatever
    /// it holds (a direct frame's recipients are looked up inside Redis, by `DIRECT`).
    async fn publisher(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
        let mut batch = Vec::new();
        loop {
            let received = tokio::select! {
                () = self.stop.cancelled() => return,
                n = queue.recv_many(&mut batch, 256) => n,
            };
            if received == 0 {
                return;
            }
            let cost: usize = batch.iter().map(Outgoing::cost).sum();
            let Some(mut con) = self.connection() else {
                // Redis went away after these were queued: they are lost, and counted.
                metrics::counter!("switchboard_redis_publish_dropped_total")
                    .increment(batch.len() as u64);
                batch.clear();
                self.dequeued(cost);
                continue;
            };
            let mut pipe = redis::pipe();
            for out in batch.drain(..) {
                match out {
                    Outgoing::Publish { channel, payload } => {
                        pipe.publish(channel, payload).ignore();
                    }
                    Outgoing::Message { lobby, frame, skip } => {
                        pipe.cmd("EVAL")
                            .arg(scripts::PUBLISH)
                            .arg(0)
                            .arg(&self.cfg.key_prefix)
                            .arg(lobby)
                            .arg(frame)
                            .arg(self.cfg.history.size)
                            .arg(self.cfg.history.ttl.as_millis().max(1) as u64)
                            .arg(self.local_ms())
                            .arg(skip)
                            .arg(format!("{:016x}", fastrand::u64(..)))
                            .ignore();
                    }
                    Outgoing::User { user, frame } => {
                        let payload = format!("user{SEP}{user}{SEP}{frame}");
                        pipe.cmd("EVAL")
                            .arg(scripts::DIRECT)
                            .arg(0)
                            .arg(&self.cfg.key_prefix)
                            .arg(&self.cfg.node_id)
                            .arg(user)
                            .arg(payload)
                            .ignore();
                    }
                }
            }
            let sent = pipe.query_async::<()>(&mut con).await;
            self.dequeued(cost);
            if let Err(error) = sent {
                self.failed("publish", &error);
            }
        }
    }

    fn dequeued(&self, cost: usize) {
        let left = self.queued.fetch_sub(cost, Ordering::SeqCst) - cost;
        metrics::gauge!("switchboard_redis_outbound_bytes").set(left as f64);
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

    async fn subscribe_lobby(&self, lobby: &str) {
        let mut subs = self.subs.lock().await;
        let count = subs.lobbies.entry(lobby.to_owned()).or_default();
        *count += 1;
        if *count == 1
            && let Some(sink) = subs.sink.as_mut()
            && let Err(error) = sink.subscribe(self.lobby_channel(lobby)).await
        {
            // The pub/sub loop resubscribes every lobby when it reconnects.
            tracing::warn!(%error, lobby, "subscribe failed");
        }
    }

    async fn unsubscribe_lobby(&self, lobby: &str) {
        let mut subs = self.subs.lock().await;
        let Some(count) = subs.lobbies.get_mut(lobby) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            subs.lobbies.remove(lobby);
            if let Some(sink) = subs.sink.as_mut() {
                let _ = sink.unsubscribe(self.lobby_channel(lobby)).await;
            }
        }
    }

    async fn admit_remote(&self, conn: &ConnectionInfo) -> Admission {
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
            .arg(conn.lobby.as_str())
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
        if joined == 1 && events {
            self.announce(&[format!("{}\t{}", conn.lobby, conn.user_id)], true);
        }
        Admission::Admitted {
            presence_events: events,
        }
    }
}

impl Cluster for RedisCluster {
    fn admit<'a>(&'a self, conn: &'a ConnectionInfo) -> BoxFuture<'a, Admission> {
        Box::pin(async move {
            // Subscribe before reserving: nothing published after our members exist is missed.
            self.subscribe_lobby(conn.lobby.as_str()).await;
            let registering = self.registry.read().await;
            let admission = self.admit_remote(conn).await;
            if !matches!(admission, Admission::Refused(_)) {
                self.conns
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(conn.id.as_str().to_owned(), conn.clone());
            }
            drop(registering);
            if let Admission::Refused(_) = admission {
                self.unsubscribe_lobby(conn.lobby.as_str()).await;
            }
            admission
        })
    }

    fn release<'a>(&'a self, conn: &'a ConnectionInfo) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.unsubscribe_lobby(conn.lobby.as_str()).await;
            let _releasing = self.registry.read().await;
            self.conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(conn.id.as_str());
            let Some(mut con) = self.connection() else {
                self.needs_resync.store(true, Ordering::SeqCst);
                return;
            };
            let released: Result<(i64, i64), _> = self
                .scripts
                .release
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(&self.cfg.node_id)
                .arg(conn.id.as_str())
                .invoke_async(&mut con)
                .await;
            match released {
                Ok((1, members)) if members as usize <= self.cfg.events_max_members => {
                    self.announce_left(&[format!("{}\t{}", conn.lobby, conn.user_id)]);
                }
                Ok(_) => {}
                Err(error) => self.failed("release", &error),
            }
        })
    }

    fn publish_message(&self, lobby: &LobbyCode, frame: &str, skip: Skip<'_>) -> Published {
        self.enqueue_data(Outgoing::Message {
            lobby: lobby.as_str().to_owned(),
            frame: frame.to_owned(),
            skip: skip.encode(),
        })
    }

    fn history<'a>(
        &'a self,
        lobby: &'a LobbyCode,
        since: Option<u64>,
    ) -> BoxFuture<'a, Option<ClusterHistory>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let now = self.local_ms();
            let replayed: redis::RedisResult<(String, u64, Vec<String>)> = self
                .scripts
                .replay
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(lobby.as_str())
                // No recovery asked: just the epoch and last offset.
                .arg(since.unwrap_or(u64::MAX / 2))
                .arg(now)
                .arg(self.history_ttl_ms())
                .arg(format!("{:016x}", fastrand::u64(..)))
                .invoke_async(&mut con)
                .await;
            let (epoch, last, flat) = match replayed {
                Ok(r) => r,
                Err(error) => {
                    self.failed("history", &error);
                    return None;
                }
            };
            let frames = flat
                .chunks(2)
                .filter_map(|pair| Some((pair[0].parse().ok()?, pair.get(1)?.clone())))
                .collect();
            Some(ClusterHistory {
                epoch,
                last,
                frames,
            })
        })
    }

    fn publish_user(&self, user: &str, frame: &str) -> Published {
        self.enqueue_data(Outgoing::User {
            user: user.to_owned(),
            frame: frame.to_owned(),
        })
    }

    fn presence<'a>(&'a self, lobby: &'a LobbyCode) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let key = self.key(&format!("lobby:{lobby}:users"));
            match con.hkeys::<_, Vec<String>>(key).await {
                Ok(mut users) => {
                    users.sort_unstable();
                    Some(users)
                }
                Err(error) => {
                    self.failed("presence", &error);
                    None
                }
            }
        })
    }

    fn lobbies(&self) -> BoxFuture<'_, Option<Vec<ClusterLobby>>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let names: Vec<String> = match con.smembers(self.key("lobbies")).await {
                Ok(names) => names,
                Err(error) => {
                    self.failed("lobbies", &error);
                    return None;
                }
            };
            let mut pipe = redis::pipe();
            for name in &names {
                pipe.get(self.key(&format!("lobby:{name}:count")))
                    .hlen(self.key(&format!("lobby:{name}:users")));
            }
            let counts: Vec<Option<usize>> = pipe.query_async(&mut con).await.ok()?;
            let mut lobbies: Vec<ClusterLobby> = names
                .into_iter()
                .zip(counts.chunks(2))
                .map(|(lobby, c)| ClusterLobby {
                    lobby,
                    connections: c[0].unwrap_or(0),
                    users: c.get(1).copied().flatten().unwrap_or(0),
                })
                .filter(|l| l.connections > 0)
                .collect();
            lobbies.sort_unstable_by(|a, b| a.lobby.cmp(&b.lobby));
            Some(lobbies)
        })
    }

    fn close_user<'a>(
        &'a self,
        user: &'a str,
        reason: DisconnectReason,
    ) -> BoxFuture<'a, Option<usize>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let held: HashMap<String, String> =
                con.hgetall(self.key(&format!("user:{user}"))).await.ok()?;
            let mut elsewhere = 0;
            let mut nodes: Vec<&str> = Vec::new();
            for value in held.values() {
                let node = value.split('\t').next().unwrap_or_default();
                if node != self.cfg.node_id {
                    elsewhere += 1;
                    nodes.push(node);
                }
            }
            nodes.sort_unstable();
            nodes.dedup();
            for node in nodes {
                let payload = format!("close_user{SEP}{user}{SEP}{}", reason.as_str());
                self.enqueue(
                    Outgoing::Publish {
                        channel: self.node_channel(node),
                        payload,
                    },
                    Priority::Control,
                );
            }
            Some(elsewhere)
        })
    }

    fn close_connection<'a>(
        &'a self,
        id: &'a str,
        reason: DisconnectReason,
    ) -> BoxFuture<'a, Option<bool>> {
        Box::pin(self.send_to_owner(
            id,
            format!("close{SEP}{id}{SEP}{}", reason.as_str()),
            Priority::Control,
        ))
    }

    fn forward_post<'a>(
        &'a self,
        id: &'a str,
        user: &'a str,
        lobby: &'a str,
        frame: &'a str,
    ) -> BoxFuture<'a, Option<bool>> {
        Box::pin(self.send_to_owner(
            id,
            format!("post{SEP}{id}\t{user}\t{lobby}{SEP}{frame}"),
            Priority::Data,
        ))
    }

    fn stats(&self) -> BoxFuture<'_, Option<ClusterStats>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let (nodes, total, lobbies, users): (usize, Option<usize>, usize, Option<usize>) =
                redis::pipe()
                    .zcard(self.key("nodes"))
                    .get(self.key("count"))
                    .scard(self.key("lobbies"))
                    .get(self.key("users"))
                    .query_async(&mut con)
                    .await
                    .ok()?;
            Some(ClusterStats::new(
                nodes,
                total.unwrap_or(0),
                lobbies,
                users.unwrap_or(0),
            ))
        })
    }

    fn status(&self) -> &'static str {
        if self.up.load(Ordering::Relaxed) {
            "up"
        } else {
            "down"
        }
    }
}
