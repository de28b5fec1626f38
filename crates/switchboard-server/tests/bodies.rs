//! HTTP request bodies and pending connections: every body is bounded in size (413) and time
//! (408), the credentials are checked before a byte of it is read, and connections that have
//! not upgraded are capped so a crowd of slow requests cannot use up the file descriptors.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::sse::{Sse, sse_post};
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "test-api-key";

/// Sends a request head (and `body`, possibly only the start of what `Content-Length`
/// declares) and returns the open stream.
async fn send_head(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp
}

/// Reads the response (status line and body) until the server closes, within `limit`.
async fn answer(tcp: &mut TcpStream, limit: Duration) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no complete answer within {limit:?}");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn post_head(addr: SocketAddr, path: &str, key: Option<&str>, length: usize) -> String {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn an_sse_post_over_max_message_bytes_gets_413_and_nothing_is_delivered() {
    let server = server(|c| c.manager.max_message_bytes = 1024).await;
    let mut member = connect(server.addr, "room", "wendy").await;
    let mut sse = Sse::open(server.addr, "/sse/room?token=sam", &[]).await;
    let id = sse.expect("welcome", "welcome").await.data["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    member.expect("member_joined", "sam").await;
    // The frame itself is over the limit (the envelope around it is not counted).
    let big = json!({"type": "broadcast", "data": "x".repeat(1024)});
    let r = sse_post(server.addr, "room", "sam", &id, big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    // A frame just within it passes, and is the first thing the member sees.
    let fits = "y".repeat(1024 - r#"{"type":"broadcast","data":""}"#.len());
    let frame = json!({"type": "broadcast", "data": fits});
    assert_eq!(frame.to_string().len(), 1024);
    let r = sse_post(server.addr, "room", "sam", &id, frame).await;
    assert_eq!(r.status, 202);
    let m = member.expect("message", "the post that fits").await;
    assert_eq!(m["data"], fits);
    // A declared body far over the limit is refused before it is sent.
    let mut tcp = send_head(
        server.addr,
        &post_head(server.addr, "/sse/room/messages?token=sam", None, 2_000_000),
        b"",
    )
    .await;
    let (status, body) = answer(&mut tcp, WAIT).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"));
}

#[tokio::test]
async fn api_bodies_are_bounded_by_api_max_body_bytes() {
    let server = server(|c| {
        c.api_key = Some(switchboard_server::config::Secret(KEY.into()));
        c.api_max_body_bytes = 4096;
    })
    .await;
    let _member = connect(server.addr, "room", "a").await;
    let big = json!({"data": "x".repeat(5000)}).to_string();
    let r = http(
        server.addr,
        "POST",
        "/api/lobbies/room/broadcast",
        Some(KEY),
        Some(&big),
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large")
    );
    let ok = json!({"data": "x".repeat(3000)}).to_string();
    let r = http(
        server.addr,
        "POST",
        "/api/lobbies/room/broadcast",
        Some(KEY),
        Some(&ok),
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"delivered": 1})));
}

/// A caller without credentials is answered at once: the server does not wait for (or read)
/// the body it declared.
#[tokio::test]
async fn credentials_are_checked_before_the_body_is_read() {
    let server = server(|c| {
        c.api_key = Some(switchboard_server::config::Secret(KEY.into()));
        c.jwt_secret = Some(switchboard_server::config::Secret(TEST_SECRET.into()));
        c.body_timeout = Duration::from_secs(30);
    })
    .await;
    for (path, key, want) in [
        ("/api/lobbies/room/broadcast", Some("wrong"), 401),
        ("/api/lobbies/room/broadcast", None, 401),
        ("/sse/room/messages?token=forged", None, 401),
    ] {
        let started = Instant::now();
        let mut tcp = send_head(server.addr, &post_head(server.addr, path, key, 1000), b"{").await;
        let (status, _) = answer(&mut tcp, WAIT).await;
        assert_eq!(status, want, "{path}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
}

/// A body trickled one byte at a time is dropped when `http.body_timeout_ms` runs out, on the
/// API and on SSE posts; the server keeps serving.
#[tokio::test]
async fn a_trickled_body_is_dropped_within_the_body_timeout() {
    let server = server(|c| {
        c.api_key = Some(switchboard_server::config::Secret(KEY.into()));
        c.api_max_body_bytes = 4 * 1024 * 1024;
        c.body_timeout = Duration::from_millis(600);
    })
    .await;
    let paths = [
        ("/api/lobbies/room/broadcast", Some(KEY), 2_000_000),
        ("/sse/room/messages?token=sam", None, 60_000),
    ];
    for (path, key, declared) in paths {
        let started = Instant::now();
        let tcp = send_head(
            server.addr,
            &post_head(server.addr, path, key, declared),
            b"{",
        )
        .await;
        let (mut read, mut write) = tcp.into_split();
        // One byte every 100 ms, bounded: the timeout must end it long before.
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if write.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut raw))
            .await
            .expect("the server ends the request")
            .ok();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(text.contains("body_timeout"), "{path}: {text}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(600), "{path}: {took:?}");
        assert!(took < Duration::from_secs(3), "{path}: {took:?}");
        trickle.abort();
    }
    let c = connect(server.addr, "room", "after").await;
    c.close().await;
}

/// A request head is at most 64 KiB: what a crowd of pending connections can hold is bounded.
#[tokio::test]
async fn a_request_head_over_64_kib_is_refused() {
    let server = server(|_| {}).await;
    let long = "a".repeat(70 * 1024);
    let head = format!("GET /ws/room?token=a HTTP/1.1\r\nHost: x\r\nX-Long: {long}\r\n\r\n");
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The server may stop reading (and answer) before all of it is written.
    let _ = tcp.write_all(head.as_bytes()).await;
    let (status, _) = answer(&mut tcp, WAIT).await;
    assert_eq!(status, 431);
    let fine = "a".repeat(16 * 1024);
    let headers = [("X-Long", fine.as_str())];
    let r = http_with(server.addr, "GET", "/healthz", None, None, &headers).await;
    assert_eq!(r.status, 200);
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// With the process's open-file limit set low, a crowd of connections that never finish
/// their request head cannot use it up: past `http.max_pending` they are refused at once with
/// 503, the established WebSockets keep talking, and once the crowd is gone upgrades work.
#[tokio::test]
async fn a_crowd_of_slow_requests_cannot_use_up_the_file_descriptors() {
    let server = Process::start(
        &[
            ("SWITCHBOARD_HTTP__MAX_PENDING", "40"),
            ("SWITCHBOARD_HANDSHAKE_TIMEOUT_MS", "30000"),
        ],
        None,
    );
    let pid = server.child.id();
    let mut a = connect(server.addr, "room", "a").await;
    let mut b = connect(server.addr, "room", "b").await;
    a.expect("member_joined", "b").await;
    let baseline = fds(pid);
    let limit = baseline + 80;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit");
    // 150 connections that send half a request head and then nothing.
    let mut crowd = Vec::new();
    let mut refused = 0;
    for _ in 0..150 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /ws/room HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        crowd.push(tcp);
    }
    for tcp in &mut crowd {
        let mut buf = [0u8; 256];
        // The refused ones are answered at once; the held ones say nothing.
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), tcp.read(&mut buf)).await
            && n > 0
        {
            assert!(buf[..n].starts_with(b"HTTP/1.1 503"), "{:?}", &buf[..n]);
            refused += 1;
        }
    }
    assert!(refused >= 100, "only {refused} of 150 were refused");
    assert!(fds(pid) < limit, "{} descriptors of {limit}", fds(pid));
    // The established connections keep working meanwhile.
    a.send(broadcast(json!("still here"))).await;
    assert_eq!(
        b.expect("message", "a's broadcast").await["data"],
        "still here"
    );
    drop(crowd);
    // Once the crowd is gone (its descriptors closed), upgrades get through again.
    eventually("the crowd's descriptors are closed", || {
        fds(pid) <= baseline + 10
    })
    .await;
    let _c = connect(server.addr, "room", "c").await;
    b.expect("member_joined", "c").await;
}
