//! An RFC 6455 echo server on Switchboard's own WebSocket layer, for the Autobahn|Testsuite
//! (`scripts/autobahn.sh` drives it with `kosoku`).
//!
//! ```text
//! cargo run --release -p switchboard --example autobahn_echo -- 127.0.0.1:9001
//! ```
//!
//! Every path upgrades with [`switchboard::ws::Upgrade`], the extractor `Manager::accept`
//! takes, and frames go through [`switchboard::ws::frame`], the codec connections use, with
//! the message limit raised to the 16 MiB the suite's 9.* cases send. Each text or binary
//! message is echoed with the same opcode, pings are answered with pongs, and a close is
//! answered with the peer's code. permessage-deflate is accepted when offered (as the
//! server's `compression.enabled` does by default): compressed messages are inflated, and
//! every echo goes out compressed, even where that does not make it smaller (the server
//! itself sends those plain): kosoku's Python 3 port of cases 12.*/13.* hashes an echo it
//! received uncompressed as `str` and errors ("Strings must be encoded before hashing"). A broken frame ends the connection as a Switchboard
//! connection ends: a close frame with the code of `DisconnectReason` (1002 protocol error,
//! 1007 invalid UTF-8, 1009 too big), then reading until the peer's close reply.

use std::net::SocketAddr;
use std::ops::ControlFlow;

use axum::Router;
use axum::response::Response;
use axum::routing::get;
use switchboard::ws::deflate::{self, Deflate};
use switchboard::ws::frame::{self, Decoder, Frame, OpCode};
use switchboard::ws::{Upgrade, Upgraded};
use switchboard::{Config, DisconnectReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest message of the suite (case 9.1.6 / 9.2.6: 16 MiB).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

async fn upgrade(upgrade: Upgrade) -> Response {
    let upgrade = upgrade.with_deflate(true);
    let deflate = upgrade.deflate();
    upgrade.on_upgrade(switchboard::SUBPROTOCOL, move |io| echo(io, deflate))
}

/// How the echo loop ends.
enum End {
    /// The peer closed (with this code): the reply is sent, nothing more is read.
    PeerClosed(Option<u16>),
    /// A broken frame: close with the reason's code, then await the peer's reply.
    Broken(DisconnectReason),
    /// The socket ended or failed.
    Gone,
}

async fn echo(mut io: Upgraded, deflate: Option<Deflate>) {
    let mut decoder = Decoder::new(MAX_MESSAGE_BYTES).with_deflate(deflate.is_some());
    let window = deflate.and_then(Deflate::window_bits);
    let mut buf = vec![0; 64 * 1024];
    let mut out = Vec::new();
    let end = loop {
        let n = match io.read(&mut buf).await {
            Ok(0) | Err(_) => break End::Gone,
            Ok(n) => n,
        };
        let fed = decoder.feed(&mut buf[..n], |frame| {
            match frame {
                Frame::Text(text) => echo_message(&mut out, OpCode::Text, text.as_bytes(), window),
                Frame::Binary(data) => echo_message(&mut out, OpCode::Binary, data, window),
                Frame::Ping(data) => frame::encode(&mut out, OpCode::Pong, data),
                Frame::Pong(_) => {}
                Frame::Close(code, _) => return ControlFlow::Break(code),
            }
            ControlFlow::Continue(())
        });
        if io.write_all(&out).await.is_err() {
            break End::Gone;
        }
        out.clear();
        match fed {
            Ok(None) => {}
            Ok(Some(code)) => break End::PeerClosed(code),
            Err(error) => break End::Broken(error.into()),
        }
    };
    let timeout = Config::default().close_timeout;
    let _ = tokio::time::timeout(timeout, async {
        match end {
            End::Gone => return,
            End::PeerClosed(code) => {
                frame::encode_close(&mut out, code, "");
                let _ = io.write_all(&out).await;
            }
            End::Broken(reason) => {
                frame::encode_close(&mut out, reason.close_code(), reason.as_str());
                if io.write_all(&out).await.is_ok() {
                    while let Ok(n @ 1..) = io.read(&mut buf).await {
                        let reply = decoder.feed(&mut buf[..n], |frame| match frame {
                            Frame::Close(..) => ControlFlow::Break(()),
                            _ => ControlFlow::Continue(()),
                        });
                        if !matches!(reply, Ok(None)) {
                            break;
                        }
                    }
                }
            }
        }
        let _ = io.shutdown().await;
    })
    .await;
}

/// Encodes a message, compressed with `window` bits when there is one.
fn echo_message(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], window: Option<u8>) {
    let Some(bits) = window else {
        return frame::encode(out, opcode, payload);
    };
    deflate::with_compressed(payload, bits, |deflated| {
        frame::encode_deflated(out, opcode, deflated);
    });
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let app = Router::new().fallback(get(upgrade));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
