//! The handle through which everything outside a connection's tasks reaches it.

mod direct;
mod encode;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use axum::extract::ws::Message;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::disconnect::DisconnectReason;
use crate::ids::{ConnectionId, UserId};
use crate::ws::frame::OpCode;
use direct::Direct;
pub(crate) use direct::{MAX_BATCH, WRITE_BATCH_BYTES};
pub(crate) use encode::Encoding;

/// What the embedding app and the logs know about a connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Unique on this server, names the node.
    pub id: ConnectionId,
    /// The authenticated user.
    pub user_id: UserId,
    /// The protocol version it speaks: 1 (one lobby, the URL's) or 2 (any number of lobbies,
    /// joined and left on the live connection). Its lobbies are the registry's to say
    /// ([`Manager::lobbies_of`](crate::Manager::lobbies_of)).
    pub protocol: u8,
    /// The client's IP (after proxy resolution by the embedding app).
    pub ip: IpAddr,
    /// When the connection was accepted.
    pub connected_at: SystemTime,
}

/// A connection of another node that died (it stopped beating in the cluster): what the
/// cluster had recorded about it, for [`Handler::on_connection_lost`](crate::Handler::on_connection_lost).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LostConnection {
    /// Its id (it names its node).
    pub id: String,
    /// Its user.
    pub user_id: UserId,
    /// Its client's address as the limits counted it (an IPv6 address's
    /// `limits.ipv6_prefix` network).
    pub ip: String,
    /// The node that died.
    pub node: String,
}

/// What a connection is doing now (for an operator's view):
/// [`Manager::connection_state`](crate::Manager::connection_state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionState {
    /// `websocket` or `sse`.
    pub transport: &'static str,
    /// Frames queued for it, not written yet (a client that does not read lets it grow, up to
    /// `queue.capacity`).
    pub queued: usize,
    /// The last ping round trip measured, if any.
    pub rtt: Option<Duration>,
}

/// A frame in a connection's outbound queue.
///
/// A broadcast is one [`Outgoing::Shared`] queued for every member: its bytes are shared, and
/// so is its permessage-deflate form, computed at most once, by the first writer that needs
/// it (a member's task or a write-through; none if no member negotiated the extension). Everything else is for one
/// connection and compressed, if at all, on that connection's own write path.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    /// A frame for one connection.
    Own(Message),
    /// One frame queued for many connections.
    Shared(Arc<SharedFrame>),
}

/// A frame shared by many queues, with its compressed form once some queue needed it.
#[derive(Debug)]
pub(crate) struct SharedFrame {
    message: Message,
    /// The payload as permessage-deflate sends it with a full window (`None`: compressing
    /// did not make it smaller, so it goes out plain).
    deflated: OnceLock<Option<Bytes>>,
}

impl Outgoing {
    /// A frame to be queued for many connections.
    pub(crate) fn shared(message: Message) -> Self {
        Self::Shared(Arc::new(SharedFrame {
            message,
            deflated: OnceLock::new(),
        }))
    }

    pub(crate) fn message(&self) -> &Message {
        match self {
            Self::Own(message) => message,
            Self::Shared(shared) => &shared.message,
        }
    }

    /// The frame itself (a shared one's payload is reference-counted: no copy).
    pub(crate) fn into_message(self) -> Message {
        match self {
            Self::Own(message) => message,
            Self::Shared(shared) => shared.message.clone(),
        }
    }

    /// A shared frame's compressed payload, computed by `compress` on the first call for the
    /// frame (on any connection), then shared; `None` for a frame of one connection (its
    /// writer compresses it), `Some(None)` when compressing did not make it smaller.
    pub(crate) fn shared_deflated(
        &self,
        compress: impl FnOnce(&[u8]) -> Option<Bytes>,
    ) -> Option<Option<&Bytes>> {
        let Self::Shared(shared) = self else {
            return None;
        };
        let payload = message_payload(&shared.message);
        Some(shared.deflated.get_or_init(|| compress(payload)).as_ref())
    }
}

impl From<Message> for Outgoing {
    fn from(message: Message) -> Self {
        Self::Own(message)
    }
}

/// The outcome of offering a frame to a connection's outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    Full,
    Closed,
}

/// Shared state of one connection: identity, the sending end of its bounded outbound queue,
/// and the close signal. The connection's own tasks own the socket; others write into it only
/// while its task leaves the outbox open (write-through, the `direct` module).
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(crate) seq: u64,
    pub(crate) info: ConnectionInfo,
    /// Join/leave events for this connection come from the cluster, not from this node's hub.
    pub(crate) cluster_presence: bool,
    /// Where client frames go for transports without an inbound stream of their own (SSE:
    /// frames arrive as HTTP posts).
    pub(crate) inbound: Option<mpsc::Sender<Message>>,
    /// Join/leave events were dropped on a full queue: the writer sends a fresh `presence`
    /// list once it has caught up.
    pub(crate) presence_behind: AtomicBool,
    /// Broadcasts of some lobby were not queued (the queue was full) and wait in its history:
    /// the task asks the hub to catch it up once its queue has drained.
    pub(crate) lagging: AtomicBool,
    /// When (in [`monotonic_ms`]) its socket stopped taking bytes; 0 while it takes them.
    blocked_since: AtomicU64,
    outbox: Outbox,
    /// Wakes everyone awaiting [`closed`](Self::closed).
    closing: Notify,
    reason: OnceLock<DisconnectReason>,
    /// Last measured round trip in microseconds; `u64::MAX` until the first pong.
    rtt_us: AtomicU64,
    /// The last `health_ping`'s timestamp until its first echo; 0 when none is outstanding.
    health_ping: AtomicU64,
    /// The last protocol Ping's payload (the manager's ping stamp)
    /// until its first echo; 0 when none is outstanding.
    ping: AtomicU64,
    /// Callers of `Manager::ping` waiting for the next pong. Never held across `.await`.
    pong_waiters: Mutex<Vec<oneshot::Sender<Duration>>>,
    /// v2 `rpc` calls waiting for their answer, each held by an [`RpcSlot`].
    rpc_in_flight: AtomicUsize,
}

impl ConnHandle {
    /// Whether it speaks protocol v2 (many lobbies; acks).
    pub(crate) fn v2(&self) -> bool {
        self.info.protocol >= 2
    }

    /// A handle whose outbound queue holds at most `capacity` frames.
    pub(crate) fn new(seq: u64, info: ConnectionInfo, capacity: usize) -> Self {
        Self {
            seq,
            info,
            cluster_presence: false,
            inbound: None,
            presence_behind: AtomicBool::new(false),
            lagging: AtomicBool::new(false),
            blocked_since: AtomicU64::new(0),
            outbox: Outbox::new(capacity),
            closing: Notify::new(),
            reason: OnceLock::new(),
            rtt_us: AtomicU64::new(u64::MAX),
            health_ping: AtomicU64::new(0),
            ping: AtomicU64::new(0),
            pong_waiters: Mutex::new(Vec::new()),
            rpc_in_flight: AtomicUsize::new(0),
        }
    }

    /// Offers a frame without waiting: broadcast never waits for a slow client.
    pub(crate) fn offer(&self, frame: impl Into<Outgoing>) -> Offer {
        self.outbox.offer(frame.into(), true).0
    }

    /// Offers a frame without waking the connection: it goes out with the next frame that
    /// does, or at the next [`wake`](Self::wake). The flag says whether it was the first
    /// frame in an empty queue (and so needs a wake scheduled).
    pub(crate) fn offer_quietly(&self, frame: impl Into<Outgoing>) -> (Offer, bool) {
        self.outbox.offer(frame.into(), false)
    }

    /// Queues a broadcast without waking, for a corked batch (the `cork` module): `true`
    /// when the task needs a wake for it and the connection is not listed yet (the caller
    /// lists it, and calls [`wake_listed`](Self::wake_listed) when the batch ends).
    pub(crate) fn offer_listed(&self, frame: impl Into<Outgoing>) -> (Offer, bool) {
        self.outbox.offer_listed(frame.into())
    }

    /// The corked batch that listed this connection ended: writes the frames through if
    /// `through` and the task left the outbox open, else wakes the task, unless it has taken
    /// the frames meanwhile.
    pub(crate) fn wake_listed(&self, through: bool) {
        let mut state = lock(&self.outbox.state);
        state.listed = false;
        if !state.unannounced {
            return;
        }
        if !through || direct::write_through(&mut state) == direct::Through::Wake {
            state.wake();
        }
    }

    /// The connection's task is about to write bytes of its own (`unsent`): closes the
    /// outbox to write-through, and puts before them what a write-through left unwritten.
    /// `detach` also lets go of the socket (the connection is closing).
    pub(crate) fn claim_writes(&self, unsent: &mut Vec<u8>, detach: bool) {
        let mut state = lock(&self.outbox.state);
        state.open = false;
        if detach {
            state.direct = None;
        }
        if !state.spill.is_empty() {
            let mut spill = std::mem::take(&mut state.spill);
            spill.extend_from_slice(unsent);
            *unsent = spill;
        }
    }

    /// Queues a frame even on a full queue and wakes the task. Its callers bound how far past
    /// capacity it goes: a lost catch-up's `recovered` (once per lobby), the health pings (two
    /// a ping period, until the connection answers or is closed).
    pub(crate) fn offer_over(&self, frame: impl Into<Outgoing>) -> Offer {
        let mut state = lock(&self.outbox.state);
        if state.shut {
            return Offer::Closed;
        }
        state.push_back(frame.into());
        state.wake();
        Offer::Queued
    }

    /// Wakes the connection's task to write whatever is queued.
    pub(crate) fn wake(&self) {
        self.outbox.wake();
    }

    /// The connection's own task takes queued frames, oldest first: at most `max` frames,
    /// and no more payload bytes than `max_bytes` unless the first frame alone is larger; with
    /// none queued it is woken by the next offer or by [`close`](Self::close).
    ///
    /// What a write-through left unwritten comes first, appended to `spill`. With nothing
    /// queued, `open` (the task has nothing of its own to write) opens the outbox to
    /// write-through until the task takes frames again or [`claims`](Self::claim_writes) it.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        take: Take<'_>,
        f: impl FnMut(Outgoing),
    ) -> Poll<usize> {
        self.outbox.poll_take(cx, take, f)
    }

    /// Takes queued frames as [`poll_take`](Self::poll_take) does, without registering for a
    /// wakeup: 0 when nothing is queued (a closing connection's last words, batch by batch).
    pub(crate) fn take_batch(
        &self,
        max: usize,
        max_bytes: usize,
        take: impl FnMut(Outgoing),
    ) -> usize {
        self.outbox.take_batch(max, max_bytes, take)
    }

    /// Records whether the socket takes bytes now: the connection's task says so after each
    /// write (`true`: the kernel's send buffer is full and bytes wait with the connection).
    pub(crate) fn set_blocked(&self, blocked: bool) {
        let since = self.blocked_since.load(Ordering::Relaxed);
        if blocked && since == 0 {
            self.blocked_since.store(monotonic_ms(), Ordering::Relaxed);
        } else if !blocked && since != 0 {
            self.blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// Tests: the socket stopped taking bytes `ago`.
    #[cfg(test)]
    pub(crate) fn blocked_since_for_test(&self, ago: Duration) {
        let since = monotonic_ms().saturating_sub(ago.as_millis() as u64).max(1);
        self.blocked_since.store(since, Ordering::Relaxed);
    }

    /// How long the socket has not been taking bytes; `None` while it takes them.
    pub(crate) fn blocked_for(&self) -> Option<Duration> {
        match self.blocked_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(monotonic_ms().saturating_sub(since))),
        }
    }

    /// Frames queued now.
    pub(crate) fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// What the connection is doing now, for operators.
    pub(crate) fn state(&self) -> ConnectionState {
        ConnectionState {
            transport: if self.inbound.is_some() {
                "sse"
            } else {
                "websocket"
            },
            queued: self.outbox.len(),
            rtt: self.rtt(),
        }
    }

    /// Takes every queued frame, oldest first (tests and benchmarks).
    pub(crate) fn take_all(&self, take: impl FnMut(Message)) {
        self.outbox.take_all(take);
    }

    /// Wakes the connection's task through `waker` on the next offer or close, whatever the
    /// queue holds.
    pub(crate) fn set_waker(&self, waker: &Waker) {
        self.outbox.set_waker(waker);
    }

    /// Refuses every later offer (`Offer::Closed`) and drops what is queued: the connection's
    /// task is done with it.
    pub(crate) fn shut(&self) {
        self.outbox.shut();
    }

    /// Asks the connection to close. The first reason wins; returns whether it was this one.
    pub(crate) fn close(&self, reason: DisconnectReason) -> bool {
        let first = self.reason.set(reason).is_ok();
        if first {
            self.closing.notify_waiters();
            self.outbox.wake();
        }
        first
    }

    /// The reason the connection is closing, once decided.
    pub(crate) fn reason(&self) -> Option<DisconnectReason> {
        self.reason.get().copied()
    }

    /// Resolves once [`close`](Self::close) has been called.
    pub(crate) async fn closed(&self) {
        let notified = self.closing.notified();
        tokio::pin!(notified);
        // Registered before the check, so a close in between is not missed.
        notified.as_mut().enable();
        if self.reason().is_none() {
            notified.await;
        }
    }

    /// A `health_ping` frame with this timestamp, remembered until its first echo.
    pub(crate) fn health_ping(&self, timestamp: u64) -> Message {
        self.health_ping.store(timestamp, Ordering::Relaxed);
        crate::protocol::text(crate::protocol::ServerFrame::HealthPing { timestamp }.encode())
    }

    /// A protocol Ping carrying `stamp`, remembered until its first echo.
    pub(crate) fn ping(&self, stamp: u64) -> Message {
        self.ping.store(stamp, Ordering::Relaxed);
        Message::Ping(bytes::Bytes::copy_from_slice(&stamp.to_be_bytes()))
    }

    /// Whether a `health_ping` waits for its first echo.
    pub(crate) fn awaits_health_pong(&self) -> bool {
        self.health_ping.load(Ordering::Relaxed) != 0
    }

    /// Whether `timestamp` is the first echo of the last `health_ping` (which it consumes).
    pub(crate) fn answers_health_ping(&self, timestamp: u64) -> bool {
        timestamp != 0
            && self
                .health_ping
                .compare_exchange(timestamp, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The stamp of the last protocol Ping if `payload` is its first echo (which it consumes).
    pub(crate) fn answers_ping(&self, payload: &[u8]) -> Option<u64> {
        let stamp = u64::from_be_bytes(payload.try_into().ok()?);
        let first = stamp != 0
            && self
                .ping
                .compare_exchange(stamp, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        first.then_some(stamp)
    }

    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Records a measured round trip and wakes everyone waiting for one.
    pub(crate) fn record_rtt(&self, rtt: Duration) {
        self.rtt_us.store(
            rtt.as_micros().min(u64::MAX as u128 - 1) as u64,
            Ordering::Relaxed,
        );
        let waiters = std::mem::take(&mut *lock(&self.pong_waiters));
        for waiter in waiters {
            let _ = waiter.send(rtt);
        }
    }

    pub(crate) fn wait_for_pong(&self) -> oneshot::Receiver<Duration> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pong_waiters).push(tx);
        rx
    }
}

/// One of a connection's `rpc` calls waiting for its answer: taken while fewer than the
/// bound wait, given back when dropped, so a call that ends in any way (answered, failed,
/// cancelled by a close, panicked) frees its place.
#[derive(Debug)]
pub(crate) struct RpcSlot(Arc<ConnHandle>);

impl RpcSlot {
    /// A place among the connection's calls waiting, unless `max` already wait.
    pub(crate) fn take(conn: &Arc<ConnHandle>, max: usize) -> Option<Self> {
        conn.rpc_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(conn.clone()))
    }

    /// Calls of `conn` waiting now.
    #[cfg(test)]
    pub(crate) fn waiting(conn: &ConnHandle) -> usize {
        conn.rpc_in_flight.load(Ordering::Acquire)
    }
}

impl Drop for RpcSlot {
    fn drop(&mut self) {
        self.0.rpc_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Milliseconds on a monotonic clock that never reads 0 (which means "not blocked"). It
/// starts at a large number, so that a time before the first reading is still positive.
fn monotonic_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + (1 << 32)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection's bounded outbound queue. Unlike a channel it allocates nothing while empty,
/// and it wakes the connection's task once per burst (on the first frame into an empty
/// queue), not once per frame.
#[derive(Debug)]
struct Outbox {
    capacity: usize,
    state: Mutex<OutboxState>,
}

#[derive(Debug, Default)]
struct OutboxState {
    /// The oldest queued frame, kept inline: a queue of one (the common case, a frame then
    /// its write) neither allocates nor frees. `None` only while `rest` is empty too.
    head: Option<Outgoing>,
    /// The frames behind `head`, oldest first; allocated only while two or more wait.
    rest: VecDeque<Outgoing>,
    waker: Option<Waker>,
    /// Frames were queued quietly and the task was not woken for them yet.
    unannounced: bool,
    /// The connection is on a corked batch's wake list (the `cork` module): it is woken once
    /// at the batch's end, not by each offer in it.
    listed: bool,
    shut: bool,
    /// The task has nothing of its own to write: whoever holds the lock may write queued
    /// frames into `direct` (write-through).
    open: bool,
    /// The socket, once the task first opened the outbox, until it closes.
    direct: Option<Direct>,
    /// What a write-through's socket did not take: the task writes it before anything else.
    spill: Vec<u8>,
}

/// What the task lends publishers while the outbox is open: its socket, the counters its
/// writes are counted in, and how its frames are encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Open<'a> {
    pub(crate) stream: &'a Arc<tokio::net::TcpStream>,
    pub(crate) counters: &'a Arc<crate::stats::Counters>,
    pub(crate) encoding: Encoding,
}

/// How the connection's task takes frames ([`ConnHandle::poll_take`]).
#[derive(Debug)]
pub(crate) struct Take<'a> {
    /// At most this many frames,
    pub(crate) max: usize,
    /// and this many payload bytes, unless the first frame alone is larger.
    pub(crate) max_bytes: usize,
    /// The task has nothing of its own to write: with nothing queued, publishers may write
    /// into its socket.
    pub(crate) open: Option<Open<'a>>,
    /// Where a write-through's unwritten rest goes.
    pub(crate) spill: &'a mut Vec<u8>,
}

impl OutboxState {
    fn wake(&mut self) {
        self.unannounced = false;
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }

    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    fn front(&self) -> Option<&Outgoing> {
        self.head.as_ref()
    }

    /// The queued frames, oldest first.
    fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.head.iter().chain(&self.rest)
    }

    fn push_back(&mut self, frame: Outgoing) {
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn pop_front(&mut self) -> Option<Outgoing> {
        let front = self.head.take()?;
        self.head = self.rest.pop_front();
        Some(front)
    }

    /// Drops every queued frame and gives the queue's memory back.
    fn clear(&mut self) {
        self.head = None;
        self.rest = VecDeque::new();
    }
}

impl Outbox {
    /// Frames waiting to be written.
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::default(),
        }
    }

    /// Queues a frame unless the queue is shut or full; `Ok` says whether it was the first.
    fn admit(&self, state: &mut OutboxState, frame: Outgoing) -> Result<bool, Offer> {
        if state.shut {
            return Err(Offer::Closed);
        }
        if state.len() >= self.capacity {
            return Err(Offer::Full);
        }
        let first = state.is_empty();
        state.push_back(frame);
        Ok(first)
    }

    /// Queues a frame; wakes the task (`wake`) if the queue was empty. Returns whether the
    /// queue was empty.
    fn offer(&self, frame: Outgoing, wake: bool) -> (Offer, bool) {
        let mut state = lock(&self.state);
        let first = match self.admit(&mut state, frame) {
            Ok(first) => first,
            Err(refused) => return (refused, false),
        };
        if wake && (first || state.unannounced) {
            state.wake();
        } else if first {
            state.unannounced = true;
        }
        (Offer::Queued, first)
    }

    /// Queues a frame without waking; `true` when the task needs a wake for it and the
    /// connection is not on a wake list yet (the caller lists it).
    fn offer_listed(&self, frame: Outgoing) -> (Offer, bool) {
        let mut state = lock(&self.state);
        let first = match self.admit(&mut state, frame) {
            Ok(first) => first,
            Err(refused) => return (refused, false),
        };
        if !(first || state.unannounced) {
            // The task was woken for what is queued and has not taken it yet: it takes this
            // frame with the rest.
            return (Offer::Queued, false);
        }
        state.unannounced = true;
        let list = !state.listed;
        state.listed = true;
        (Offer::Queued, list)
    }

    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        take: Take<'_>,
        f: impl FnMut(Outgoing),
    ) -> Poll<usize> {
        let mut state = lock(&self.state);
        if state.is_empty() && state.spill.is_empty() {
            if let Some(open) = take.open.filter(|_| !state.shut) {
                if state.direct.is_none() {
                    state.direct = Some(Direct {
                        stream: open.stream.clone(),
                        counters: open.counters.clone(),
                        encoding: open.encoding,
                    });
                }
                state.open = true;
            }
            store_waker(&mut state.waker, cx.waker());
            return Poll::Pending;
        }
        state.open = false;
        if !state.spill.is_empty() {
            take.spill.append(&mut state.spill);
            state.spill = Vec::new();
        }
        Poll::Ready(Self::take_from(&mut state, take.max, take.max_bytes, f))
    }

    fn take_batch(&self, max: usize, max_bytes: usize, take: impl FnMut(Outgoing)) -> usize {
        Self::take_from(&mut lock(&self.state), max, max_bytes, take)
    }

    /// Takes up to `max` frames and `max_bytes` of payload (at least one frame, if any).
    fn take_from(
        state: &mut OutboxState,
        max: usize,
        max_bytes: usize,
        mut take: impl FnMut(Outgoing),
    ) -> usize {
        let (mut n, mut bytes) = (0, 0usize);
        while n < max {
            let Some(next) = state.front() else {
                break;
            };
            bytes = bytes.saturating_add(payload_len(next));
            if n > 0 && bytes > max_bytes {
                break;
            }
            take(state.pop_front().expect("a front frame"));
            n += 1;
        }
        // Nothing is kept while idle: a drained queue gives its memory back (none was taken
        // for a queue of one).
        if state.is_empty() {
            if state.rest.capacity() > 0 {
                state.rest = VecDeque::new();
            }
            state.unannounced = false;
        }
        n
    }

    fn take_all(&self, take: impl FnMut(Message)) {
        let (head, rest) = {
            let mut state = lock(&self.state);
            state.unannounced = false;
            (state.head.take(), std::mem::take(&mut state.rest))
        };
        head.into_iter()
            .chain(rest)
            .map(Outgoing::into_message)
            .for_each(take);
    }

    fn set_waker(&self, waker: &Waker) {
        store_waker(&mut lock(&self.state).waker, waker);
    }

    fn wake(&self) {
        lock(&self.state).wake();
    }

    fn shut(&self) {
        let mut state = lock(&self.state);
        state.shut = true;
        state.clear();
        state.waker = None;
        state.open = false;
        state.direct = None;
        state.spill = Vec::new();
    }
}

/// A queued frame's payload length.
pub(crate) fn payload_len(frame: &Outgoing) -> usize {
    message_payload(frame.message()).len()
}

/// A queued frame's opcode and payload; `None` for a close frame (only the task's closing
/// sends one, after everything queued).
pub(crate) fn message_parts(message: &Message) -> Option<(OpCode, &[u8])> {
    Some(match message {
        Message::Text(text) => (OpCode::Text, text.as_bytes()),
        Message::Binary(bytes) => (OpCode::Binary, bytes),
        Message::Ping(bytes) => (OpCode::Ping, bytes),
        Message::Pong(bytes) => (OpCode::Pong, bytes),
        Message::Close(_) => return None,
    })
}

/// A frame's payload (a close frame's: none).
pub(crate) fn message_payload(message: &Message) -> &[u8] {
    match message {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
        Message::Close(_) => &[],
    }
}

fn store_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(current) if current.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// Fixtures for the crate's unit tests: a handle, and a waker that counts its wakes.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use std::time::SystemTime;

    use axum::extract::ws::Message;

    use super::{ConnHandle, ConnectionInfo};
    use crate::ids::{ConnectionId, UserId};

    /// A waker that counts its wakes.
    #[derive(Debug, Default)]
    pub(crate) struct WakeCount(AtomicUsize);

    impl Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl WakeCount {
        pub(crate) fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A handle for user `u` (protocol v1), and the count of the wakes of its task.
    pub(crate) fn handle(seq: u64, capacity: usize) -> (ConnHandle, Arc<WakeCount>) {
        let info = ConnectionInfo {
            id: ConnectionId::new("t", seq),
            user_id: UserId::parse("u").unwrap(),
            protocol: 1,
            ip: [127, 0, 0, 1].into(),
            connected_at: SystemTime::now(),
        };
        let conn = ConnHandle::new(seq, info, capacity);
        let count = Arc::new(WakeCount::default());
        conn.set_waker(&Waker::from(count.clone()));
        (conn, count)
    }

    /// A text frame.
    pub(crate) fn frame(text: &str) -> Message {
        Message::Text(text.into())
    }

    /// Empties the queue; the texts of its text frames, in order.
    pub(crate) fn drain(conn: &ConnHandle) -> Vec<String> {
        let mut out = Vec::new();
        conn.take_all(|m| {
            if let Message::Text(t) = m {
                out.push(t.to_string());
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{drain, frame, handle};
    use super::*;

    #[test]
    fn the_task_is_woken_once_per_burst_not_per_frame() {
        let (conn, count) = handle(1, 8);
        assert_eq!(conn.offer(frame("a")), Offer::Queued);
        assert_eq!(conn.offer(frame("b")), Offer::Queued);
        assert_eq!(
            count.get(),
            1,
            "the first frame into an empty queue wakes, the next not"
        );
        assert_eq!(drain(&conn), ["a", "b"]);
        assert_eq!(conn.offer(frame("c")), Offer::Queued);
        assert_eq!(count.get(), 2, "empty again: the next burst wakes again");
    }

    #[test]
    fn quiet_frames_wait_for_the_next_loud_one_or_a_wake() {
        let (conn, count) = handle(1, 8);
        assert_eq!(conn.offer_quietly(frame("event")), (Offer::Queued, true));
        assert_eq!(conn.offer_quietly(frame("event 2")), (Offer::Queued, false));
        assert_eq!(count.get(), 0, "quiet offers wake nobody");
        // A loud frame behind quiet ones wakes the task, though the queue was not empty.
        assert_eq!(conn.offer(frame("message")), Offer::Queued);
        assert_eq!(count.get(), 1);
        assert_eq!(drain(&conn), ["event", "event 2", "message"]);
        conn.offer_quietly(frame("event 3"));
        conn.wake();
        assert_eq!(count.get(), 2, "an explicit wake announces them");
    }

    #[test]
    fn a_full_queue_refuses_and_a_shut_one_is_closed() {
        let (conn, _) = handle(1, 2);
        assert_eq!(conn.offer(frame("1")), Offer::Queued);
        assert_eq!(conn.offer(frame("2")), Offer::Queued);
        assert_eq!(conn.offer(frame("3")), Offer::Full);
        assert_eq!(drain(&conn), ["1", "2"], "the refused frame is not queued");
        conn.shut();
        assert_eq!(conn.offer(frame("4")), Offer::Closed);
        assert!(drain(&conn).is_empty());
    }

    #[test]
    fn a_batch_is_bounded_in_frames_and_bytes_but_takes_one_large_frame() {
        let (conn, _) = handle(1, 8);
        for text in ["aaaa", "bbbb", "cccc", &"x".repeat(100)] {
            conn.offer(frame(text));
        }
        let mut got = Vec::new();
        let n = conn.take_batch(8, 8, |m| got.push(m));
        assert_eq!(n, 2, "8 bytes: two 4-byte frames");
        assert_eq!(conn.take_batch(1, 1024, |_| {}), 1, "at most `max` frames");
        assert_eq!(
            conn.take_batch(8, 8, |_| {}),
            1,
            "a larger frame goes alone"
        );
        assert_eq!(conn.take_batch(8, 8, |_| {}), 0);
    }

    /// What the queue holds beyond its inline slot, in allocated slots.
    fn spilled(conn: &ConnHandle) -> usize {
        lock(&conn.outbox.state).rest.capacity()
    }

    #[test]
    fn a_queue_of_one_allocates_nothing_and_order_and_bound_hold_past_it() {
        let (conn, _) = handle(1, 3);
        for round in 0..3 {
            assert_eq!(conn.offer(frame("only")), Offer::Queued);
            assert_eq!(spilled(&conn), 0, "round {round}: one frame stays inline");
            let mut got = Vec::new();
            assert_eq!(conn.take_batch(8, 1024, |m| got.push(m)), 1);
            assert_eq!(conn.queued(), 0);
            assert_eq!(spilled(&conn), 0);
        }
        // Past one the rest spills, in order, up to the same bound.
        for text in ["1", "2", "3"] {
            assert_eq!(conn.offer(frame(text)), Offer::Queued);
        }
        assert_eq!(
            conn.offer(frame("4")),
            Offer::Full,
            "capacity counts the inline slot"
        );
        assert_eq!(conn.queued(), 3);
        assert!(spilled(&conn) > 0);
        // Taken partly, then offered again: the order holds across the inline slot.
        assert_eq!(conn.take_batch(1, 1024, |_| {}), 1);
        assert_eq!(conn.offer(frame("5")), Offer::Queued);
        assert_eq!(conn.offer(frame("6")), Offer::Full);
        assert_eq!(drain(&conn), ["2", "3", "5"]);
        // Drained through the task's own path: the spilled memory is given back.
        for text in ["a", "b"] {
            conn.offer(frame(text));
        }
        assert_eq!(conn.take_batch(8, 1024, |_| {}), 2);
        assert_eq!(spilled(&conn), 0, "a drained queue holds no memory");
        assert!(lock(&conn.outbox.state).head.is_none());
        conn.offer(frame("x"));
        conn.offer(frame("y"));
        conn.shut();
        assert_eq!(spilled(&conn), 0, "a shut queue holds no memory");
        assert_eq!(conn.queued(), 0);
    }

    #[test]
    fn rpc_slots_are_bounded_and_given_back_when_dropped() {
        let conn = Arc::new(handle(1, 8).0);
        let first = RpcSlot::take(&conn, 2).expect("one");
        let second = RpcSlot::take(&conn, 2).expect("two");
        assert!(
            RpcSlot::take(&conn, 2).is_none(),
            "a third is past the bound"
        );
        assert_eq!(RpcSlot::waiting(&conn), 2);
        drop(first);
        let third = RpcSlot::take(&conn, 2).expect("a place was given back");
        drop((second, third));
        assert_eq!(RpcSlot::waiting(&conn), 0);
    }

    #[test]
    fn closing_wakes_the_task_and_the_first_reason_wins() {
        let (conn, count) = handle(1, 8);
        assert!(conn.close(DisconnectReason::Kicked));
        assert!(!conn.close(DisconnectReason::Stale));
        assert_eq!(conn.reason(), Some(DisconnectReason::Kicked));
        assert_eq!(count.get(), 1);
    }
}
