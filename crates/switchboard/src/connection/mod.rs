//! One connection's life: register, run a reader and a writer, end, clean up.
//!
//! Ownership: the reader task (this module's [`run`]) owns the socket's read half and the
//! health clock; the writer task owns the write half and the receiving end of the bounded
//! outbound queue; everyone else holds a [`ConnHandle`]. Every disconnect path sets a
//! [`DisconnectReason`] on the handle first; that wakes both tasks, and the [`Registration`]
//! guard removes the connection from the hub whichever way the reader ends.

mod handle;
mod rate;
mod reader;
mod writer;

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use tokio::sync::mpsc;

pub use handle::ConnectionInfo;
pub(crate) use handle::{ConnHandle, Offer};

use crate::cluster::{Admission, Cluster};
use crate::disconnect::DisconnectReason;
use crate::manager::{ConnectRequest, Shared};
use crate::protocol::{PROTOCOL_VERSION, ServerFrame, unix_ms};

/// Runs one accepted WebSocket until it ends, then removes every trace of it.
pub(crate) async fn run(shared: Arc<Shared>, socket: WebSocket, request: ConnectRequest) {
    match admit(&shared, request, None).await {
        Err(reason) => close_socket(socket, reason, shared.config.close_timeout).await,
        Ok(admitted) => {
            let (sink, stream) = socket.split();
            drive(shared, admitted, stream, sink, true).await;
        }
    }
}

/// A connection that passed every limit and is registered: ready to be driven.
pub(crate) struct Admitted {
    conn: Arc<ConnHandle>,
    queue: mpsc::Receiver<Message>,
    cluster: Option<Arc<dyn Cluster>>,
    expires_at: Option<SystemTime>,
}

/// Reserves the cluster's and this node's limits and registers the connection, queueing
/// `welcome` (and a replay, if asked for). `inbound` is set for transports whose client frames
/// arrive by another route (SSE posts). A refusal is counted and logged here.
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    request: ConnectRequest,
    inbound: Option<mpsc::Sender<Message>>,
) -> Result<Admitted, DisconnectReason> {
    let config = &shared.config;
    let seq = shared.next_seq();
    // Room for a full replay after `welcome`, whatever the queue size.
    let (outbox, queue) = mpsc::channel(config.queue_capacity.max(config.history.size + 2));
    let info = ConnectionInfo {
        id: crate::ids::ConnectionId::new(&config.node_id, seq),
        user_id: request.user_id,
        lobby: request.lobby,
        ip: request.ip,
        connected_at: SystemTime::now(),
    };
    // The cluster (if any) reserves its limits first; its refusal needs no local work.
    let cluster = shared.cluster();
    let admission = match (shared.allow_connect(info.ip), &cluster) {
        (false, _) => Err(DisconnectReason::RateLimited),
        (true, None) => Ok(None),
        (true, Some(cluster)) => match cluster.admit(&info).await {
            Admission::Admitted { presence_events } => Ok(Some(presence_events)),
            Admission::Refused(reason) => Err(reason),
            Admission::Unavailable => Ok(None),
        },
    };
    // From here on the cluster counts this connection until `release`.
    let cluster = cluster.filter(|_| admission.is_ok());
    let mut handle = ConnHandle::new(seq, info, outbox);
    handle.cluster_presence = matches!(admission, Ok(Some(_)));
    handle.inbound = inbound;
    let conn = Arc::new(handle);
    let welcome = |state: crate::hub::WelcomeState<'_>| {
        let info = &conn.info;
        crate::hub::text(
            ServerFrame::Welcome {
                connection_id: &info.id,
                user_id: &info.user_id,
                lobby: &info.lobby,
                ping_interval_ms: config.ping_interval.as_millis() as u64,
                server_time: unix_ms(),
                protocol: PROTOCOL_VERSION,
                presence_events: admission.ok().flatten().unwrap_or(state.presence_events),
                offset: state.offset,
                epoch: state.epoch,
            }
            .encode(),
        )
    };
    // Cluster mode: the lobby's offsets, epoch and kept broadcasts are the cluster's. Read
    // after `admit` subscribed this node to the lobby, so nothing falls between the two.
    let cluster_history = match (&cluster, admission) {
        (Some(cluster), Ok(Some(_))) => {
            let since = request.recovery.as_ref().map(|r| r.since);
            cluster.history(&conn.info.lobby, since).await
        }
        _ => None,
    };
    let registered = admission.and_then(|_| {
        shared.hub.register(
            conn.clone(),
            welcome,
            request.recovery.as_ref(),
            cluster_history.as_ref(),
        )
    });
    if let Err(reason) = registered {
        if let Some(cluster) = &cluster {
            cluster.release(&conn.info).await;
        }
        shared.counters.rejected(reason);
        tracing::info!(user = %conn.info.user_id, lobby = %conn.info.lobby, ip = %conn.info.ip, %reason, "connection refused");
        return Err(reason);
    }
    Ok(Admitted {
        conn,
        queue,
        cluster,
        expires_at: request.expires_at,
    })
}

/// Drives an admitted connection over a transport until it ends, then removes every trace
/// of it. `drain` reads on after the close (WebSocket: the peer's close reply).
pub(crate) async fn drive<St, Si>(
    shared: Arc<Shared>,
    admitted: Admitted,
    mut stream: St,
    sink: Si,
    drain: bool,
) where
    St: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    Si: futures_util::Sink<Message> + Unpin + Send + 'static,
{
    let Admitted {
        conn,
        queue,
        cluster,
        expires_at,
    } = admitted;
    let config = &shared.config;
    let registration = Registration {
        shared: &shared,
        seq: conn.seq,
    };
    tracing::info!(id = %conn.info.id, user = %conn.info.user_id, lobby = %conn.info.lobby, ip = %conn.info.ip, "connected");
    shared.handler.on_connect(&conn.info);

    let writer = shared
        .tracker
        .spawn(writer::run(sink, queue, conn.clone(), shared.clone()));
    reader::run(&mut stream, &conn, &shared, expires_at).await;
    let reason = conn.reason().unwrap_or(DisconnectReason::ConnectionLost);
    drop(registration);
    shared.counters.closed(reason);
    if let Some(cluster) = &cluster {
        cluster.release(&conn.info).await;
    }
    // Read on while the writer says goodbye, so the peer's close reply (or anything else in
    // flight) is consumed and the socket ends with FIN rather than RST.
    if drain {
        let _ = tokio::time::timeout(config.close_timeout, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    let _ = writer.await;
    let duration = conn.info.connected_at.elapsed().unwrap_or_default();
    tracing::info!(id = %conn.info.id, user = %conn.info.user_id, lobby = %conn.info.lobby, %reason, duration_ms = duration.as_millis() as u64, "disconnected");
    shared.handler.on_disconnect(&conn.info, reason);
}

/// Removes the connection from the hub when dropped: on every path out of [`run`], panics
/// included.
struct Registration<'a> {
    shared: &'a Arc<Shared>,
    seq: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.shared.hub.unregister(self.seq) {
            self.shared.time_leave(pending);
        }
    }
}

/// Closes a socket that never got registered: goodbye (when the close invites a retry), close
/// frame, then reading until the peer's close reply, all within `timeout`.
pub(crate) async fn close_socket(
    mut socket: WebSocket,
    reason: DisconnectReason,
    timeout: std::time::Duration,
) {
    let _ = tokio::time::timeout(timeout, async {
        if writer::say_goodbye(&mut socket, reason).await.is_ok() {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}

/// The `Message` for a close frame with this reason's code and word.
pub(crate) fn close_message(reason: DisconnectReason) -> Option<Message> {
    let code = reason.close_code()?;
    Some(Message::Close(Some(axum::extract::ws::CloseFrame {
        code,
        reason: reason.as_str().into(),
    })))
}
