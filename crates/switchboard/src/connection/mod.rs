//! One connection's life: register, serve, end, clean up.
//!
//! Ownership: a WebSocket connection is one task ([`socket::Socket`], this module's [`run`])
//! that owns the socket (lending it to publishers for write-through while it has nothing to
//! write: `handle/direct.rs`), the health clock and the taking end of the bounded outbound queue;
//! an SSE connection is a reader task and a writer task with the same split. Everyone else
//! holds a [`ConnHandle`]. Every disconnect path sets a [`DisconnectReason`] on the handle
//! first; that wakes the connection's task(s), and the [`Registration`] guard removes the
//! connection from the hub whichever way serving ends.

mod dispatch;
mod health;
mod rate;
mod rpc;
mod socket;
mod sse_reader;
mod writer;

use std::sync::Arc;
use std::task::Poll;
use std::time::SystemTime;

use axum::extract::ws::Message;
use tokio::sync::mpsc;

use crate::handle::{ConnHandle, ConnectionInfo};
pub(crate) use socket::Socket;

use crate::client::Client;
use crate::disconnect::DisconnectReason;
use crate::handler::AppHandler;
use crate::hub::{Join, LobbyState};
use crate::ids::LobbyCode;
use crate::protocol::{PROTOCOL_V2, PROTOCOL_VERSION, ServerFrame, WelcomeV1, unix_ms, welcome_v2};
use crate::request::ConnectRequest;
use crate::shared::Shared;

/// Admits one upgraded WebSocket and serves it in a task of its own (see [`run`]). On a node
/// alone admission does not wait: it happens here, the serving task is spawned, and what is
/// left to wait for is at most a refusal's close. In a cluster, admission asks the cluster:
/// all of [`run`] is left to wait for.
pub(crate) fn start(
    shared: Arc<Shared>,
    handler: AppHandler,
    socket: Socket,
    request: ConnectRequest,
    protocol: u8,
) -> Started {
    let tracker = shared.tracker.clone();
    if shared.in_cluster() {
        return Started::Later(Box::pin(
            tracker.track_future(run(shared, handler, socket, request, protocol)),
        ));
    }
    match admit_alone(&shared, request, protocol, None) {
        Ok(admitted) => {
            tracker.spawn(Serving::new(shared, handler, socket, admitted));
            Started::Serving
        }
        Err(reason) => {
            let timeout = shared.config.close_timeout;
            Started::Later(Box::pin(
                tracker.track_future(socket.close(None, reason, timeout)),
            ))
        }
    }
}

/// What [`start`] leaves to wait for.
pub(crate) enum Started {
    /// Nothing: the connection is served in a task of its own.
    Serving,
    /// Admission by the cluster, or a refusal's close.
    Later(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Future for Started {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Self::Serving => Poll::Ready(()),
            Self::Later(later) => later.as_mut().poll(cx),
        }
    }
}

/// Admits one upgraded WebSocket, then serves it in a task of its own until it ends. The
/// serving task starts after admission so that it carries none of admission's state: a
/// connection's task is most of its idle memory.
pub(crate) async fn run(
    shared: Arc<Shared>,
    handler: AppHandler,
    socket: Socket,
    request: ConnectRequest,
    protocol: u8,
) {
    match admit(&shared, request, protocol, None).await {
        Ok(admitted) => {
            let tracker = shared.tracker.clone();
            tracker.spawn(Serving::new(shared, handler, socket, admitted));
        }
        // Boxed: the closing's state would otherwise be in every connect's future.
        Err(reason) => {
            Box::pin(socket.close(None, reason, shared.config.close_timeout)).await;
        }
    }
}

/// A WebSocket connection being served: its task's whole state, written out as one future
/// (rather than an `async fn`, which would keep admission's and closing's state alongside).
struct Serving {
    /// The manager's state and the connection's handle, as the handler is handed them.
    client: Client,
    handler: AppHandler,
    /// The cluster counts it until released.
    in_cluster: bool,
    /// Still in the hub: unregistered when serving ends, or when dropped (a panic).
    registered: bool,
    phase: Phase,
}

// The live phase is the long one, and inline: boxing it would add an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Live {
        socket: Socket,
        clock: health::HealthClock,
        rate: rate::MessageRate,
        timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    },
    Closing(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

impl Serving {
    fn new(shared: Arc<Shared>, handler: AppHandler, socket: Socket, admitted: Admitted) -> Self {
        let Admitted {
            conn,
            in_cluster,
            expires_at,
        } = admitted;
        let clock = health::HealthClock::new(&shared, expires_at);
        let timer = Box::pin(tokio::time::sleep_until(clock.next_deadline()));
        let rate = rate::MessageRate::new(&shared.config.rate);
        let client = Client::new(shared, conn);
        connected(&client, &handler);
        Self {
            client,
            handler,
            in_cluster,
            registered: true,
            phase: Phase::Live {
                socket,
                clock,
                rate,
                timer,
            },
        }
    }

    fn unregister(&mut self) {
        if std::mem::take(&mut self.registered) {
            leave_hub(&self.client.shared, self.client.conn.seq);
        }
    }

    /// Serving is over: leave the hub, then say goodbye and release the cluster's count
    /// together.
    fn start_closing(&mut self) {
        let Phase::Live { socket, .. } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let reason = self
            .client
            .conn
            .reason()
            .unwrap_or(DisconnectReason::ConnectionLost);
        self.unregister();
        let Client { shared, conn } = &self.client;
        shared.counters.closed(reason);
        let (conn, shared) = (conn.clone(), shared.clone());
        let in_cluster = self.in_cluster;
        let timeout = shared.config.close_timeout;
        self.phase = Phase::Closing(Box::pin(async move {
            let release = async {
                if in_cluster {
                    shared.release_in_cluster(&conn.info).await;
                }
            };
            tokio::join!(release, socket.close(Some(&conn), reason, timeout));
        }));
    }
}

impl Future for Serving {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Live {
                    socket,
                    clock,
                    rate,
                    timer,
                } => {
                    let mut live = socket::Live {
                        client: &this.client,
                        handler: &this.handler,
                        clock,
                        rate,
                    };
                    if socket
                        .poll_serve(cx, &mut live, timer.as_mut())
                        .is_pending()
                    {
                        return Poll::Pending;
                    }
                    this.start_closing();
                }
                Phase::Closing(closing) => {
                    if closing.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.phase = Phase::Done;
                    let conn = &this.client.conn;
                    conn.shut();
                    let reason = conn.reason().unwrap_or(DisconnectReason::ConnectionLost);
                    disconnected(&this.handler, conn, reason);
                    return Poll::Ready(());
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.unregister();
        // However serving ended (a panic, a runtime shutting down), the handle lets go of the
        // socket it may hold for write-through: the socket closes with this task.
        self.client.conn.shut();
    }
}

/// A connection that passed every limit and is registered: ready to be driven.
pub(crate) struct Admitted {
    conn: Arc<ConnHandle>,
    /// The cluster counts it until released.
    in_cluster: bool,
    expires_at: Option<SystemTime>,
}

impl Admitted {
    /// The connection's handle.
    pub(crate) fn conn(&self) -> &Arc<ConnHandle> {
        &self.conn
    }
}

/// Reserves the cluster's and this node's limits and registers the connection, queueing
/// `welcome` (and a replay, if asked for). `inbound` is set for transports whose client frames
/// arrive by another route (SSE posts). A refusal is counted and logged here.
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    request: ConnectRequest,
    protocol: u8,
    inbound: Option<mpsc::Sender<Message>>,
) -> Result<Admitted, DisconnectReason> {
    let candidate = Candidate::new(shared, request, protocol);
    // The cluster (if any) reserves its limits first; its refusal needs no local work.
    let seat = if !shared.allow_connect(candidate.info.ip) {
        Err(DisconnectReason::RateLimited)
    } else if shared.in_cluster() {
        let since = candidate.recovery.as_ref().map(|r| r.since);
        // Boxed, here and below: the cluster's calls would otherwise make every connect's
        // future larger.
        Box::pin(shared.admit_in_cluster(&candidate.info, candidate.lobby.as_ref(), since)).await
    } else {
        Ok(crate::shared::ClusterSeat::default())
    };
    match candidate.register(shared, seat, inbound) {
        Ok(admitted) => Ok(admitted),
        Err(refused) => {
            if refused.in_cluster {
                Box::pin(shared.release_in_cluster(&refused.conn.info)).await;
            }
            Err(refused.counted(shared))
        }
    }
}

/// [`admit`] on a node alone (no cluster to ask): without waiting.
pub(crate) fn admit_alone(
    shared: &Arc<Shared>,
    request: ConnectRequest,
    protocol: u8,
    inbound: Option<mpsc::Sender<Message>>,
) -> Result<Admitted, DisconnectReason> {
    debug_assert!(!shared.in_cluster(), "a cluster's admission waits for it");
    let candidate = Candidate::new(shared, request, protocol);
    let seat = if shared.allow_connect(candidate.info.ip) {
        Ok(crate::shared::ClusterSeat::default())
    } else {
        Err(DisconnectReason::RateLimited)
    };
    candidate
        .register(shared, seat, inbound)
        .map_err(|refused| refused.counted(shared))
}

/// A connect on its way in: numbered, not admitted yet.
struct Candidate {
    seq: u64,
    info: ConnectionInfo,
    lobby: Option<LobbyCode>,
    recovery: Option<crate::history::Recovery>,
    allowed: Option<crate::request::LobbyFilter>,
    expires_at: Option<SystemTime>,
}

/// A connect refused after its handle was made.
struct Refused {
    conn: Arc<ConnHandle>,
    reason: DisconnectReason,
    lobby: Option<LobbyCode>,
    /// The cluster counts it until released.
    in_cluster: bool,
}

impl Refused {
    /// Counts and logs the refusal; its reason.
    fn counted(self, shared: &Shared) -> DisconnectReason {
        let Self {
            conn,
            reason,
            lobby,
            ..
        } = self;
        shared.counters.rejected(reason);
        let lobby = lobby.as_ref().map_or("", LobbyCode::as_str);
        tracing::info!(user = %conn.info.user_id, lobby, ip = %conn.info.ip, %reason, "connection refused");
        reason
    }
}

impl Candidate {
    fn new(shared: &Shared, request: ConnectRequest, protocol: u8) -> Self {
        let seq = shared.next_seq();
        Self {
            seq,
            info: ConnectionInfo {
                id: crate::ids::ConnectionId::new(&shared.config.node_id, seq),
                user_id: request.user_id,
                protocol,
                ip: request.ip,
                connected_at: SystemTime::now(),
            },
            lobby: request.lobby,
            recovery: request.recovery,
            allowed: request.allowed,
            expires_at: request.expires_at,
        }
    }

    /// Registers the connection in the hub with `seat` (the cluster's answer, if any).
    fn register(
        self,
        shared: &Shared,
        seat: Result<crate::shared::ClusterSeat, DisconnectReason>,
        inbound: Option<mpsc::Sender<Message>>,
    ) -> Result<Admitted, Refused> {
        let (seat, refused) = match seat {
            Ok(seat) => (seat, None),
            Err(reason) => (crate::shared::ClusterSeat::default(), Some(reason)),
        };
        // From here on the cluster counts this connection until it is released.
        let in_cluster = seat.held;
        // Room for a full replay after `welcome`, whatever the queue size.
        let capacity = shared.config.effective_queue_capacity();
        let mut handle = ConnHandle::new(self.seq, self.info, capacity);
        handle.cluster_presence = seat.presence_events.is_some();
        handle.inbound = inbound;
        let conn = Arc::new(handle);
        let registered = match refused {
            Some(reason) => Err(reason),
            None => register(
                shared,
                &conn,
                self.lobby.as_ref(),
                &seat,
                self.recovery.as_ref(),
                self.allowed,
                self.expires_at.map(crate::protocol::system_ms),
            ),
        };
        match registered {
            Ok(()) => Ok(Admitted {
                conn,
                in_cluster,
                expires_at: self.expires_at,
            }),
            Err(reason) => Err(Refused {
                conn,
                reason,
                lobby: self.lobby,
                in_cluster,
            }),
        }
    }
}

/// Registers a connection in the hub, `welcome` its first frame (see [`admit`]); a function of
/// its own so that none of this is kept in `admit`'s future.
fn register(
    shared: &Shared,
    conn: &Arc<ConnHandle>,
    lobby: Option<&LobbyCode>,
    seat: &crate::shared::ClusterSeat,
    recovery: Option<&crate::history::Recovery>,
    allowed: Option<crate::request::LobbyFilter>,
    token_expires_at: Option<u64>,
) -> Result<(), DisconnectReason> {
    let config = &shared.config;
    let info = &conn.info;
    let protocol = info.protocol;
    let presence_events = seat.presence_events;
    // `welcome` is written here, before the registry's lock; a v1 one gets its lobby's state
    // under it.
    let ping_interval_ms = config.ping_interval.as_millis() as u64;
    let v2_welcome = || {
        welcome_v2(
            &info.id,
            &info.user_id,
            ping_interval_ms,
            unix_ms(),
            PROTOCOL_V2,
            config.limits.max_lobbies_per_connection,
            token_expires_at,
        )
    };
    let prepared = match lobby {
        Some(lobby) if protocol < 2 => Ok(WelcomeV1::new(
            &info.id,
            &info.user_id,
            lobby,
            ping_interval_ms,
            unix_ms(),
            PROTOCOL_VERSION,
        )),
        _ => Err(v2_welcome()),
    };
    let welcome = |state: Option<LobbyState<'_>>| {
        crate::protocol::text(match (prepared, state) {
            (Ok(v1), Some(state)) => v1.finish(
                presence_events.unwrap_or(state.presence_events),
                state.offset,
                state.epoch,
            ),
            (Ok(_), None) => v2_welcome(),
            (Err(v2), _) => v2,
        })
    };
    let join = lobby.map(|lobby| Join {
        lobby,
        recovery,
        cluster_history: seat.history.as_ref(),
    });
    shared.hub.register(conn.clone(), join, allowed, welcome)
}

/// Drives an admitted connection over a stream of client frames and a sink of server frames
/// (SSE) until it ends, then removes every trace of it.
pub(crate) async fn drive<St, Si>(
    shared: Arc<Shared>,
    handler: AppHandler,
    admitted: Admitted,
    mut stream: St,
    sink: Si,
) where
    St: futures_util::Stream<Item = Message> + Unpin,
    Si: futures_util::Sink<Message> + Unpin + Send + 'static,
{
    let Admitted {
        conn,
        in_cluster,
        expires_at,
    } = admitted;
    let registration = Registration {
        shared: &shared,
        seq: conn.seq,
    };
    let client = Client::new(shared.clone(), conn.clone());
    connected(&client, &handler);
    let writer = shared
        .tracker
        .spawn(writer::run(sink, conn.clone(), shared.clone()));
    sse_reader::run(&mut stream, &client, &handler, expires_at).await;
    let reason = conn.reason().unwrap_or(DisconnectReason::ConnectionLost);
    drop(registration);
    shared.counters.closed(reason);
    if in_cluster {
        shared.release_in_cluster(&conn.info).await;
    }
    drop(stream);
    let _ = writer.await;
    conn.shut();
    disconnected(&handler, &conn, reason);
}

fn connected(client: &Client, handler: &AppHandler) {
    let info = client.info();
    tracing::info!(id = %info.id, user = %info.user_id, protocol = info.protocol, ip = %info.ip, "connected");
    handler.on_connect(client);
}

fn disconnected(handler: &AppHandler, conn: &ConnHandle, reason: DisconnectReason) {
    let duration = conn.info.connected_at.elapsed().unwrap_or_default();
    tracing::info!(id = %conn.info.id, user = %conn.info.user_id, %reason, duration_ms = duration.as_millis() as u64, "disconnected");
    handler.on_disconnect(&conn.info, reason);
}

/// Removes the connection from the hub when dropped: on every path out of [`drive`], panics
/// included.
struct Registration<'a> {
    shared: &'a Arc<Shared>,
    seq: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        leave_hub(self.shared, self.seq);
    }
}

/// Removes a connection from every index of the hub; a leave inside a leave grace is timed.
fn leave_hub(shared: &Arc<Shared>, seq: u64) {
    shared.hub.leave(seq);
}

/// The `goodbye` frame, for the closes that invite a retry.
fn goodbye_frame(reason: DisconnectReason) -> Option<String> {
    let code = reason.close_code()?;
    let retry_after_ms = reason.retry_after_ms()?;
    Some(
        ServerFrame::Goodbye {
            code,
            reason: reason.as_str(),
            retry_after_ms,
        }
        .encode(),
    )
}

/// The `Message` for a close frame with this reason's code and word.
pub(crate) fn close_message(reason: DisconnectReason) -> Option<Message> {
    let code = reason.close_code()?;
    Some(Message::Close(Some(axum::extract::ws::CloseFrame {
        code,
        reason: reason.as_str().into(),
    })))
}
