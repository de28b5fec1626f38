//! A deliberately small WebSocket client (RFC 6455, client side; permessage-deflate when asked
//! for, with no context takeover and a per-thread inflater, as the server's).
//!
//! The load generator shares a 2-core machine with the server it measures, so it must cost far
//! less than the server per message. It holds no read buffer while a connection is idle: it
//! waits for readiness, then reads up to 256 KiB into one scratch buffer shared by every
//! connection of the (single) thread, and keeps only a partial trailing frame per connection.
//! It parses frame headers and, in text frames, only the few fields it measures.
//! Protocol pings and `health_ping` frames are answered while reading.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use flate2::{Decompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SCRATCH_BYTES: usize = 256 * 1024;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
    /// The inflater for compressed frames (permessage-deflate), and where they are inflated.
    static INFLATE: RefCell<(Decompress, Vec<u8>)> = RefCell::new((Decompress::new(false), Vec::new()));
}

/// The offer `--deflate` makes.
const DEFLATE_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n";

/// One inbound frame, borrowed from the read buffer.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) opcode: u8,
    pub(crate) payload: &'a [u8],
}

impl Frame<'_> {
    /// The close code of a close frame.
    pub(crate) fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(io::Error),
    Timeout,
    /// The upgrade was answered with another HTTP status.
    Http(u16),
    /// Upgraded, then closed before `welcome` (a refusal: 4001, 4002, ...).
    Closed(Option<u16>),
    /// Asked for protocol v2, upgraded without it (a server that speaks only v1).
    NoV2,
}

impl ConnectError {
    pub(crate) fn label(&self) -> String {
        match self {
            Self::Io(e) => format!("io:{:?}", e.kind()),
            Self::Timeout => "timeout".into(),
            Self::Http(s) => format!("http:{s}"),
            Self::Closed(Some(c)) => format!("close:{c}"),
            Self::Closed(None) => "closed".into(),
            Self::NoV2 => "no_v2".into(),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// An open WebSocket connection.
#[derive(Debug)]
pub(crate) struct Ws {
    stream: TcpStream,
    /// A partial frame left over from the last read (empty, unallocated, most of the time).
    partial: Vec<u8>,
    /// Frames to send at the next [`Ws::flush`] (answers to pings, the publisher's frames).
    pub(crate) out: Vec<u8>,
    /// Set once a close frame or EOF was seen.
    pub(crate) closed: Option<Option<u16>>,
    /// permessage-deflate was negotiated: frames with RSV1 are inflated.
    deflate: bool,
    /// Bytes read from the socket since the handshake (frames as they came on the wire,
    /// compressed or not).
    pub(crate) bytes_read: u64,
}

/// Where a connection starts.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// Protocol v1 in this lobby: `GET /ws/{lobby}`.
    Lobby(String),
    /// Protocol v2 in no lobby yet: `GET /ws`, subprotocol `switchboard.v2`; lobbies are
    /// joined on the live socket ([`join_frame`]).
    V2,
}

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) server: SocketAddr,
    pub(crate) timeout: Duration,
    /// Offer permessage-deflate.
    pub(crate) deflate: bool,
}

impl Target {
    /// Connects from `source`, upgrades `GET /ws/{lobby}?token=..` (v1) or `GET /ws?token=..`
    /// (v2), and waits for `welcome`.
    pub(crate) async fn connect(
        &self,
        source: IpAddr,
        route: &Route,
        token: &str,
    ) -> Result<Ws, ConnectError> {
        self.connect_with(source, route, token, None).await
    }

    /// [`connect`](Self::connect), with the socket's receive buffer set to `recv_buffer`
    /// bytes (a member that will stop reading: the server sees its socket full sooner).
    pub(crate) async fn connect_with(
        &self,
        source: IpAddr,
        route: &Route,
        token: &str,
        recv_buffer: Option<u32>,
    ) -> Result<Ws, ConnectError> {
        let connecting = self.connect_inner(source, route, token, recv_buffer);
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn connect_inner(
        &self,
        source: IpAddr,
        route: &Route,
        token: &str,
        recv_buffer: Option<u32>,
    ) -> Result<Ws, ConnectError> {
        let socket = if self.server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(self.server).await?;
        stream.set_nodelay(true)?;
        let (path, protocol) = match route {
            Route::Lobby(lobby) => (format!("/ws/{lobby}"), ""),
            Route::V2 => (
                "/ws".to_owned(),
                "Sec-WebSocket-Protocol: switchboard.v2\r\n",
            ),
        };
        let offer = if self.deflate { DEFLATE_OFFER } else { "" };
        let request = format!(
            "GET {path}?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{protocol}{offer}\r\n",
            self.server
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ConnectError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some(i) = find(&head, b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > 16 * 1024 {
                return Err(ConnectError::Http(0));
            }
        };
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 101 {
            return Err(ConnectError::Http(status));
        }
        if matches!(route, Route::V2)
            && find(&head[..end].to_ascii_lowercase(), b"switchboard.v2").is_none()
        {
            return Err(ConnectError::NoV2);
        }
        let deflate = self.deflate
            && find(&head[..end].to_ascii_lowercase(), b"permessage-deflate").is_some();
        let mut ws = Ws {
            stream,
            partial: head[end..].to_vec(),
            out: Vec::new(),
            closed: None,
            deflate,
            bytes_read: 0,
        };
        // The first frame is `welcome`; a refusal is a close frame instead.
        let mut welcome = false;
        if !ws.partial.is_empty() {
            let data = std::mem::take(&mut ws.partial);
            ws.process(&data, &mut |f: Frame<'_>| welcome |= f.opcode == OP_TEXT);
        }
        while !welcome {
            if let Some(code) = ws.closed {
                return Err(ConnectError::Closed(code));
            }
            ws.read_some(&mut |f: Frame<'_>| welcome |= f.opcode == OP_TEXT)
                .await?;
        }
        ws.flush().await?;
        Ok(ws)
    }
}

impl Ws {
    /// Waits until data arrives, reads it, answers pings (into `out`), and calls `on_frame`
    /// for every complete frame. Cancel-safe: it only awaits before touching any state.
    /// Sets `closed` on a close frame or EOF.
    pub(crate) async fn read_some(
        &mut self,
        on_frame: &mut dyn FnMut(Frame<'_>),
    ) -> io::Result<()> {
        loop {
            if self.closed.is_some() {
                return Ok(());
            }
            self.stream.readable().await?;
            let read = SCRATCH.with_borrow_mut(|scratch| match self.stream.try_read(scratch) {
                Ok(0) => {
                    self.closed.get_or_insert(None);
                    Ok(true)
                }
                Ok(n) => {
                    self.bytes_read += n as u64;
                    self.process(&scratch[..n], on_frame);
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(e),
            })?;
            if read {
                return Ok(());
            }
        }
    }

    fn process(&mut self, data: &[u8], on_frame: &mut dyn FnMut(Frame<'_>)) {
        if self.partial.is_empty() {
            let used = parse(
                data,
                &mut self.out,
                &mut self.closed,
                self.deflate,
                on_frame,
            );
            if used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            self.partial.extend_from_slice(data);
            let partial = std::mem::take(&mut self.partial);
            let used = parse(
                &partial,
                &mut self.out,
                &mut self.closed,
                self.deflate,
                on_frame,
            );
            if used < partial.len() {
                self.partial = partial[used..].to_vec();
            }
        }
    }

    /// Writes whatever `out` holds. Cancel-safe: what was written is taken out of `out` as
    /// it goes, so a flush cut short (a timeout) leaves exactly the rest for the next one.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Whether permessage-deflate was negotiated.
    pub(crate) fn deflate(&self) -> bool {
        self.deflate
    }

    /// Queues a text frame.
    pub(crate) fn text(&mut self, payload: &[u8]) {
        encode(&mut self.out, OP_TEXT, payload);
    }

    /// Sends a close frame (1000) and waits, at most `wait`, for the server's close or EOF.
    pub(crate) async fn close(mut self, wait: Duration) {
        encode(&mut self.out, OP_CLOSE, &1000u16.to_be_bytes());
        if self.flush().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(wait, async {
            while self.closed.is_none() {
                if self.read_some(&mut |_| {}).await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}

/// Parses complete frames from `data`; returns the bytes used.
fn parse(
    data: &[u8],
    out: &mut Vec<u8>,
    closed: &mut Option<Option<u16>>,
    deflate: bool,
    on_frame: &mut dyn FnMut(Frame<'_>),
) -> usize {
    let mut pos = 0;
    while let Some((opcode, start, len)) = header(&data[pos..]) {
        let payload = &data[pos + start..pos + start + len];
        let compressed = deflate && data[pos] & 0x40 != 0;
        pos += start + len;
        if compressed {
            // Server messages are never fragmented: one frame, one message.
            INFLATE.with_borrow_mut(|(inflater, inflated)| {
                inflate(inflater, payload, inflated);
                on_frame(Frame {
                    opcode,
                    payload: inflated,
                });
            });
            continue;
        }
        match opcode {
            OP_PING => encode(out, OP_PONG, payload),
            OP_CLOSE => {
                let frame = Frame { opcode, payload };
                *closed = Some(frame.close_code());
            }
            OP_TEXT if payload.len() < 96 && find(payload, b"\"health_ping\"").is_some() => {
                if let Some(ts) = field(payload, b"\"timestamp\":") {
                    let pong = format!("{{\"type\":\"health_pong\",\"timestamp\":{ts}}}");
                    encode(out, OP_TEXT, pong.as_bytes());
                }
            }
            _ => {}
        }
        on_frame(Frame { opcode, payload });
        if closed.is_some() {
            return data.len();
        }
    }
    pos
}

/// Inflates one compressed message (no context takeover: a fresh window) into `out`; what is
/// not deflate gives what came out before the error.
fn inflate(inflater: &mut Decompress, payload: &[u8], out: &mut Vec<u8>) {
    inflater.reset(false);
    out.clear();
    for input in [payload, &[0, 0, 0xff, 0xff][..]] {
        let start = inflater.total_in();
        loop {
            out.reserve(input.len() * 4 + 64);
            let done = (inflater.total_in() - start) as usize;
            let before = inflater.total_out();
            if inflater
                .decompress_vec(&input[done..], out, FlushDecompress::Sync)
                .is_err()
            {
                return;
            }
            let taken = (inflater.total_in() - start) as usize;
            let stuck = taken == done && inflater.total_out() == before;
            if stuck || (taken == input.len() && out.len() < out.capacity()) {
                break;
            }
        }
    }
}

/// `(opcode, payload start, payload length)` of a complete frame at the start of `data`.
fn header(data: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, rest) = data.split_first()?;
    let &b1 = rest.first()?;
    let (len, mut start) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes([*data.get(2)?, *data.get(3)?]) as usize,
            4,
        ),
        127 => {
            let bytes: [u8; 8] = data.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    if b1 & 0x80 != 0 {
        start += 4; // servers never mask; skip a key if one is there anyway
    }
    (data.len() >= start + len).then_some((b0 & 0x0f, start, len))
}

/// Appends one masked client frame.
pub(crate) fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
}

/// A v2 `join` of `lobby` with request `id` (answered by `joined` or `error` with that id).
pub(crate) fn join_frame(lobby: &str, id: u64) -> String {
    format!(r#"{{"type":"join","lobby":"{lobby}","id":{id}}}"#)
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The raw JSON number after `key` (`"s":`), spaces allowed after the colon.
pub(crate) fn field<'a>(payload: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = find(payload, key)? + key.len();
    let rest = &payload[at..];
    let skip = rest.iter().take_while(|b| **b == b' ').count();
    let rest = &rest[skip..];
    let len = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'e' | b'E' | b'+'))
        .count();
    std::str::from_utf8(&rest[..len])
        .ok()
        .filter(|s| !s.is_empty())
}

/// The JSON string after `key` (`"code":`), if it has no escapes.
pub(crate) fn field_str<'a>(payload: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = find(payload, key)? + key.len();
    let rest = &payload[at..];
    let rest = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
    let rest = rest.strip_prefix(b"\"")?;
    let len = rest.iter().position(|b| *b == b'"' || *b == b'\\')?;
    (rest[len] == b'"')
        .then(|| std::str::from_utf8(&rest[..len]).ok())
        .flatten()
}

/// The unsigned integer after `key`.
pub(crate) fn field_u64(payload: &[u8], key: &[u8]) -> Option<u64> {
    field(payload, key)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_and_answers_pings() {
        let mut data = vec![0x81, 5];
        data.extend_from_slice(b"hello");
        data.extend_from_slice(&[0x89, 2, b'p', b'q']);
        let ping = br#"{"type":"health_ping","timestamp":17}"#;
        data.extend_from_slice(&[0x81, ping.len() as u8]);
        data.extend_from_slice(ping);
        data.extend_from_slice(&[0x81, 126, 0]); // partial
        let (mut out, mut closed, mut texts) = (Vec::new(), None, 0);
        let used = parse(&data, &mut out, &mut closed, false, &mut |f| {
            texts += usize::from(f.opcode == OP_TEXT)
        });
        assert_eq!(used, data.len() - 3);
        assert_eq!(texts, 2);
        assert_eq!(out[0], 0x80 | OP_PONG);
        assert!(closed.is_none());
    }

    #[test]
    fn compressed_frames_are_inflated_when_negotiated() {
        let text = br#"{"type":"message","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        let mut compressor = flate2::Compress::new(flate2::Compression::default(), false);
        let mut z = Vec::with_capacity(256);
        compressor
            .compress_vec(text, &mut z, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(z.ends_with(&[0, 0, 0xff, 0xff]));
        z.truncate(z.len() - 4);
        let mut data = vec![0xc1, z.len() as u8];
        data.extend_from_slice(&z);
        for _ in 0..2 {
            let (mut out, mut closed, mut got) = (Vec::new(), None, Vec::new());
            parse(&data, &mut out, &mut closed, true, &mut |f| {
                got = f.payload.to_vec()
            });
            assert_eq!(got, text, "the same inflater, reset per message");
        }
    }

    #[test]
    fn reads_fields_with_or_without_spaces() {
        assert_eq!(field_u64(br#"{"s":12,"t":5}"#, b"\"t\":"), Some(5));
        assert_eq!(field_u64(br#"{"s": 12, "t": 5}"#, b"\"s\":"), Some(12));
        assert_eq!(
            field(br#"{"timestamp":1.5e3}"#, b"\"timestamp\":"),
            Some("1.5e3")
        );
        let error = br#"{"type":"error","code":"lobby_full","id":3}"#;
        assert_eq!(field_str(error, b"\"code\":"), Some("lobby_full"));
        assert_eq!(field_str(br#"{"code": "a\"b"}"#, b"\"code\":"), None);
        assert_eq!(field_str(br#"{"code":3}"#, b"\"code\":"), None);
    }
}
