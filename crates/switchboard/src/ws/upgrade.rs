//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 section 4.2), as an axum extractor.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::deflate::{self, Deflate};

/// A valid WebSocket upgrade request, waiting for its answer.
#[derive(Debug)]
pub struct Upgrade {
    handoff: Handoff,
    key: HeaderValue,
    protocols: Option<HeaderValue>,
    /// The client's permessage-deflate offer the server can honour, if any.
    offered: Option<Deflate>,
    /// The extension is accepted ([`with_deflate`](Self::with_deflate)).
    deflate: Option<Deflate>,
}

/// Why a request is not a WebSocket upgrade: answered with this status and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRejection {
    /// 400, 405 or 426.
    pub status: StatusCode,
    /// What was wrong.
    pub message: &'static str,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

fn reject(status: StatusCode, message: &'static str) -> UpgradeRejection {
    UpgradeRejection { status, message }
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What the handshake checks keep: the key, the offered subprotocols, the deflate offer.
type Checked = (HeaderValue, Option<HeaderValue>, Option<Deflate>);

/// The handshake checks of RFC 6455 4.2.1 on a request's method and headers.
fn check(method: &Method, headers: &HeaderMap) -> Result<Checked, UpgradeRejection> {
    if method != Method::GET {
        return Err(reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET",
        ));
    }
    if !header_has(headers, header::CONNECTION, "upgrade") {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "`Connection` must include `upgrade`",
        ));
    }
    if !header_has(headers, header::UPGRADE, "websocket") {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "`Upgrade` must be `websocket`",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` must be 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or(reject(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` is missing",
        ))?;
    if !is_valid_key(key.as_bytes()) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` must be 16 bytes in base64",
        ));
    }
    let protocols = headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let offered = deflate::negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    Ok((key, protocols, offered))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let (key, protocols, offered) = check(&parts.method, &parts.headers)?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(reject(
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded (HTTP/1.1 with upgrades is required)",
        ))?;
        Ok(Self {
            handoff: Handoff::Hyper(on_upgrade),
            key,
            protocols,
            offered,
            deflate: None,
        })
    }
}

/// How the connection comes to the upgrade's callback.
enum Handoff {
    /// From hyper, once it has written the answer.
    Hyper(OnUpgrade),
    /// From the server that read the request head itself: the callback waits here for it
    /// ([`Handshake::start`]).
    Direct(Arc<Mutex<Option<Start>>>),
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hyper(_) => "Hyper",
            Self::Direct(_) => "Direct",
        })
    }
}

/// An accepted upgrade's callback, boxed for [`Handshake::start`].
type Start = Box<dyn FnOnce(Upgraded) -> ConnectionFuture + Send>;

/// The future that serves an upgraded connection (see [`Handshake::start`]).
pub type ConnectionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The server's side of an [`Upgrade`] made with [`Upgrade::from_head`]: after the answer,
/// [`start`](Self::start) hands it the connection.
pub struct Handshake {
    slot: Arc<Mutex<Option<Start>>>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handshake")
    }
}

impl Handshake {
    /// After the answer to the upgrade (from `Manager::accept` or `refuse`): when it is the
    /// 101, the future that writes it (together with the first frames the connection sends,
    /// in one write) and serves the connection on `io`, `early` being what the client sent
    /// after its request head. Otherwise `io` back, for the server to write the answer.
    pub fn start(
        self,
        response: &Response,
        io: TcpStream,
        early: &[u8],
    ) -> Result<ConnectionFuture, TcpStream> {
        let start = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        match start {
            Some(start) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                Ok(start(Upgraded {
                    io: Io::Tcp(Arc::new(io)),
                    early: Bytes::copy_from_slice(early),
                    preface: response_head(response),
                }))
            }
            _ => Err(io),
        }
    }
}

/// A response's status line and headers, as HTTP/1.1 writes them.
pub fn response_head<B>(response: &axum::http::Response<B>) -> Vec<u8> {
    let mut head = Vec::with_capacity(160);
    let status = response.status();
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}
impl Upgrade {
    /// An upgrade for a request head the server read itself (not through hyper): the same
    /// checks and rejections as the extractor; the connection is handed over with the
    /// returned [`Handshake`] once the upgrade is answered.
    pub fn from_head(
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(Self, Handshake), UpgradeRejection> {
        let (key, protocols, offered) = check(method, headers)?;
        let slot = Arc::new(Mutex::new(None));
        let upgrade = Self {
            handoff: Handoff::Direct(slot.clone()),
            key,
            protocols,
            offered,
            deflate: None,
        };
        Ok((upgrade, Handshake { slot }))
    }

    /// Whether the client offered `protocol` in `Sec-WebSocket-Protocol`.
    pub fn offers(&self, protocol: &str) -> bool {
        self.protocols
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == protocol))
    }

    /// Accepts permessage-deflate (RFC 7692) if `enabled` and the client offered it in a way
    /// the server can honour; otherwise the extension is declined (the upgrade goes on without
    /// it). Off unless asked for: an upgrade accepts no extension by default.
    pub fn with_deflate(mut self, enabled: bool) -> Self {
        self.deflate = self.offered.filter(|_| enabled);
        self
    }

    /// permessage-deflate as the answer will accept it ([`with_deflate`](Self::with_deflate)):
    /// the connection's codec must then accept compressed messages
    /// ([`Decoder::with_deflate`](super::frame::Decoder::with_deflate)), and may compress what
    /// it sends.
    pub fn deflate(&self) -> Option<Deflate> {
        self.deflate
    }

    /// Answers 101 Switching Protocols (echoing `protocol` if the client offered it) and, once
    /// hyper hands the connection over, runs `callback` with it in a task of its own.
    pub fn on_upgrade<C, Fut>(self, protocol: &'static str, callback: C) -> Response
    where
        C: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let echo = self.offers(protocol);
        let deflate = self.deflate;
        match self.handoff {
            Handoff::Hyper(on_upgrade) => {
                tokio::spawn(async move {
                    match on_upgrade.await {
                        Ok(upgraded) => callback(Upgraded::new(upgraded)).await,
                        Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
                    }
                });
            }
            Handoff::Direct(slot) => {
                let start: Start = Box::new(move |io| Box::pin(callback(io)));
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(start);
            }
        }
        let accept = accept_key(self.key.as_bytes());
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = accept {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if echo {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        if let Some(Ok(answer)) = deflate.map(|d| HeaderValue::from_str(&d.response())) {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
        }
        response
    }
}

/// An upgraded connection: the TCP stream itself when the server is a plain hyper/axum one
/// (no box, no extra buffer), else hyper's upgraded I/O. Bytes the client sent right after
/// its request come first. The TCP stream is shared ([`tcp`](Self::tcp)) so that a
/// publisher can write a broadcast into it while the connection's task is idle.
#[derive(Debug)]
pub struct Upgraded {
    io: Io,
    early: Bytes,
    /// The 101 answer when the server writes it itself: sent with the first frames.
    preface: Vec<u8>,
}

#[derive(Debug)]
enum Io {
    Tcp(Arc<TcpStream>),
    /// Boxed: rare (an upgrade hyper served through something other than a plain TCP
    /// stream), and large beside the shared stream every other connection keeps.
    Other(Box<TokioIo<hyper::upgrade::Upgraded>>),
}

impl Upgraded {
    fn new(upgraded: hyper::upgrade::Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Self {
                io: Io::Tcp(Arc::new(parts.io.into_inner())),
                // A copy: hyper's `read_buf` keeps its whole read buffer (8 KiB) alive.
                early: Bytes::copy_from_slice(&parts.read_buf),
                preface: Vec::new(),
            },
            Err(upgraded) => Self {
                io: Io::Other(Box::new(TokioIo::new(upgraded))),
                early: Bytes::new(),
                preface: Vec::new(),
            },
        }
    }

    /// The answer still to be written before anything else (empty when hyper wrote it).
    pub(crate) fn take_preface(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.preface)
    }

    /// The TCP stream, when that is what the connection is (not hyper's boxed I/O).
    pub(crate) fn tcp(&self) -> Option<&Arc<TcpStream>> {
        match &self.io {
            Io::Tcp(tcp) => Some(tcp),
            Io::Other(_) => None,
        }
    }
}

/// Reads from a shared TCP stream as `TcpStream::poll_read` does: wait for readiness, try.
fn poll_read_tcp(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        std::task::ready!(tcp.poll_read_ready(cx))?;
        match tcp.try_read(buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Writes into a shared TCP stream as `TcpStream::poll_write` does: wait for readiness, try.
fn poll_write_tcp(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.early.has_remaining() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early.split_to(n));
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Tcp(tcp) => poll_read_tcp(tcp, cx, buf),
            Io::Other(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(tcp) => poll_write_tcp(tcp, cx, buf),
            Io::Other(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(_) => Poll::Ready(Ok(())),
            Io::Other(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            // Shared only while its task lets publishers write: not when it closes.
            Io::Tcp(tcp) => match Arc::get_mut(tcp) {
                Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
                None => Poll::Ready(Ok(())),
            },
            Io::Other(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }
}

/// RFC 6455 4.2.1: the key is a base64-encoded 16-byte value (24 characters).
fn is_valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    // Decoded on the stack: 18 bytes is the decoder's estimate for 24 characters.
    let mut decoded = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key, &mut decoded)
            .is_ok_and(|len| len == 16)
}

/// RFC 6455 4.2.2: `Sec-WebSocket-Accept` for a key, the base64 of the SHA-1 of the key and
/// the protocol's GUID (tungstenite's `derive_accept_key`, without its two allocations).
fn accept_key(key: &[u8]) -> Result<HeaderValue, axum::http::header::InvalidHeaderValue> {
    use base64::Engine as _;
    use sha1::Digest as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1::Sha1::default();
    sha1.update(key);
    sha1.update(GUID);
    // 28 characters for the 20 bytes of a SHA-1.
    let mut accept = [0u8; 28];
    let len = base64::engine::general_purpose::STANDARD
        .encode_slice(sha1.finalize(), &mut accept)
        .unwrap_or_default();
    HeaderValue::from_bytes(&accept[..len])
}

#[cfg(test)]
mod key_tests {
    use super::{accept_key, is_valid_key};

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // RFC 6455 section 1.3's example.
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==").unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        for key in ["AQIDBAUGBwgJCgsMDQ4PEA==", "x3JJHMbDL1EzLkh9GBhXDw==", ""] {
            let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
            assert_eq!(accept_key(key.as_bytes()).unwrap(), expected.as_str());
        }
    }

    #[test]
    fn keys_are_16_bytes_in_base64() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            &b""[..],
            b"x",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQ===",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25jZQ!=",
            b"aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=",
        ] {
            assert!(!is_valid_key(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
