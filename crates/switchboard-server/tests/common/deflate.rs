//! A raw WebSocket client that offers permessage-deflate (tokio-tungstenite 0.29 has no
//! permessage-deflate): the handshake with any `Sec-WebSocket-Extensions` offer, masked
//! frames with or without RSV1, and each received frame as it came (RSV1 and all), with
//! flate2 (not the server's code) compressing and inflating.

use std::net::SocketAddr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// One frame from the server, as it was on the wire.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A message from the server: whether it came compressed, its opcode, its payload inflated.
#[derive(Debug, Clone)]
pub struct Received {
    pub compressed: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
    /// The payload's size on the wire.
    pub wire_len: usize,
}

impl Received {
    pub fn json(&self) -> Value {
        assert_eq!(self.opcode, 1, "a text frame");
        serde_json::from_slice(&self.payload).expect("JSON")
    }
}

pub struct DeflateClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    pub extensions: Option<String>,
    /// The window the server said it compresses with (`server_max_window_bits`), else 15.
    pub server_window_bits: u8,
}

/// Upgrades `path` offering `offer` (a `Sec-WebSocket-Extensions` value; `None`: no offer).
/// Panics unless the server answers 101.
pub async fn connect_offering(addr: SocketAddr, path: &str, offer: Option<&str>) -> DeflateClient {
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(offer) = offer {
        request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the upgrade answer in time")
            .unwrap();
        assert!(n > 0, "the server closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
    let extensions = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    });
    let server_window_bits = extensions
        .as_deref()
        .and_then(|e| {
            e.split(';')
                .find_map(|p| p.trim().strip_prefix("server_max_window_bits="))
        })
        .map_or(15, |bits| bits.parse().unwrap());
    buf.drain(..end);
    DeflateClient {
        stream,
        buf,
        extensions,
        server_window_bits,
    }
}

/// Compresses a message as permessage-deflate does (raw deflate, sync flush, the trailing
/// `00 00 ff ff` removed).
pub fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() / 2 + 1024);
    loop {
        let done = compressor.total_in() as usize;
        compressor
            .compress_vec(&payload[done..], &mut out, FlushCompress::Sync)
            .unwrap();
        if compressor.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates a compressed message with a window of `bits` (refusing distances past it).
pub fn inflate(payload: &[u8], bits: u8) -> Vec<u8> {
    let mut inflater = Decompress::new_with_window_bits(false, bits);
    let input = [payload, &[0, 0, 0xff, 0xff]].concat();
    let mut out = Vec::with_capacity(input.len() * 4 + 1024);
    loop {
        let done = inflater.total_in() as usize;
        inflater
            .decompress_vec(&input[done..], &mut out, FlushDecompress::Sync)
            .expect("valid deflate within the window");
        if inflater.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

impl DeflateClient {
    /// Sends one masked frame: `first` is its first byte (FIN, RSV1, opcode).
    pub async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x1b, 0x7e, 0x33, 0xd4];
        let mut out = vec![first];
        match payload.len() {
            len @ 0..126 => out.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        // A server that closed may have stopped reading: the test reads its close instead.
        let _ = self.stream.write_all(&out).await;
    }

    /// Sends a text message, compressed (RSV1) or not, in one frame.
    pub async fn send_text(&mut self, text: &str, compressed: bool) {
        if compressed {
            self.send_frame(0xc1, &deflate(text.as_bytes())).await;
        } else {
            self.send_frame(0x81, text.as_bytes()).await;
        }
    }

    /// The next frame, as it came; `None` once the stream ended.
    pub async fn next_frame(&mut self, what: &str) -> Option<RawFrame> {
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn parse(&mut self) -> Option<RawFrame> {
        let [b0, b1, ..] = self.buf[..] else {
            return None;
        };
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let (len, at) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes(self.buf.get(2..4)?.try_into().unwrap()) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(self.buf.get(2..10)?.try_into().unwrap()) as usize,
                10,
            ),
            len => (len as usize, 2),
        };
        let payload = self.buf.get(at..at + len)?.to_vec();
        self.buf.drain(..at + len);
        assert_eq!(b0 & 0x30, 0, "RSV2 and RSV3 are never set");
        Some(RawFrame {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            opcode: b0 & 0x0f,
            payload,
        })
    }

    /// The next text or binary message (answering nothing, skipping pings and pongs),
    /// inflated if it came compressed.
    pub async fn next_message(&mut self, what: &str) -> Received {
        let mut first: Option<RawFrame> = None;
        let mut payload = Vec::new();
        loop {
            let frame = self
                .next_frame(what)
                .await
                .unwrap_or_else(|| panic!("stream ended waiting for {what}"));
            match frame.opcode {
                9 | 10 => continue,
                8 => panic!("closed waiting for {what}: {:?}", frame.payload),
                0 => assert!(!frame.rsv1, "RSV1 only on a message's first frame"),
                _ => assert!(first.is_none(), "a new message inside a fragmented one"),
            }
            payload.extend_from_slice(&frame.payload);
            let fin = frame.fin;
            first.get_or_insert(frame);
            if fin {
                break;
            }
        }
        let first = first.unwrap();
        let wire_len = payload.len();
        if first.rsv1 {
            payload = inflate(&payload, self.server_window_bits);
        }
        Received {
            compressed: first.rsv1,
            opcode: first.opcode,
            payload,
            wire_len,
        }
    }

    /// The next message that is a JSON frame of type `ty`.
    pub async fn expect(&mut self, ty: &str, what: &str) -> (Received, Value) {
        loop {
            let message = self.next_message(what).await;
            let value = message.json();
            if value["type"] == ty {
                return (message, value);
            }
        }
    }

    /// Reads until the server's close frame: its code (skipping whatever came before).
    pub async fn close_code(&mut self, what: &str) -> Option<u16> {
        while let Some(frame) = self.next_frame(what).await {
            if frame.opcode == 8 {
                return frame
                    .payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
        }
        None
    }
}
