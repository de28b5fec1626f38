//! Write-through: a publisher writes a broadcast into an idle member's socket itself.
//!
//! Waking a member's task for every broadcast costs a schedule, a poll, a readiness check and
//! a timer check per member and per broadcast: at 10,000 members, 10,000 task polls for one
//! message. uWebSockets writes to each subscriber inside `publish`; this does the same at the
//! end of a corked batch (the `cork` module), for members whose task said it has nothing to
//! write ([`Outbox`](super::Outbox) is then *open*): the frames are encoded into this
//! thread's buffer and written with one non-blocking `send`, under the member's queue lock.
//!
//! Order holds because the socket has one writer at a time: the task while the outbox is
//! closed, whoever holds the lock while it is open. The task opens it only with nothing of
//! its own half-written, and closes it (under the lock) before it writes again. What the
//! socket does not take of a write-through is kept as the outbox's `spill`, the outbox is
//! closed, and the task is woken to write the spill first: a slow client never makes a
//! publisher wait, and the bytes of a frame are never interleaved with another's.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{OutboxState, message_parts, payload_len};
use crate::stats::Counters;
use crate::ws::frame;

/// Frames encoded into one write, by a connection's task or a write-through.
pub(crate) const MAX_BATCH: usize = 64;
/// Payload bytes encoded into one write (unless one frame alone is larger).
pub(crate) const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// A thread's write-through buffer larger than this after a write is given back.
const KEEP_BUF: usize = 2 * WRITE_BATCH_BYTES;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What a publisher needs to write into a connection's socket itself: the socket, and the
/// counters its writes are counted in.
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) counters: Arc<Counters>,
}

/// How a write-through went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Through {
    /// Everything queued is on the wire: the task need not run.
    Written,
    /// The socket took part or none of it (the rest is the spill), or the outbox was not
    /// open, or holds more than one write: the task must be woken.
    Wake,
}

/// Writes what `state` queues into its socket, if the outbox is open and it all fits in one
/// batch. Called with the member's queue lock held.
pub(super) fn write_through(state: &mut OutboxState) -> Through {
    if !state.open || state.len() > MAX_BATCH {
        return Through::Wake;
    }
    let bytes: usize =
        state.front().map_or(0, payload_len) + state.rest.iter().map(payload_len).sum::<usize>();
    if bytes > WRITE_BATCH_BYTES && state.len() > 1 {
        return Through::Wake;
    }
    // Taken out while the frames are, and put back.
    let Some(direct) = state.direct.take() else {
        return Through::Wake;
    };
    let through = BUF.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return Through::Wake;
        };
        buf.clear();
        let mut frames = 0;
        while let Some(item) = state.pop_front() {
            if let Some((opcode, payload)) = message_parts(item.message()) {
                frame::encode(&mut buf, opcode, payload);
                frames += 1;
            }
        }
        state.rest = Default::default();
        state.unannounced = false;
        direct.counters.messages_out(frames, bytes as u64);
        let written = write_some(&direct.stream, &buf);
        let through = if written == buf.len() {
            Through::Written
        } else {
            // The rest waits for the task, which writes it before anything else.
            state.spill.extend_from_slice(&buf[written..]);
            state.open = false;
            Through::Wake
        };
        if buf.capacity() > KEEP_BUF {
            *buf = Vec::new();
        }
        through
    });
    state.direct = Some(direct);
    through
}

/// Writes as much of `bytes` as the socket takes now, without waiting: how much it took. A
/// failed socket takes nothing; its task finds the failure on its own write.
fn write_some(stream: &TcpStream, bytes: &[u8]) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        match stream.try_write(&bytes[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    use super::super::testing::{WakeCount, frame, handle};
    use super::super::{ConnHandle, Take};
    use crate::stats::Counters;
    use crate::ws::frame::{self, OpCode};

    /// A server-side stream and its client, both with small kernel buffers when `small`.
    async fn pair(small: bool) -> (Arc<TcpStream>, TcpStream) {
        let listen = TcpSocket::new_v4().unwrap();
        let client = TcpSocket::new_v4().unwrap();
        if small {
            listen.set_send_buffer_size(4096).unwrap();
            client.set_recv_buffer_size(4096).unwrap();
        }
        listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = listen.listen(8).unwrap();
        let client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    /// The task's side with nothing of its own to write: takes what is queued (and any
    /// spill), opening the outbox when nothing is.
    fn take(
        conn: &ConnHandle,
        woken: &Arc<WakeCount>,
        open: (&Arc<TcpStream>, &Arc<Counters>),
        spill: &mut Vec<u8>,
        frames: &mut Vec<String>,
    ) -> Poll<usize> {
        let waker = Waker::from(woken.clone());
        let take = Take {
            max: super::MAX_BATCH,
            max_bytes: super::WRITE_BATCH_BYTES,
            open: Some(open),
            spill,
        };
        conn.poll_take(&mut Context::from_waker(&waker), take, |m| {
            if let axum::extract::ws::Message::Text(t) = m.message() {
                frames.push(t.to_string());
            }
        })
    }

    /// Broadcasts `texts` to `conn` as one corked batch does (the `cork` module): offered
    /// quietly, then the listed member served at the batch's end.
    fn broadcast(conn: &ConnHandle, texts: &[&str]) {
        let mut listed = false;
        for text in texts {
            listed |= conn.offer_listed(frame(text)).1;
        }
        if listed {
            conn.wake_listed(true);
        }
    }

    fn encoded(texts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for text in texts {
            frame::encode(&mut out, OpCode::Text, text.as_bytes());
        }
        out
    }

    async fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        client.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn an_open_outbox_is_written_through_without_waking_the_task() {
        let (stream, mut client) = pair(false).await;
        let counters = Arc::new(Counters::default());
        let (conn, woken) = handle(1, 8);
        let conn = Arc::new(conn);
        let (mut spill, mut frames) = (Vec::new(), Vec::new());
        let open = (&stream, &counters);
        assert!(take(&conn, &woken, open, &mut spill, &mut frames).is_pending());
        broadcast(&conn, &["one", "two"]);
        assert_eq!(woken.get(), 0, "the task is not woken");
        assert_eq!(conn.queued(), 0);
        let want = encoded(&["one", "two"]);
        assert_eq!(read_exactly(&mut client, want.len()).await, want);
        assert_eq!(counters.out_for_test(), (2, 6));
        // Still open: the next batch goes through as well.
        broadcast(&conn, &["three"]);
        let want = encoded(&["three"]);
        assert_eq!(read_exactly(&mut client, want.len()).await, want);
        assert_eq!(woken.get(), 0);
    }

    #[tokio::test]
    async fn a_closed_outbox_wakes_the_task_and_writes_nothing() {
        let (stream, client) = pair(false).await;
        let counters = Arc::new(Counters::default());
        let (conn, woken) = handle(1, 8);
        let conn = Arc::new(conn);
        let (mut spill, mut frames) = (Vec::new(), Vec::new());
        assert!(take(&conn, &woken, (&stream, &counters), &mut spill, &mut frames).is_pending());
        // The task has a pong of its own to write: it claims the socket back.
        let mut unsent = b"pong".to_vec();
        conn.claim_writes(&mut unsent, false);
        assert_eq!(unsent, b"pong");
        broadcast(&conn, &["one"]);
        assert_eq!(woken.get(), 1, "woken to write it itself");
        assert_eq!(conn.queued(), 1);
        let mut byte = [0u8; 1];
        assert!(client.try_read(&mut byte).is_err(), "nothing was written");
        assert_eq!(counters.out_for_test(), (0, 0));
        assert!(take(&conn, &woken, (&stream, &counters), &mut spill, &mut frames).is_ready());
        assert_eq!(frames, ["one"]);
    }

    #[tokio::test]
    async fn what_a_full_socket_does_not_take_is_written_first_by_the_task() {
        let (stream, mut client) = pair(true).await;
        let counters = Arc::new(Counters::default());
        let (conn, woken) = handle(1, 64);
        let conn = Arc::new(conn);
        let (mut spill, mut frames) = (Vec::new(), Vec::new());
        let big: Vec<String> = (0..3).map(|n| n.to_string().repeat(16 * 1024)).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        assert!(take(&conn, &woken, (&stream, &counters), &mut spill, &mut frames).is_pending());
        broadcast(&conn, &big);
        assert_eq!(woken.get(), 1, "the rest is the task's");
        // Later broadcasts queue behind the spill; the outbox is closed.
        broadcast(&conn, &["after"]);
        assert_eq!(conn.queued(), 1);
        // The task takes the spill first, then the frames; a pong it had encoded goes after
        // the spill (the spill finishes a frame already begun on the wire).
        let mut unsent = encoded(&["pong"]);
        conn.claim_writes(&mut unsent, false);
        assert!(
            unsent.len() > encoded(&["pong"]).len(),
            "the spill came first"
        );
        assert!(unsent.ends_with(&encoded(&["pong"])));
        assert!(take(&conn, &woken, (&stream, &counters), &mut spill, &mut frames).is_ready());
        assert!(spill.is_empty(), "claimed already");
        assert_eq!(frames, ["after"]);
        let mut want = encoded(&big);
        want.extend(encoded(&["pong"]));
        want.extend(encoded(&["after"]));
        let mut rest = unsent;
        rest.extend(encoded(&["after"]));
        let writer = tokio::spawn({
            let stream = stream.clone();
            async move {
                let mut at = 0;
                while at < rest.len() {
                    stream.writable().await.unwrap();
                    match stream.try_write(&rest[at..]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        assert_eq!(read_exactly(&mut client, want.len()).await, want);
        writer.await.unwrap();
        assert_eq!(
            counters.out_for_test().0,
            3,
            "counted once, by the write-through"
        );
    }

    #[tokio::test]
    async fn the_handle_lets_go_of_the_socket_when_shut_or_detached() {
        let (stream, _client) = pair(false).await;
        let counters = Arc::new(Counters::default());
        for detach in [true, false] {
            let (conn, woken) = handle(1, 8);
            let (mut spill, mut frames) = (Vec::new(), Vec::new());
            let _ = take(&conn, &woken, (&stream, &counters), &mut spill, &mut frames);
            assert_eq!(Arc::strong_count(&stream), 2);
            if detach {
                conn.claim_writes(&mut Vec::new(), true);
            } else {
                conn.shut();
            }
            assert_eq!(Arc::strong_count(&stream), 1);
        }
    }
}
