//! Benchmark server: one WebSocket fan-out server, several stacks.
//!
//! usage: server --stack <axum-default|axum-tuned|axum-wbuf8k|axum-rbuf1k|fastwebsockets|tungstenite-raw>
//!               --port PORT [--max-secs S]
//!
//! Every connection: a reader task (reads and discards frames; "go:N:SIZE" triggers a fan-out)
//! and a writer task draining a bounded mpsc (256) of pre-built, reference-counted text
//! messages, coalescing up to 64 queued messages per flush. The registry is a
//! Mutex<Vec<Sender>> holding every connection's sender.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{self, error::TrySendError};

const CHANNEL_CAP: usize = 256;
const COALESCE_MAX: usize = 64;

type Registry<M> = Arc<Mutex<Vec<mpsc::Sender<M>>>>;

/// Parse "go:N:SIZE".
fn parse_go(s: &str) -> Option<(usize, usize)> {
    let mut it = s.strip_prefix("go:")?.split(':');
    let n = it.next()?.parse().ok()?;
    let size = it.next()?.parse().ok()?;
    // bound the work one command can ask for
    if n > 100_000 || size > 1 << 20 {
        return None;
    }
    Some((n, size))
}

/// Enqueue `msg` n times into every registered connection; log the timing.
fn fan_out<M: Clone>(reg: &Registry<M>, n: usize, size: usize, msg: M) {
    let start = Instant::now();
    let (mut ok, mut drops, mut closed) = (0u64, 0u64, 0u64);
    let guard = reg.lock().unwrap();
    let recipients = guard.len();
    for tx in guard.iter() {
        for _ in 0..n {
            match tx.try_send(msg.clone()) {
                Ok(()) => ok += 1,
                Err(TrySendError::Full(_)) => drops += 1,
                Err(TrySendError::Closed(_)) => closed += 1,
            }
        }
    }
    drop(guard);
    let el = start.elapsed();
    let per_recipient_ns = if recipients > 0 { el.as_nanos() as u64 / recipients as u64 } else { 0 };
    println!(
        "ENQUEUE n={n} size={size} recipients={recipients} ok={ok} drops={drops} closed={closed} \
         elapsed_us={} per_recipient_ns={per_recipient_ns}",
        el.as_micros()
    );
}

fn payload(size: usize) -> String {
    "x".repeat(size)
}

/// Generic coalescing writer over any futures Sink.
async fn sink_writer<S, M>(mut sink: S, mut rx: mpsc::Receiver<M>)
where
    S: Sink<M> + Unpin,
{
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        for _ in 1..COALESCE_MAX {
            match rx.try_recv() {
                Ok(m) => {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- axum

mod axum_stack {
    use super::*;
    use axum::extract::State;
    use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
    use axum::response::Response;
    use axum::serve::ListenerExt;

    #[derive(Clone)]
    struct St {
        reg: Registry<Message>,
        read_buf: Option<usize>,
        write_buf: Option<usize>,
    }

    pub async fn run(listener: TcpListener, read_buf: Option<usize>, write_buf: Option<usize>) {
        let st = St { reg: Arc::new(Mutex::new(Vec::new())), read_buf, write_buf };
        let app = axum::Router::new().fallback(handler).with_state(st);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.unwrap();
    }

    async fn handler(State(st): State<St>, mut ws: WebSocketUpgrade) -> Response {
        if let Some(r) = st.read_buf {
            ws = ws.read_buffer_size(r);
        }
        if let Some(w) = st.write_buf {
            ws = ws.write_buffer_size(w);
        }
        let reg = st.reg.clone();
        ws.on_upgrade(move |socket| conn(socket, reg))
    }

    async fn conn(socket: WebSocket, reg: Registry<Message>) {
        let (sink, mut stream) = socket.split();
        let (tx, rx) = mpsc::channel::<Message>(CHANNEL_CAP);
        reg.lock().unwrap().push(tx);
        tokio::spawn(sink_writer(sink, rx));
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(t) => {
                    if let Some((n, size)) = parse_go(t.as_str()) {
                        let m = Message::Text(Utf8Bytes::from(payload(size)));
                        fan_out(&reg, n, size, m);
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------- raw tokio-tungstenite

mod tungstenite_stack {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

    pub async fn run(listener: TcpListener) {
        let reg: Registry<Message> = Arc::new(Mutex::new(Vec::new()));
        let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(8192);
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let reg = reg.clone();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg)).await
                else {
                    return;
                };
                let (sink, mut stream) = ws.split();
                let (tx, rx) = mpsc::channel::<Message>(CHANNEL_CAP);
                reg.lock().unwrap().push(tx);
                tokio::spawn(sink_writer(sink, rx));
                while let Some(Ok(msg)) = stream.next().await {
                    match msg {
                        Message::Text(t) => {
                            if let Some((n, size)) = parse_go(t.as_str()) {
                                let m = Message::Text(Utf8Bytes::from(payload(size)));
                                fan_out(&reg, n, size, m);
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    }
}

// ---------------------------------------------------------------- fastwebsockets

/// AsyncWrite adapter that buffers writes in a Vec that starts empty and is released
/// after every flush, so an idle connection holds no write buffer. This gives
/// fastwebsockets (which writes every frame straight to the stream) the same
/// "feed N, flush once" coalescing the Sink-based stacks get.
struct LazyBuf<W> {
    inner: W,
    buf: Vec<u8>,
    pos: usize,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LazyBuf<W> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        // Bounded by the writer: at most COALESCE_MAX frames per flush.
        self.get_mut().buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        while me.pos < me.buf.len() {
            match Pin::new(&mut me.inner).poll_write(cx, &me.buf[me.pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(k)) => me.pos += k,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        me.buf = Vec::new();
        me.pos = 0;
        Pin::new(&mut me.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.get_mut().inner).poll_shutdown(cx),
            other => other,
        }
    }
}

mod fastws_stack {
    use super::*;
    use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
    use http_body_util::Empty;
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    pub async fn run(listener: TcpListener) {
        let reg: Registry<Bytes> = Arc::new(Mutex::new(Vec::new()));
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let reg = reg.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, reg.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    }

    async fn handle(
        mut req: Request<Incoming>,
        reg: Registry<Bytes>,
    ) -> Result<Response<Empty<Bytes>>, WebSocketError> {
        let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
        tokio::spawn(async move {
            let Ok(ws) = fut.await else { return };
            let (mut rd, wr) = ws.split(|s| {
                let (r, w) = tokio::io::split(s);
                (r, LazyBuf { inner: w, buf: Vec::new(), pos: 0 })
            });
            let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CAP);
            reg.lock().unwrap().push(tx);
            tokio::spawn(writer(wr, rx));
            // No obligated sends are forwarded (no pings in this benchmark).
            let mut noop = |_f: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
            loop {
                let Ok(frame) = rd.read_frame(&mut noop).await else { break };
                match frame.opcode {
                    OpCode::Text => {
                        let go = std::str::from_utf8(&frame.payload).ok().and_then(parse_go);
                        if let Some((n, size)) = go {
                            fan_out(&reg, n, size, Bytes::from(payload(size)));
                        }
                    }
                    OpCode::Close => break,
                    _ => {}
                }
            }
        });
        Ok(resp)
    }

    async fn writer<W: AsyncWrite + Unpin>(
        mut wr: fastwebsockets::WebSocketWrite<W>,
        mut rx: mpsc::Receiver<Bytes>,
    ) {
        while let Some(b) = rx.recv().await {
            if wr.write_frame(Frame::text(Payload::Borrowed(&b))).await.is_err() {
                return;
            }
            for _ in 1..COALESCE_MAX {
                match rx.try_recv() {
                    Ok(b) => {
                        if wr.write_frame(Frame::text(Payload::Borrowed(&b))).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if wr.flush().await.is_err() {
                return;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let stack = get("--stack").expect("--stack");
    let port: u16 = get("--port").expect("--port").parse().unwrap();
    let max_secs: u64 = get("--max-secs").map(|s| s.parse().unwrap()).unwrap_or(900);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    println!("LISTENING stack={stack} port={port} pid={}", std::process::id());
    let fut: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match stack.as_str() {
        "axum-default" => Box::pin(axum_stack::run(listener, None, None)),
        "axum-tuned" => Box::pin(axum_stack::run(listener, Some(4096), Some(0))),
        "axum-wbuf8k" => Box::pin(axum_stack::run(listener, Some(4096), Some(8192))),
        "axum-rbuf1k" => Box::pin(axum_stack::run(listener, Some(1024), Some(8192))),
        "tungstenite-raw" => Box::pin(tungstenite_stack::run(listener)),
        "fastwebsockets" => Box::pin(fastws_stack::run(listener)),
        other => panic!("unknown stack {other}"),
    };
    // The server stops by itself after max_secs even if nobody kills it.
    let _ = tokio::time::timeout(Duration::from_secs(max_secs), fut).await;
    let _ = std::io::Write::flush(&mut std::io::stdout());
}
