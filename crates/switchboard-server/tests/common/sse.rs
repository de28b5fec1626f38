//! A raw Server-Sent Events client for the tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{HttpResponse, WAIT, http};

/// A raw SSE client: one GET, then events parsed from the chunked body as they arrive.
pub struct Sse {
    tcp: TcpStream,
    pub status: u16,
    pub headers: String,
    raw: Vec<u8>,
    text: String,
    /// For a `Content-Encoding: gzip` stream: decodes each chunk as it arrives.
    gzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    /// Body bytes received (after de-chunking, before decoding).
    pub wire_bytes: usize,
    /// Whether the stream ended with a gzip trailer whose CRC and length check out.
    pub gzip_complete: bool,
}

/// One event: its name, id (if any) and JSON data.
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub id: Option<String>,
    pub data: Value,
}

impl Sse {
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .expect("response head")
                .unwrap();
            assert!(n > 0, "closed before the response head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let rest = raw[head_end + 4..].to_vec();
        let headers = head.to_ascii_lowercase();
        let gzip = headers
            .contains("content-encoding: gzip")
            .then(|| flate2::write::GzDecoder::new(Vec::new()));
        Sse {
            tcp,
            status,
            headers,
            raw: rest,
            text: String::new(),
            gzip,
            wire_bytes: 0,
            gzip_complete: false,
        }
    }

    /// Decodes whole chunks from `raw` into `text`; `false` at the last chunk.
    fn dechunk(&mut self) -> bool {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.raw[..line_end]).unwrap().trim(),
                16,
            )
            .unwrap();
            if size == 0 {
                if let Some(gzip) = self.gzip.take() {
                    let rest = gzip
                        .finish()
                        .expect("a complete gzip stream (CRC and length)");
                    self.text.push_str(std::str::from_utf8(&rest).unwrap());
                    self.gzip_complete = true;
                }
                return false;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return true;
            }
            let mut chunk = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.wire_bytes += chunk.len();
            if let Some(gzip) = &mut self.gzip {
                // Every chunk must decode by itself: the events in it are read at once.
                use std::io::Write;
                gzip.write_all(&chunk).unwrap();
                gzip.flush().unwrap();
                chunk = std::mem::take(gzip.get_mut());
            }
            self.text.push_str(std::str::from_utf8(&chunk).unwrap());
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The next event other than comments and health pings; `None` when the stream ended.
    pub async fn next(&mut self, what: &str) -> Option<Event> {
        loop {
            let open = self.dechunk();
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (None, None, None::<String>);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        // As EventSource does: the data lines of one event, joined by `\n`.
                        match &mut data {
                            Some(d) => {
                                d.push('\n');
                                d.push_str(v);
                            }
                            None => data = Some(v.to_owned()),
                        }
                    }
                }
                let data = data.map(|d| serde_json::from_str(&d).unwrap());
                if let (Some(name), Some(data)) = (name, data)
                    && name != "health_ping"
                {
                    return Some(Event { name, id, data });
                }
            }
            if !open {
                return None;
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap();
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    pub async fn expect(&mut self, name: &str, what: &str) -> Event {
        let e = self
            .next(what)
            .await
            .unwrap_or_else(|| panic!("stream ended waiting for {what}"));
        assert_eq!(e.name, name, "waiting for {what}: {e:?}");
        assert_eq!(e.data["type"], name, "event name is the frame type");
        e
    }
}

/// Posts a client frame for an SSE connection.
pub async fn sse_post(
    addr: SocketAddr,
    lobby: &str,
    token: &str,
    id: &str,
    message: Value,
) -> HttpResponse {
    let body = json!({"connection_id": id, "message": message}).to_string();
    http(
        addr,
        "POST",
        &format!("/sse/{lobby}/messages?token={token}"),
        None,
        Some(&body),
    )
    .await
}
