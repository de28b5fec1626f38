//! The writer task of transports with a message sink (SSE): drains the outbound queue into
//! the sink, several frames per flush.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::Message;
use futures_util::{Sink, SinkExt};

use super::close_message;
use crate::disconnect::DisconnectReason;
use crate::handle::{ConnHandle, Take};
use crate::protocol::text;
use crate::shared::Shared;

/// Frames written before one flush: waiting frames go out together, without letting one
/// connection's backlog grow a buffer without bound.
const MAX_BATCH: usize = 64;

pub(super) async fn run<S>(mut sink: S, conn: Arc<ConnHandle>, shared: Arc<Shared>)
where
    S: Sink<Message> + Unpin,
{
    let counters = &shared.counters;
    let close_timeout = shared.config.close_timeout;
    let mut batch = Vec::new();
    loop {
        let taken = tokio::select! {
            biased;
            () = conn.closed() => break,
            taken = std::future::poll_fn(|cx| {
                // Never opened to write-through (an SSE stream is not a socket of ours): no spill.
                let take = Take { max: MAX_BATCH, max_bytes: usize::MAX, open: None, spill: &mut Vec::new() };
                conn.poll_take(cx, take, |m| batch.push(m.into_message()))
            }) => taken,
        };
        // A peer that stops reading blocks this write; the close signal still gets through.
        // The write counts as blocked until it completes.
        conn.set_blocked(true);
        let written = tokio::select! {
            biased;
            () = conn.closed() => break,
            written = write_batch(&mut sink, &mut batch) => written,
        };
        conn.set_blocked(false);
        match written {
            Ok(bytes) => counters.messages_out(taken as u64, bytes),
            Err(()) => {
                conn.close(DisconnectReason::ConnectionLost);
                break;
            }
        }
        // Caught up after dropping join/leave events: one fresh list replaces them.
        if conn.presence_behind.swap(false, Ordering::Relaxed) {
            shared.queue_presence_lists(&conn);
        }
        // Drained after missing broadcasts: the lobbies' histories fill the gap.
        if conn.queued() == 0 && conn.lagging.swap(false, Ordering::Relaxed) {
            shared.hub.catch_up(&conn);
        }
    }
    let reason = conn.reason().unwrap_or(DisconnectReason::ConnectionLost);
    // Frames queued before the close still go out first (a backend may explain, then kick).
    // A dead peer never drains the socket: all of it gets a deadline, then the socket goes.
    let _ = tokio::time::timeout(close_timeout, async {
        if reason.close_code().is_some() {
            // A batch at a time: the sink's channel bounds what is encoded ahead.
            while conn.take_batch(MAX_BATCH, usize::MAX, |m| batch.push(m.into_message())) > 0 {
                for frame in batch.drain(..) {
                    sink.feed(frame).await.map_err(drop)?;
                }
            }
        }
        say_goodbye(&mut sink, reason).await
    })
    .await;
}

/// Writes the batch (emptying it) and flushes; returns the payload bytes written.
async fn write_batch<S>(sink: &mut S, batch: &mut Vec<Message>) -> Result<u64, ()>
where
    S: Sink<Message> + Unpin,
{
    let mut bytes = 0;
    for frame in batch.drain(..) {
        bytes += crate::handle::message_payload(&frame).len() as u64;
        sink.feed(frame).await.map_err(drop)?;
    }
    sink.flush().await.map_err(drop)?;
    Ok(bytes)
}

/// Sends the `goodbye` frame (for closes that invite a retry) and the close frame.
async fn say_goodbye<S>(sink: &mut S, reason: DisconnectReason) -> Result<(), ()>
where
    S: Sink<Message> + Unpin,
{
    let Some(close) = close_message(reason) else {
        return sink.close().await.map_err(drop);
    };
    if let Some(goodbye) = super::goodbye_frame(reason) {
        sink.feed(text(goodbye)).await.map_err(drop)?;
    }
    sink.send(close).await.map_err(drop)
}
