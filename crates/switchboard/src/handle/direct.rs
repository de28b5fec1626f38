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

use super::{Encoding, OutboxState, payload_len};
use crate::stats::Counters;

/// Frames encoded into one write, by a connection's task or a write-through: waiting frames
/// go out in one syscall, without one connection's backlog growing a buffer without bound.
pub(crate) const MAX_BATCH: usize = 64;
/// Payload bytes encoded into one write (unless one frame alone is larger). What a socket
/// does not take is kept with the connection, so this bounds a slow reader's private bytes.
pub(crate) const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// A thread's write-through buffer larger than this after a write is given back.
const KEEP_BUF: usize = 2 * WRITE_BATCH_BYTES;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What a publisher needs to write into a connection's socket itself: the socket, the
/// counters its writes are counted in, and how its frames are encoded.
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) encoding: Encoding,
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
    let Some(encoding) = state.direct.as_ref().map(|d| d.encoding) else {
        return Through::Wake;
    };
    let mut bytes = 0;
    for item in state.iter() {
        // A frame compressed for this connection alone is compressed by its task, outside the
        // queue's lock (offers to it would wait meanwhile).
        if encoding.compresses_alone(item) {
            return Through::Wake;
        }
        bytes += payload_len(item);
    }
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
        let (mut frames, mut wire) = (0, 0);
        while let Some(item) = state.pop_front() {
            // A broadcast is compressed once for all its members (whoever is first).
            wire += direct.encoding.encode(&mut buf, &item, &direct.counters);
            frames += 1;
        }
        state.rest = Default::default();
        state.unannounced = false;
        direct.counters.messages_out(frames, wire);
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
    use super::super::{ConnHandle, Encoding, Open, Outgoing, Take};
    use crate::stats::Counters;
    use crate::ws::frame::{self, OpCode};

    const PLAIN: Encoding = Encoding {
        window_bits: None,
        min_bytes: 256,
    };

    /// A member: its handle, the server's end of its socket (small kernel buffers when
    /// `small`) and the client's, and its task's side.
    struct Member {
        conn: ConnHandle,
        woken: Arc<WakeCount>,
        stream: Arc<TcpStream>,
        client: TcpStream,
        counters: Arc<Counters>,
        encoding: Encoding,
        /// What the task got: a write-through's spill, and the texts it took.
        spill: Vec<u8>,
        frames: Vec<String>,
    }

    impl Member {
        async fn new(small: bool, capacity: usize, encoding: Encoding) -> Self {
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
            let (conn, woken) = handle(1, capacity);
            Self {
                conn,
                woken,
                stream: Arc::new(server),
                client,
                counters: Arc::new(Counters::default()),
                encoding,
                spill: Vec::new(),
                frames: Vec::new(),
            }
        }

        /// The task's side with nothing of its own to write: takes what is queued (and any
        /// spill), opening the outbox when nothing is.
        fn take(&mut self) -> Poll<usize> {
            let waker = Waker::from(self.woken.clone());
            let take = Take {
                max: super::MAX_BATCH,
                max_bytes: super::WRITE_BATCH_BYTES,
                open: Some(Open {
                    stream: &self.stream,
                    counters: &self.counters,
                    encoding: self.encoding,
                }),
                spill: &mut self.spill,
            };
            let frames = &mut self.frames;
            self.conn
                .poll_take(&mut Context::from_waker(&waker), take, |m| {
                    if let axum::extract::ws::Message::Text(t) = m.message() {
                        frames.push(t.to_string());
                    }
                })
        }

        /// Broadcasts `texts` to it as one corked batch does (the `cork` module): offered
        /// quietly, then the listed member served at the batch's end.
        fn broadcast(&self, texts: &[&str]) {
            let mut listed = false;
            for text in texts {
                listed |= self.conn.offer_listed(frame(text)).1;
            }
            if listed {
                self.conn.wake_listed(true);
            }
        }

        async fn read_exactly(&mut self, n: usize) -> Vec<u8> {
            let mut got = vec![0; n];
            self.client.read_exact(&mut got).await.unwrap();
            got
        }
    }

    fn encoded(texts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for text in texts {
            frame::encode(&mut out, OpCode::Text, text.as_bytes());
        }
        out
    }

    #[tokio::test]
    async fn an_open_outbox_is_written_through_without_waking_the_task() {
        let mut m = Member::new(false, 8, PLAIN).await;
        assert!(m.take().is_pending());
        m.broadcast(&["one", "two"]);
        assert_eq!(m.woken.get(), 0, "the task is not woken");
        assert_eq!(m.conn.queued(), 0);
        let want = encoded(&["one", "two"]);
        assert_eq!(m.read_exactly(want.len()).await, want);
        assert_eq!(m.counters.out_for_test(), (2, 6));
        // Still open: the next batch goes through as well.
        m.broadcast(&["three"]);
        let want = encoded(&["three"]);
        assert_eq!(m.read_exactly(want.len()).await, want);
        assert_eq!(m.woken.get(), 0);
    }

    #[tokio::test]
    async fn a_closed_outbox_wakes_the_task_and_writes_nothing() {
        let mut m = Member::new(false, 8, PLAIN).await;
        assert!(m.take().is_pending());
        // The task has a pong of its own to write: it claims the socket back.
        let mut unsent = b"pong".to_vec();
        m.conn.claim_writes(&mut unsent, false);
        assert_eq!(unsent, b"pong");
        m.broadcast(&["one"]);
        assert_eq!(m.woken.get(), 1, "woken to write it itself");
        assert_eq!(m.conn.queued(), 1);
        let mut byte = [0u8; 1];
        assert!(m.client.try_read(&mut byte).is_err(), "nothing was written");
        assert_eq!(m.counters.out_for_test(), (0, 0));
        assert!(m.take().is_ready());
        assert_eq!(m.frames, ["one"]);
    }

    #[tokio::test]
    async fn what_a_full_socket_does_not_take_is_written_first_by_the_task() {
        let mut m = Member::new(true, 64, PLAIN).await;
        let big: Vec<String> = (0..3).map(|n| n.to_string().repeat(16 * 1024)).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        assert!(m.take().is_pending());
        m.broadcast(&big);
        assert_eq!(m.woken.get(), 1, "the rest is the task's");
        // Later broadcasts queue behind the spill; the outbox is closed.
        m.broadcast(&["after"]);
        assert_eq!(m.conn.queued(), 1);
        // The task takes the spill first, then the frames; a pong it had encoded goes after
        // the spill (the spill finishes a frame already begun on the wire).
        let mut unsent = encoded(&["pong"]);
        m.conn.claim_writes(&mut unsent, false);
        assert!(
            unsent.len() > encoded(&["pong"]).len(),
            "the spill came first"
        );
        assert!(unsent.ends_with(&encoded(&["pong"])));
        assert!(m.take().is_ready());
        assert!(m.spill.is_empty(), "claimed already");
        assert_eq!(m.frames, ["after"]);
        let mut want = encoded(&big);
        want.extend(encoded(&["pong"]));
        want.extend(encoded(&["after"]));
        let mut rest = unsent;
        rest.extend(encoded(&["after"]));
        let writer = tokio::spawn({
            let stream = m.stream.clone();
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
        assert_eq!(m.read_exactly(want.len()).await, want);
        writer.await.unwrap();
        assert_eq!(
            m.counters.out_for_test().0,
            3,
            "counted once, by the write-through"
        );
    }

    #[tokio::test]
    async fn a_deflate_member_gets_a_broadcast_compressed_once_and_its_own_frames_from_its_task() {
        let deflate = Encoding {
            window_bits: Some(15),
            min_bytes: 16,
        };
        let mut m = Member::new(false, 8, deflate).await;
        assert!(m.take().is_pending());
        let text = "chat line ".repeat(50);
        let broadcast = Outgoing::shared(frame(&text));
        assert!(m.conn.offer_listed(broadcast.clone()).1);
        m.conn.wake_listed(true);
        assert_eq!(m.woken.get(), 0, "written through");
        // The bytes every member gets: compressed once, on the first write.
        let deflated = broadcast
            .shared_deflated(|_| panic!("compressed already"))
            .flatten()
            .cloned()
            .unwrap();
        let mut want = Vec::new();
        frame::encode_deflated(&mut want, OpCode::Text, &deflated);
        assert_eq!(want[0], 0xc1, "FIN, RSV1, text");
        assert_eq!(m.read_exactly(want.len()).await, want);
        assert_eq!(m.counters.out_for_test(), (1, deflated.len() as u64));
        // A frame of its own would be compressed for it alone: its task does that, outside
        // the queue's lock.
        assert!(m.conn.offer_listed(frame(&text)).1);
        m.conn.wake_listed(true);
        assert_eq!(m.woken.get(), 1);
        assert_eq!(m.conn.queued(), 1);
    }

    #[tokio::test]
    async fn the_handle_lets_go_of_the_socket_when_shut_or_detached() {
        for detach in [true, false] {
            let mut m = Member::new(false, 8, PLAIN).await;
            let _ = m.take();
            assert_eq!(Arc::strong_count(&m.stream), 2);
            if detach {
                m.conn.claim_writes(&mut Vec::new(), true);
            } else {
                m.conn.shut();
            }
            assert_eq!(Arc::strong_count(&m.stream), 1);
        }
    }
}
