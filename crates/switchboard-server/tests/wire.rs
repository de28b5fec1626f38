//! Switchboard's own WebSocket layer against real clients: the upgrade, control frames,
//! fragmentation, the close handshake, and frames no client may send. Raw TCP where a
//! conforming client library refuses to misbehave.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

/// The next frame that is not a text frame (skipping `welcome`, pings and the like).
async fn next_control(client: &mut Client, what: &str) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("stream ended waiting for {what}"))
            .unwrap_or_else(|e| panic!("error waiting for {what}: {e}"));
        if !message.is_text() {
            return message;
        }
    }
}

#[tokio::test]
async fn a_ping_is_answered_with_its_payload() {
    let server = server(|_| {}).await;
    let mut c = connect(server.addr, "l1", "alice").await;
    c.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match next_control(&mut c, "the pong").await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    c.close().await;
    all_clean(&server).await;
}

#[tokio::test]
async fn a_fragmented_message_is_assembled_with_a_ping_between_its_fragments() {
    let server = server(|_| {}).await;
    let mut c = connect(server.addr, "l1", "alice").await;
    let text = r#"{"type":"broadcast","data":{"text":"héllo in three fragments"}}"#.as_bytes();
    // Cut inside the two-byte 'é': UTF-8 is checked across fragments.
    let cut = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
    let fragments = [
        Frame::message(text[..cut].to_vec(), OpCode::Data(Data::Text), false),
        Frame::ping(b"between".to_vec()),
        Frame::message(text[cut..40].to_vec(), OpCode::Data(Data::Continue), false),
        Frame::message(text[40..].to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for fragment in fragments {
        c.ws.send(Message::Frame(fragment)).await.unwrap();
    }
    match next_control(&mut c, "the pong between fragments").await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"between"),
        other => panic!("expected a pong, got {other:?}"),
    }
    let message = c.expect("message", "the assembled broadcast").await;
    assert_eq!(message["data"]["text"], "héllo in three fragments");
    c.close().await;
    all_clean(&server).await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_code_and_cleaned_up() {
    let server = server(|_| {}).await;
    let mut watcher = connect(server.addr, "l1", "watcher").await;
    let mut c = connect(server.addr, "l1", "alice").await;
    watcher.expect("member_joined", "alice's join").await;
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4321),
        reason: "done here".into(),
    })))
    .await
    .unwrap();
    match next_control(&mut c, "the close reply").await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4321),
        other => panic!("expected the close reply, got {other:?}"),
    }
    watcher.expect("member_left", "alice's leave").await;
    watcher.close().await;
    all_clean(&server).await;
}

/// An upgrade request to lobby `l1` as `user` (dev mode), with RFC 6455's example key.
fn upgrade_request(addr: std::net::SocketAddr, user: &str) -> String {
    format!(
        "GET /ws/l1?token={user} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A raw client: the upgrade request, then bytes as given.
async fn raw_upgrade(server: &switchboard_server::RunningServer, after: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut request = upgrade_request(server.addr, "raw").into_bytes();
    request.extend_from_slice(after);
    tcp.write_all(&request).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The accept key of RFC 6455's own example.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    tcp
}

/// Reads one unmasked server frame: (opcode, payload).
async fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut header = [0u8; 2];
        tcp.read_exact(&mut header).await.unwrap();
        assert_eq!(header[1] & 0x80, 0, "server frames are not masked");
        let len = match header[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                tcp.read_exact(&mut b).await.unwrap();
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                tcp.read_exact(&mut b).await.unwrap();
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        tcp.read_exact(&mut payload).await.unwrap();
        (header[0] & 0x0f, payload)
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a server frame in time")
}

/// Reads frames until the close frame; returns its code.
async fn close_code(tcp: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_frame(tcp).await;
        if opcode == 8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// A masked client frame.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1, 2, 3, 4];
    let mut out = vec![first, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_not_lost() {
    let server = server(|_| {}).await;
    // A ping pipelined behind the request, before the 101 arrives.
    let mut tcp = raw_upgrade(&server, &masked(0x89, b"early")).await;
    let (opcode, welcome) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&welcome).unwrap()["type"],
        "welcome"
    );
    let (opcode, payload) = read_frame(&mut tcp).await;
    assert_eq!((opcode, payload.as_slice()), (10, b"early".as_slice()));
}

#[tokio::test]
async fn frames_no_client_may_send_close_with_1002_and_leave_nothing_behind() {
    // A long close deadline, so that ending at the reply and ending at the deadline differ.
    let server = server(|c| c.manager.close_timeout = std::time::Duration::from_secs(10)).await;
    let cases: [(&str, Vec<u8>); 5] = [
        ("unmasked", vec![0x81, 0x02, b'h', b'i']),
        ("reserved bit", masked(0x81 | 0x40, b"{}")),
        ("unknown opcode", masked(0x83, b"")),
        ("fragmented ping", masked(0x09, b"")),
        ("continuation first", masked(0x80, b"x")),
    ];
    for (what, bytes) in cases {
        let mut tcp = raw_upgrade(&server, &[]).await;
        tcp.write_all(&bytes).await.unwrap();
        assert_eq!(close_code(&mut tcp).await, 1002, "{what}");
        // The close handshake: the server ends the stream once the reply arrives.
        tcp.write_all(&masked(0x88, &1002u16.to_be_bytes()))
            .await
            .unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_millis(500),
            tcp.read_to_end(&mut rest),
        )
        .await
        .expect("the server ends the stream after the close reply, not at its deadline")
        .unwrap();
    }
    all_clean(&server).await;
    assert_eq!(server.manager.stats().total_connections, 0);
}

/// RFC 6455: the key is 16 random bytes in base64; anything else is not a WebSocket client.
#[tokio::test]
async fn a_key_that_is_not_16_bytes_in_base64_is_refused_with_400() {
    let server = server(|_| {}).await;
    for key in [
        "x",
        "dGhlIHNhbXBsZSBub25jZQ",
        "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=",
        "dGhlIHNhbXBsZSBub25jZQ!=",
        "!!!!!!!!!!!!!!!!!!!!!!==",
    ] {
        let headers = [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
        ];
        let response = http_with(server.addr, "GET", "/ws/l1?token=a", None, None, &headers).await;
        assert_eq!(response.status, 400, "key {key:?}");
        assert_eq!(
            response.body, "`Sec-WebSocket-Key` must be 16 bytes in base64",
            "key {key:?}"
        );
    }
    assert_eq!(server.manager.stats().total_connections, 0);
    let c = connect(server.addr, "l1", "alice").await;
    c.close().await;
}

#[tokio::test]
async fn requests_that_are_not_upgrades_are_refused_with_their_reason() {
    let server = server(|_| {}).await;
    let good = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for (missing, expect) in [
        ("Connection", "`Connection` must include `upgrade`"),
        ("Upgrade", "`Upgrade` must be `websocket`"),
        (
            "Sec-WebSocket-Version",
            "`Sec-WebSocket-Version` must be 13",
        ),
        ("Sec-WebSocket-Key", "`Sec-WebSocket-Key` is missing"),
    ] {
        let headers: Vec<(&str, &str)> = good
            .iter()
            .copied()
            .filter(|(n, _)| *n != missing)
            .collect();
        let response = http_with(server.addr, "GET", "/ws/l1?token=a", None, None, &headers).await;
        assert_eq!(response.status, 400, "without {missing}");
        assert_eq!(response.body, expect);
    }
    let mut wrong_version = good.to_vec();
    wrong_version[2] = ("Sec-WebSocket-Version", "8");
    let response = http_with(
        server.addr,
        "GET",
        "/ws/l1?token=a",
        None,
        None,
        &wrong_version,
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(server.manager.stats().total_connections, 0);
    // Still serving upgrades.
    let c = connect(server.addr, "l1", "alice").await;
    c.close().await;
}

/// A client that sends pings and never reads the pongs cannot grow the server's memory with
/// replies: once its socket's buffers are full and 64 KiB of replies wait, it is closed as a
/// slow consumer.
#[tokio::test]
async fn pongs_a_client_does_not_read_are_bounded() {
    let server = server(|_| {}).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window: the kernel's buffers fill quickly.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(server.addr).await.unwrap();
    let request = upgrade_request(server.addr, "pinger");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let ping = masked(0x89, &[b'p'; 125]);
    // Bounded: 60,000 pings (7.6 MB of replies; the kernel may buffer 4 MB of them), far more
    // than the server may hold. The writes fail once the server has closed the socket.
    let mut sent = 0;
    let flood = async {
        while sent < 60_000 && tcp.write_all(&ping).await.is_ok() {
            sent += 1;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), flood).await;
    eventually("the pinger closed as a slow consumer", || {
        server.manager.stats().closes.get("slow_consumer") == Some(&1)
    })
    .await;
    assert!(sent < 60_000, "the server read every ping: {sent}");
    all_clean(&server).await;
}

/// Reads a response head (up to the blank line).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut byte))
            .await
            .expect("a response in time")
            .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The server reads upgrade heads itself (not through hyper, which would add `date`), and
/// `welcome` follows the 101.
#[tokio::test]
async fn an_upgrade_is_answered_by_the_lean_path_and_welcome_follows() {
    let server = server(|_| {}).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(upgrade_request(server.addr, "lean").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tcp).await.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(!head.contains("date:"), "answered by hyper: {head}");
    let (opcode, welcome) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 1);
    let welcome: Value = serde_json::from_slice(&welcome).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user_id"], "lean");
}

/// A request head that arrives in pieces (a byte at a time at first) is still an upgrade.
#[tokio::test]
async fn a_request_head_split_over_several_writes_is_upgraded() {
    let server = server(|_| {}).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let request = upgrade_request(server.addr, "split").into_bytes();
    let (first, rest) = request.split_at(10);
    for byte in first {
        tcp.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (middle, last) = rest.split_at(rest.len() - 3);
    tcp.write_all(middle).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    tcp.write_all(last).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (opcode, welcome) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&welcome).unwrap()["type"],
        "welcome"
    );
}

/// Requests that are not plain upgrades go to hyper and the router with the bytes already
/// read: pipelined requests on one connection, and upgrades the lean path leaves alone.
#[tokio::test]
async fn requests_the_lean_path_leaves_alone_reach_the_router() {
    let server = server(|_| {}).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let two = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    tcp.write_all(two.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    // A percent-encoded lobby: the router decodes it, and refuses it as before.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = upgrade_request(server.addr, "a").replace("/ws/l1", "/ws/l%201");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // Protocol v1 without a lobby: 400 from `Manager::accept`, as before.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = upgrade_request(server.addr, "a").replace("/ws/l1", "/ws");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(server.manager.stats().total_connections, 0);
}

/// A foreign `Origin` on the lean path: 403 with its text, and the connection closed.
#[tokio::test]
async fn a_foreign_origin_is_refused_with_403_on_the_lean_path() {
    let server = server(|_| {}).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = upgrade_request(server.addr, "a")
        .replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\norigin not allowed"), "{answer}");
    assert_eq!(server.manager.stats().total_connections, 0);
}

/// Broadcasts are written into an idle member's socket by the publisher itself
/// (write-through); a socket that fills up keeps the rest for the member's own task. Whatever
/// path each frame takes, the member gets every broadcast whole and in order, with the pongs
/// to its pings between them.
#[tokio::test]
async fn broadcasts_written_through_a_filling_socket_arrive_whole_and_in_order() {
    let server = server(|_| {}).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window: 40 broadcasts of 2 KB do not fit, so writes come up short.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = upgraded(
        socket.connect(server.addr).await.unwrap(),
        &server,
        "member",
    )
    .await;
    let pad = "p".repeat(2000);
    let mut next = 0u64;
    for round in 0u8..30 {
        for _ in 0..40 {
            let data = serde_json::json!({ "seq": next, "pad": pad });
            let reached = server
                .manager
                .broadcast("l1", &data, switchboard::Skip::Nobody)
                .unwrap();
            assert_eq!(reached, 1);
            next += 1;
        }
        tcp.write_all(&masked(0x89, &[round; 8])).await.unwrap();
        let (mut texts, mut pongs) = (0, 0);
        while texts < 40 || pongs < 1 {
            let (opcode, payload) = read_frame(&mut tcp).await;
            match opcode {
                1 => {
                    let frame: Value = serde_json::from_slice(&payload).unwrap();
                    if frame["type"] == "health_ping" {
                        continue;
                    }
                    assert_eq!(frame["type"], "message", "{frame}");
                    let seq = frame["data"]["seq"].as_u64().unwrap();
                    assert_eq!(seq, next - 40 + texts, "round {round}: in order, none lost");
                    assert_eq!(frame["data"]["pad"].as_str().map(str::len), Some(2000));
                    texts += 1;
                }
                0xA => {
                    assert_eq!(payload, [round; 8], "the pong answers this round's ping");
                    pongs += 1;
                }
                // The server's own health check.
                0x9 => {}
                other => panic!("unexpected opcode {other} in round {round}"),
            }
        }
    }
    let stats = server.manager.stats();
    assert_eq!(
        stats.closes.len(),
        0,
        "nobody was closed: {:?}",
        stats.closes
    );
    drop(tcp);
    all_clean(&server).await;
}

/// With `queue.write_delay_ms`, broadcasts wait for the delay and go out together, in one
/// write; a reply of the member's own (a pong) is not held and takes them along.
#[tokio::test]
async fn a_write_delay_holds_broadcasts_and_sends_them_together() {
    let server = server(|c| c.manager.write_delay = std::time::Duration::from_secs(1)).await;
    let mut tcp = raw_member(&server, "paced").await;
    for n in 0..3 {
        let reached = server
            .manager
            .broadcast("l1", &serde_json::json!(n), switchboard::Skip::Nobody)
            .unwrap();
        assert_eq!(reached, 1);
    }
    let mut byte = [0u8; 1];
    assert!(tcp.try_read(&mut byte).is_err(), "held for the delay");
    // One read, after the delay, holds all three.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let texts = frames_in(&buf[..n]);
    assert_eq!(texts.len(), 3, "together: {texts:?}");
    for (n, text) in texts.iter().enumerate() {
        let frame: Value = serde_json::from_str(text).unwrap();
        assert_eq!(frame["data"], n, "{frame}");
    }
    // Held again, until the member's ping: its pong goes at once, after the held broadcast.
    server
        .manager
        .broadcast("l1", &serde_json::json!(3), switchboard::Skip::Nobody)
        .unwrap();
    tcp.write_all(&masked(0x89, b"now")).await.unwrap();
    let (opcode, payload) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 1);
    assert!(String::from_utf8_lossy(&payload).contains("\"data\":3"));
    assert_eq!(read_frame(&mut tcp).await, (0xA, b"now".to_vec()));
    drop(tcp);
    all_clean(&server).await;
}

/// A raw member of lobby `l1`: upgraded, `welcome` read.
async fn raw_member(server: &switchboard_server::RunningServer, user: &str) -> TcpStream {
    upgraded(TcpStream::connect(server.addr).await.unwrap(), server, user).await
}

/// `tcp` upgraded into lobby `l1` as `user`, `welcome` read.
async fn upgraded(
    mut tcp: TcpStream,
    server: &switchboard_server::RunningServer,
    user: &str,
) -> TcpStream {
    tcp.write_all(upgrade_request(server.addr, user).as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut tcp).await.starts_with("HTTP/1.1 101"));
    let (opcode, welcome) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 1);
    assert!(String::from_utf8_lossy(&welcome).contains("\"welcome\""));
    tcp
}

/// The texts of the whole unmasked server frames in `bytes`.
fn frames_in(mut bytes: &[u8]) -> Vec<String> {
    let mut texts = Vec::new();
    while bytes.len() >= 2 {
        assert_eq!(bytes[0], 0x81, "a whole text frame");
        let (len, at) = match bytes[1] {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            n => (usize::from(n), 2),
        };
        texts.push(String::from_utf8(bytes[at..at + len].to_vec()).unwrap());
        bytes = &bytes[at + len..];
    }
    assert!(bytes.is_empty());
    texts
}
