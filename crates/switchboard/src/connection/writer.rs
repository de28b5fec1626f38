//! The writer task: drains the outbound queue into the socket, several frames per write.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::Message;
use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;

use super::{ConnHandle, close_message};
use crate::disconnect::DisconnectReason;
use crate::hub::text;
use crate::manager::Shared;
use crate::protocol::ServerFrame;

/// Frames written before one flush: waiting frames go out in one syscall, without letting one
/// connection's backlog grow the write buffer without bound.
const MAX_BATCH: usize = 64;

pub(super) async fn run<S>(
    mut sink: S,
    mut queue: mpsc::Receiver<Message>,
    conn: Arc<ConnHandle>,
    shared: Arc<Shared>,
) where
    S: Sink<Message> + Unpin,
{
    let counters = &shared.counters;
    let close_timeout = shared.config.close_timeout;
    loop {
        let first = tokio::select! {
            biased;
            () = conn.closed() => break,
            next = queue.recv() => match next {
                Some(frame) => frame,
                None => break,
            },
        };
        // A peer that stops reading blocks this write; the close signal still gets through.
        let written = tokio::select! {
            biased;
            () = conn.closed() => break,
            written = async {
                let written = write_batch(&mut sink, first, &mut queue).await?;
                // Caught up after dropping join/leave events: one fresh list replaces them.
                if queue.is_empty() && conn.presence_behind.swap(false, Ordering::Relaxed) {
                    let list = presence_snapshot(&shared, &conn).await;
                    sink.send(list).await.map_err(drop)?;
                }
                Ok(written)
            } => written,
        };
        match written {
            Ok((frames, bytes)) => counters.messages_out(frames, bytes),
            Err(()) => {
                conn.close(DisconnectReason::ConnectionLost);
                break;
            }
        }
    }
    let reason = conn.reason().unwrap_or(DisconnectReason::ConnectionLost);
    // Frames queued before the close still go out first (a backend may explain, then kick).
    // A dead peer never drains the socket: all of it gets a deadline, then the socket goes.
    let _ = tokio::time::timeout(close_timeout, async {
        if reason.close_code().is_some() {
            while let Ok(frame) = queue.try_recv() {
                sink.feed(frame).await.map_err(drop)?;
            }
        }
        say_goodbye(&mut sink, reason).await
    })
    .await;
}

/// The connection's lobby's presence list (cluster-wide in cluster mode).
async fn presence_snapshot(shared: &Shared, conn: &ConnHandle) -> Message {
    if let Some(cluster) = shared.cluster()
        && let Some(users) = cluster.presence(&conn.info.lobby).await
    {
        return super::reader::cluster_presence_frame(&conn.info.lobby, &users);
    }
    shared.hub.presence_frame(&conn.info.lobby)
}

async fn write_batch<S>(
    sink: &mut S,
    first: Message,
    queue: &mut mpsc::Receiver<Message>,
) -> Result<(u64, u64), ()>
where
    S: Sink<Message> + Unpin,
{
    let mut bytes = payload_len(&first);
    sink.feed(first).await.map_err(drop)?;
    let mut written = 1;
    while written < MAX_BATCH as u64 {
        let Ok(frame) = queue.try_recv() else { break };
        bytes += payload_len(&frame);
        sink.feed(frame).await.map_err(drop)?;
        written += 1;
    }
    sink.flush().await.map_err(drop)?;
    Ok((written, bytes))
}

fn payload_len(frame: &Message) -> u64 {
    match frame {
        Message::Text(t) => t.len() as u64,
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len() as u64,
        Message::Close(_) => 0,
    }
}

/// Sends the `goodbye` frame (for closes that invite a retry) and the close frame. For a peer
/// that closed first, only flushes the close reply the WebSocket layer queued.
pub(super) async fn say_goodbye<S>(sink: &mut S, reason: DisconnectReason) -> Result<(), ()>
where
    S: Sink<Message> + Unpin,
{
    let Some(close) = close_message(reason) else {
        return sink.close().await.map_err(drop);
    };
    if let (Some(code), Some(retry_after_ms)) = (reason.close_code(), reason.retry_after_ms()) {
        let goodbye = ServerFrame::Goodbye {
            code,
            reason: reason.as_str(),
            retry_after_ms,
        };
        sink.feed(text(goodbye.encode())).await.map_err(drop)?;
    }
    sink.send(close).await.map_err(drop)
}
