//! The WebSocket transport: one task per connection, driven by readiness.
//!
//! The task waits on three things at once: the socket, the outbound queue (an offer or a close
//! wakes it) and the health timer. While a connection is idle it holds no buffer: reads land
//! in a per-thread buffer and are decoded in place; queued frames are encoded into another
//! per-thread buffer and written in one syscall. Only bytes the socket did not take yet, or a
//! frame split across reads, are kept with the connection.

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::dispatch;
use super::health::HealthClock;
use super::rate::MessageRate;
use crate::client::Client;
use crate::disconnect::DisconnectReason;
use crate::handle::{
    ConnHandle, Encoding, MAX_BATCH, Open, Outgoing, Take, WRITE_BATCH_BYTES, message_parts,
};
use crate::handler::AppHandler;
use crate::shared::Shared;
use crate::ws::Upgraded;
use crate::ws::deflate::Deflate;
use crate::ws::frame::{self, Decoder, Frame, OpCode};

/// Reads per wakeup before the task lets others run.
const MAX_READS: usize = 16;
/// Each worker thread's read buffer.
const READ_CHUNK: usize = 16 * 1024;
/// A thread's write buffer larger than this after a batch is given back.
const KEEP_WRITE_BUF: usize = 256 * 1024;
/// Pong replies the peer leaves unread beyond this close it as a slow consumer: pings must
/// not grow memory without bound.
const MAX_UNSENT_REPLIES: usize = 64 * 1024;
/// How long a stale connection's goodbye may wait for room in its socket.
const STALE_CLOSE_DEADLINE: Duration = Duration::from_millis(100);
/// The read buffer of a closing connection, waiting for the peer's close reply.
const CLOSING_READ: usize = 1024;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
    static WRITE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A WebSocket connection's socket and the little state it needs between wakeups.
pub(crate) struct Socket {
    io: Upgraded,
    decoder: Decoder,
    /// Encoded bytes the socket has not taken yet; no allocation when caught up.
    unsent: Vec<u8>,
    /// The peer's close frame arrived, with this code: the close reply echoes it.
    peer_close: Option<Option<u16>>,
    /// permessage-deflate, if it was negotiated (beside `peer_close`: in its padding).
    deflate: Option<Deflate>,
    /// `unsent` holds the 101 answer, not tried yet: it goes out with the first frames
    /// (`welcome`), in one write.
    preface: bool,
    /// The task left the outbox open to write-through (it had nothing to write): it claims
    /// the socket back before writing anything of its own.
    open: bool,
}

impl Socket {
    pub(crate) fn new(mut io: Upgraded, max_message: usize, deflate: Option<Deflate>) -> Self {
        let unsent = io.take_preface();
        Self {
            io,
            decoder: Decoder::new(max_message).with_deflate(deflate.is_some()),
            preface: !unsent.is_empty(),
            unsent,
            peer_close: None,
            deflate,
            open: false,
        }
    }

    /// Serves the connection until it has a [`DisconnectReason`]: `Ready` then.
    pub(super) fn poll_serve(
        &mut self,
        cx: &mut Context<'_>,
        live: &mut Live<'_>,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<()> {
        let Client { conn, shared } = live.client;
        conn.set_waker(cx.waker());
        if conn.reason().is_some() {
            return Poll::Ready(());
        }
        while timer.as_mut().poll(cx).is_ready() {
            if let Some(reason) = live.clock.tick(conn, shared) {
                conn.close(reason);
                return Poll::Ready(());
            }
            timer.as_mut().reset(live.clock.next_deadline());
        }
        if let Err(reason) = self.poll_io(cx, live) {
            conn.close(reason);
            return Poll::Ready(());
        }
        if conn.reason().is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Write, read, write: what was queued goes out before any reply to what is read
    /// (`welcome` before the pong to a ping sent along with the upgrade request), and the
    /// replies go out in the same wakeup.
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        live: &mut Live<'_>,
    ) -> Result<(), DisconnectReason> {
        let lost = |()| DisconnectReason::ConnectionLost;
        let Client { conn, shared } = live.client;
        self.poll_write(cx, conn, shared).map_err(lost)?;
        if let Poll::Ready(reason) = self.poll_read(cx, live) {
            return Err(reason);
        }
        self.poll_write(cx, conn, shared).map_err(lost)
    }

    /// Reads and handles frames until the socket has nothing more (`Pending`) or the
    /// connection must end (`Ready` with why).
    fn poll_read(&mut self, cx: &mut Context<'_>, live: &mut Live<'_>) -> Poll<DisconnectReason> {
        // The broadcasts of this wakeup's reads (until the socket has nothing more, at most
        // `MAX_READS`) reach each member once, when they are all dispatched: a lone message
        // goes out at once, a flood in as few writes as it came in reads (the guard drops
        // when this returns, however it returns).
        let _batch = crate::cork::cork();
        for _ in 0..MAX_READS {
            let step = with_read_buffer(|buf| {
                let n = {
                    let mut read = ReadBuf::new(buf);
                    match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => {
                            return Poll::Ready(Some(DisconnectReason::ConnectionLost));
                        }
                        Poll::Ready(Ok(())) => read.filled().len(),
                    }
                };
                if n == 0 {
                    return Poll::Ready(Some(DisconnectReason::ConnectionLost));
                }
                live.clock.last_seen = Instant::now();
                let (unsent, open, peer_close) =
                    (&mut self.unsent, &mut self.open, &mut self.peer_close);
                let fed = self.decoder.feed(&mut buf[..n], |frame| {
                    match live.on_frame(frame, Own { unsent, open }, peer_close) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(reason) => ControlFlow::Break(reason),
                    }
                });
                Poll::Ready(fed.unwrap_or_else(|e| Some(e.into())))
            });
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(reason)) => return Poll::Ready(reason),
                Poll::Ready(None) => {}
            }
        }
        // More may be waiting: come back after others had a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes what the socket has not taken yet, then queued frames, until the socket pushes
    /// back or nothing is left. `Err` when the socket fails.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        conn: &Arc<ConnHandle>,
        shared: &Arc<Shared>,
    ) -> Result<(), ()> {
        loop {
            while !self.preface && !self.unsent.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &self.unsent) {
                    Poll::Ready(Ok(0) | Err(_)) => return Err(()),
                    Poll::Ready(Ok(n)) => drop(self.unsent.drain(..n)),
                    Poll::Pending => {
                        // The kernel's buffer is full: the peer is not reading (for now).
                        conn.set_blocked(true);
                        return Ok(());
                    }
                }
            }
            conn.set_blocked(false);
            if !self.preface && self.unsent.capacity() > 0 {
                self.unsent = Vec::new();
            }
            let (mut frames, mut bytes) = (0, 0);
            let encoding = Encoding {
                window_bits: self.deflate.and_then(Deflate::window_bits),
                min_bytes: u32::try_from(shared.config.compression.min_bytes).unwrap_or(u32::MAX),
            };
            // Taken out of the queue first and encoded after: compressing must not hold the
            // queue's lock, which every offer to this connection takes.
            let mut batch = SmallVec::<[Outgoing; MAX_BATCH]>::new();
            // With nothing of its own to write, the task lets publishers write into the socket
            // while it waits.
            let open = match self.io.tcp() {
                Some(stream) if !self.preface => Some(Open {
                    stream,
                    counters: &shared.counters,
                    encoding,
                }),
                _ => None,
            };
            let take = Take {
                max: MAX_BATCH,
                max_bytes: WRITE_BATCH_BYTES,
                open,
                spill: &mut self.unsent,
            };
            let taken = conn.poll_take(cx, take, |m| batch.push(m));
            self.open = taken.is_pending() && open.is_some();
            let written = with_write_buffer(|buf| {
                buf.clear();
                self.preface = false;
                if !self.unsent.is_empty() {
                    // The 101 (or what a write-through left unwritten) first, then the
                    // frames, in one write.
                    buf.append(&mut self.unsent);
                    self.unsent = Vec::new();
                }
                match taken {
                    Poll::Ready(taken) => {
                        for message in batch.drain(..) {
                            bytes += encoding.encode(buf, &message, &shared.counters);
                        }
                        frames = taken as u64;
                    }
                    Poll::Pending if buf.is_empty() => return Ok(false),
                    Poll::Pending => {}
                }
                let mut at = 0;
                while at < buf.len() {
                    match Pin::new(&mut self.io).poll_write(cx, &buf[at..]) {
                        Poll::Ready(Ok(0) | Err(_)) => return Err(()),
                        Poll::Ready(Ok(n)) => at += n,
                        Poll::Pending => {
                            self.unsent.extend_from_slice(&buf[at..]);
                            break;
                        }
                    }
                }
                if buf.capacity() > KEEP_WRITE_BUF {
                    *buf = Vec::new();
                }
                Ok(true)
            })?;
            if frames > 0 {
                shared.counters.messages_out(frames, bytes);
            }
            if !written {
                // Caught up after dropping join/leave events: one fresh list replaces them.
                if conn.presence_behind.swap(false, Ordering::Relaxed) {
                    shared.queue_presence_lists(conn);
                    continue;
                }
                // Drained after missing broadcasts: the lobbies' histories fill the gap.
                if conn.lagging.swap(false, Ordering::Relaxed) {
                    shared.hub.catch_up(conn);
                    continue;
                }
                return Ok(());
            }
        }
    }

    /// Ends the connection on the wire: frames queued before the close (when the server is
    /// the one closing), `goodbye` when the close invites a retry, the close frame, then the
    /// peer's close reply, all within `timeout`. The socket is dropped when this returns.
    ///
    /// The queued frames go out from the queue itself, a batch at a time: a closing
    /// connection copies at most one batch (`WRITE_BATCH_BYTES`), whatever its backlog, and
    /// what the deadline leaves unsent is dropped with the queue.
    pub(crate) async fn close(
        mut self,
        conn: Option<&ConnHandle>,
        reason: DisconnectReason,
        timeout: Duration,
    ) {
        let code = reason.close_code();
        if let Some(conn) = conn {
            // Nobody writes through any more; what a write-through left unwritten goes first.
            conn.claim_writes(&mut self.unsent, true);
        }
        // A stale peer has been silent for `ping_interval + pong_timeout`: it gets what its
        // socket takes at once (not its backlog), and no wait for a reply that will not come.
        let stale = reason == DisconnectReason::Stale;
        let mut last_words = Vec::new();
        if let Some(goodbye) = super::goodbye_frame(reason) {
            frame::encode(&mut last_words, OpCode::Text, goodbye.as_bytes());
        }
        match (code, self.peer_close) {
            (Some(code), _) => frame::encode_close(&mut last_words, Some(code), reason.as_str()),
            // The peer closed first: echo its code.
            (None, Some(code)) => frame::encode_close(&mut last_words, code, ""),
            // The socket is gone: nothing to say.
            (None, None) => return,
        }
        let backlog = conn.filter(|_| code.is_some() && !stale);
        let patience = if stale {
            timeout.min(STALE_CLOSE_DEADLINE)
        } else {
            timeout
        };
        let said = tokio::time::timeout(patience, async {
            let unsent = std::mem::take(&mut self.unsent);
            self.io.write_all(&unsent).await?;
            drop(unsent);
            if let Some(conn) = backlog {
                self.write_backlog(conn).await?;
            }
            self.io.write_all(&last_words).await?;
            if code.is_some() && !stale {
                self.await_close_reply().await;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if matches!(said, Ok(Ok(()))) {
            let _ = tokio::time::timeout(patience, self.io.shutdown()).await;
        }
    }

    /// Writes what is queued, oldest first, taking one batch at a time from the queue: small
    /// frames are encoded together (at most `WRITE_BATCH_BYTES`), a larger one is written
    /// as its header then its payload straight from the shared frame.
    async fn write_backlog(&mut self, conn: &ConnHandle) -> std::io::Result<()> {
        let mut frames = Vec::new();
        let mut out = Vec::new();
        while conn.take_batch(MAX_BATCH, WRITE_BATCH_BYTES, |m| frames.push(m)) > 0 {
            for message in frames.drain(..) {
                let Some((opcode, payload)) = message_parts(message.message()) else {
                    continue;
                };
                if payload.len() < WRITE_BATCH_BYTES / 4 {
                    frame::encode(&mut out, opcode, payload);
                } else {
                    frame::encode_header(&mut out, opcode, payload.len());
                    self.io.write_all(&out).await?;
                    out.clear();
                    self.io.write_all(payload).await?;
                }
            }
            self.io.write_all(&out).await?;
            out.clear();
        }
        Ok(())
    }

    /// Reads until the peer's close frame, the end of the stream, or a broken frame.
    async fn await_close_reply(&mut self) {
        let mut buf = vec![0; CLOSING_READ];
        loop {
            match self.io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let fed = self.decoder.feed(&mut buf[..n], |frame| match frame {
                        Frame::Close(..) => ControlFlow::Break(()),
                        _ => ControlFlow::Continue(()),
                    });
                    if !matches!(fed, Ok(None)) {
                        return;
                    }
                }
            }
        }
    }
}

/// What handling inbound frames needs besides the socket.
pub(super) struct Live<'a> {
    /// The connection's handle and the manager's state, as the handler is handed them.
    pub(super) client: &'a Client,
    pub(super) handler: &'a AppHandler,
    pub(super) clock: &'a mut HealthClock,
    pub(super) rate: &'a mut MessageRate,
}

impl Live<'_> {
    /// Handles one inbound frame; an `Err` closes the connection with that reason.
    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        own: Own<'_>,
        peer_close: &mut Option<Option<u16>>,
    ) -> Result<(), DisconnectReason> {
        let Client { conn, shared } = self.client;
        match frame {
            Frame::Text(text) => {
                dispatch::handle_text(text, self.client, self.handler, self.rate, self.clock)
            }
            Frame::Binary(_) => Err(DisconnectReason::UnsupportedData),
            Frame::Ping(payload) => {
                // Over the rate budget a Ping goes unanswered (and counts as a refusal).
                if !dispatch::charge_control(shared, self.rate)? {
                    return Ok(());
                }
                let unsent = own.claim(conn);
                if unsent.len() > MAX_UNSENT_REPLIES {
                    return Err(DisconnectReason::SlowConsumer);
                }
                frame::encode(unsent, OpCode::Pong, payload);
                Ok(())
            }
            Frame::Pong(payload) => dispatch::handle_pong(payload, conn, shared, self.rate),
            Frame::Close(code, _) => {
                *peer_close = Some(code);
                Err(DisconnectReason::ClientClosed)
            }
        }
    }
}

/// The socket's own bytes, for a reply the task encodes while it reads.
struct Own<'a> {
    unsent: &'a mut Vec<u8>,
    /// Whether publishers may write into the socket now (the outbox is open).
    open: &'a mut bool,
}

impl<'a> Own<'a> {
    /// The bytes to append a reply to, with the socket taken back from write-through first:
    /// the reply then goes out before any broadcast dispatched after it, and after what a
    /// write-through left unwritten.
    fn claim(self, conn: &ConnHandle) -> &'a mut Vec<u8> {
        if std::mem::take(self.open) {
            conn.claim_writes(self.unsent, false);
        }
        self.unsent
    }
}

/// Runs `f` with this thread's read buffer; a nested call (never expected) gets a fresh one.
fn with_read_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut vec![0; READ_CHUNK]),
    })
}

/// Runs `f` with this thread's write buffer; a nested call (never expected) gets a fresh one.
fn with_write_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    WRITE_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}
