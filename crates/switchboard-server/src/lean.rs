//! Upgrades without hyper: the accept loop reads a connection's request head itself, and a
//! plain WebSocket upgrade (`GET /ws` or `/ws/{lobby}`, HTTP/1.1, `Upgrade: websocket`) is
//! answered here, through the same checks as the router's `ws` handler (the handshake, the
//! connect parameters, then `app::answer_upgrade`), and the connection is served in the same
//! task. Anything else, or anything unusual (a head that does not parse, too many header
//! lines, a percent-encoded lobby, a body, a request the checks would refuse with an HTTP
//! status), goes to hyper with the bytes already read, to be answered exactly as before.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, Uri, header};
use bytes::{BufMut, Bytes, BytesMut};
use switchboard::SUBPROTOCOL_V2;
use switchboard::axum::ConnectParams;
use switchboard::ws::{ConnectionFuture, Handshake, Upgrade, response_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppState};

/// Header lines read here, at most (hyper reads requests with more).
const MAX_HEADERS: usize = 32;
/// The first read's size: an upgrade's head is a few hundred bytes.
const FIRST_READ: usize = 2048;
/// A refusal's body read for writing, at most (they are short texts).
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// What became of a connection's first request.
pub(crate) enum Outcome {
    /// An upgrade answered with 101: the future serving the connection (it writes the 101).
    Upgraded(ConnectionFuture),
    /// Answered here and closed; or the peer left, the head did not arrive in time, or the
    /// server is stopping.
    Done,
    /// Not for here: the stream for hyper, with what was read of it.
    Hyper(TcpStream, Vec<u8>),
}

/// A request head that is an upgrade to the WebSocket endpoint. The URI and the header values
/// are slices of the buffer the head was read into, not copies.
struct Head {
    uri: Uri,
    headers: HeaderMap,
    /// The head's length: what follows is the client's first frames.
    len: usize,
}

impl Head {
    /// The path's `{lobby}` segment (`/ws/{lobby}`), if any.
    fn lobby(&self) -> Option<&str> {
        self.uri.path().strip_prefix("/ws/")
    }
}

/// What a buffer holds so far.
// One per request head, on the stack and moved once: boxing `Head` would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    Upgrade(Head),
    Other,
}

/// Reads `tcp`'s request head (within `deadline` and `max_head` bytes) and answers it if it is
/// a WebSocket upgrade; see the module's text.
pub(crate) async fn accept(
    mut tcp: TcpStream,
    peer: SocketAddr,
    state: &AppState,
    deadline: Instant,
    max_head: usize,
    stop: &CancellationToken,
) -> Outcome {
    let mut buf = BytesMut::new();
    let (head, buf) = loop {
        let len = buf.len();
        if len >= max_head {
            // hyper answers 431.
            return Outcome::Hyper(tcp, Vec::from(buf));
        }
        // Not zeroed: `read_buf` reads into the spare capacity.
        buf.reserve(len.max(FIRST_READ).min(max_head - len));
        let mut room = (&mut buf).limit(max_head - len);
        let read = tokio::select! {
            () = stop.cancelled() => return Outcome::Done,
            read = tokio::time::timeout_at(deadline, tcp.read_buf(&mut room)) => read,
        };
        match read {
            Err(_elapsed) => return Outcome::Done,
            Ok(Err(_)) => return Outcome::Done,
            Ok(Ok(0)) if len == 0 => return Outcome::Done,
            Ok(Ok(0)) => return Outcome::Hyper(tcp, Vec::from(buf)),
            Ok(Ok(_)) => {}
        }
        let read = std::mem::take(&mut buf).freeze();
        match parse(&read) {
            // Rare (a head in more than one segment): copied back to read on.
            Parsed::Partial => buf = BytesMut::from(&read[..]),
            Parsed::Other => return Outcome::Hyper(tcp, Vec::from(read)),
            Parsed::Upgrade(head) => break (head, read),
        }
    };
    match answer(tcp, peer, state, head, buf) {
        Answer::Now(outcome) => outcome,
        Answer::Later(later) => later.await,
    }
}

/// What [`answer`] leaves: the outcome, or a future of it (the connect proxy to ask, a refusal
/// to write). Boxed: rare, and their state would otherwise be in every connect's future.
enum Answer {
    Now(Outcome),
    Later(std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>>),
}

/// Answers an upgrade's head: a function of its own (not part of `accept`'s future), so that
/// none of what it holds is kept in every connection's task.
fn answer(tcp: TcpStream, peer: SocketAddr, state: &AppState, head: Head, buf: Bytes) -> Answer {
    // The handshake checks and the connect parameters refuse with an HTTP status: hyper and
    // the router answer those (nothing has happened yet that they would repeat).
    let Ok((upgrade, handshake)) = Upgrade::from_head(&Method::GET, &head.headers) else {
        return Answer::Now(Outcome::Hyper(tcp, Vec::from(buf)));
    };
    let Ok(mut params) = ConnectParams::from_head(head.lobby(), &head.uri, &head.headers, peer)
    else {
        return Answer::Now(Outcome::Hyper(tcp, Vec::from(buf)));
    };
    // A WebSocket joins its further lobbies with `join` frames.
    params.lobbies = Vec::new();
    if params.lobby.is_none() && !upgrade.offers(SUBPROTOCOL_V2) {
        // `Manager::accept` answers 400.
        return Answer::Now(Outcome::Hyper(tcp, Vec::from(buf)));
    }
    if state.connect_proxy.is_some() {
        let state = state.clone();
        return Answer::Later(Box::pin(async move {
            let response = app::answer_upgrade(&state, upgrade, params, &head.headers).await;
            start(handshake, response, tcp, &buf[head.len..]).await
        }));
    }
    let response = app::answer_upgrade_by_token(state, upgrade, params, &head.headers);
    match handshake.start(&response, tcp, &buf[head.len..]) {
        Ok(serve) => Answer::Now(Outcome::Upgraded(serve)),
        Err(tcp) => Answer::Later(Box::pin(async move {
            refuse(tcp, response).await;
            Outcome::Done
        })),
    }
}

/// After the answer: the connection served (a 101), or the refusal written.
async fn start(
    handshake: Handshake,
    response: Response<Body>,
    tcp: TcpStream,
    early: &[u8],
) -> Outcome {
    match handshake.start(&response, tcp, early) {
        Ok(serve) => Outcome::Upgraded(serve),
        Err(tcp) => {
            refuse(tcp, response).await;
            Outcome::Done
        }
    }
}

/// Writes a refusal (403 for a foreign origin), then closes the connection.
async fn refuse(mut tcp: TcpStream, response: Response<Body>) {
    let (mut parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ANSWER_BODY)
        .await
        .unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_LENGTH, body.len().into());
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut out = response_head(&Response::from_parts(parts, ()));
    out.extend_from_slice(&body);
    if tcp.write_all(&out).await.is_ok() {
        let _ = tcp.shutdown().await;
    }
}

/// Parses the head in `buf` (which may hold more, or not all of it).
fn parse(buf: &Bytes) -> Parsed {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return Parsed::Other;
    }
    let Some(Ok(uri)) = request
        .path
        .map(|path| Uri::from_maybe_shared(buf.slice_ref(path.as_bytes())))
    else {
        return Parsed::Other;
    };
    match uri.path() {
        "/ws" => {}
        path => match path.strip_prefix("/ws/") {
            Some(lobby) if !lobby.is_empty() && !lobby.contains(['/', '%']) => {}
            _ => return Parsed::Other,
        },
    }
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Parsed::Other;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for line in request.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line.name.as_bytes()),
            HeaderValue::from_maybe_shared(buf.slice_ref(line.value)),
        ) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    // A body (or a request that says it has one) is not an upgrade's.
    if headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING)
        || !headers.contains_key(header::UPGRADE)
    {
        return Parsed::Other;
    }
    Parsed::Upgrade(Head { uri, headers, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn head(first: &str, extra: &str) -> String {
        format!(
            "{first}\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n{KEY}{extra}\r\n"
        )
    }

    #[test]
    fn upgrades_to_the_websocket_endpoint_are_read_here() {
        let text = head("GET /ws/l1?token=t HTTP/1.1", "");
        let Parsed::Upgrade(h) = parse(&Bytes::from(format!("{text}\u{81}"))) else {
            panic!("not read");
        };
        assert_eq!(h.lobby(), Some("l1"));
        assert_eq!(h.uri.query(), Some("token=t"));
        assert_eq!(h.len, text.len());
        let Parsed::Upgrade(h) = parse(&Bytes::from(head("GET /ws HTTP/1.1", ""))) else {
            panic!("not read");
        };
        assert_eq!(h.lobby(), None);
    }

    #[test]
    fn anything_else_goes_to_hyper() {
        for first in [
            "POST /ws/l1 HTTP/1.1",
            "GET /ws/l1 HTTP/1.0",
            "GET /ws/ HTTP/1.1",
            "GET /ws/a/b HTTP/1.1",
            "GET /ws/a%20b HTTP/1.1",
            "GET /wss HTTP/1.1",
            "GET /api/lobbies HTTP/1.1",
            "GET http://x/ws/l1 HTTP/1.1",
        ] {
            assert!(
                matches!(parse(&Bytes::from(head(first, ""))), Parsed::Other),
                "{first}"
            );
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        for extra in [
            "content-length: 0\r\n",
            "transfer-encoding: chunked\r\n",
            &many,
        ] {
            let text = head("GET /ws/l1 HTTP/1.1", extra);
            assert!(
                matches!(parse(&Bytes::from(text)), Parsed::Other),
                "{extra}"
            );
        }
        let plain = "GET /ws/l1 HTTP/1.1\r\nhost: x\r\n\r\n";
        assert!(matches!(parse(&Bytes::from(plain)), Parsed::Other));
        assert!(matches!(
            parse(&Bytes::from_static(b"GET /ws/l1 HTTP/1.1\r\nhost")),
            Parsed::Partial
        ));
        assert!(matches!(
            parse(&Bytes::from_static(b"\x00\x01garbage\r\n\r\n")),
            Parsed::Other
        ));
    }
}
