//! Every disconnect path leaves nothing behind; graceful shutdown; the real binary.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::DisconnectReason;

#[tokio::test]
async fn kick_by_user_and_by_connection() {
    let server = server(|c| c.manager.user_policy = switchboard::UserPolicy::Multi).await;
    let mut a1 = connect(server.addr, "l1", "a").await;
    let mut a2 = connect(server.addr, "l2", "a").await;
    let mut b = connect(server.addr, "l1", "b").await;
    assert_eq!(
        server
            .manager
            .disconnect_user("a", DisconnectReason::Kicked)
            .await,
        2
    );
    a1.ending_skipping_data("kick of a1")
        .await
        .assert(4009, "kicked", false);
    a2.ending("kick of a2").await.assert(4009, "kicked", false);
    b.expect("member_left", "a's leave after the kick").await;
    server
        .manager
        .disconnect(b.id(), DisconnectReason::Kicked)
        .await
        .unwrap();
    b.ending("kick of b").await.assert(4009, "kicked", false);
    assert!(
        server
            .manager
            .disconnect("nope-1", DisconnectReason::Kicked)
            .await
            .is_err()
    );
    all_clean(&server).await;
    assert_eq!(server.manager.stats().closes["kicked"], 3);
}

#[tokio::test]
async fn abrupt_and_polite_disconnects_clean_up() {
    let server = server(|_| {}).await;
    for round in 0..20 {
        let a = connect(server.addr, "l1", &format!("a{round}")).await;
        let b = connect(server.addr, &format!("l{round}"), "b").await;
        if round % 2 == 0 {
            drop(a); // TCP FIN without a close frame
            b.close().await;
        } else {
            a.close().await;
            drop(b);
        }
    }
    all_clean(&server).await;
    let closes = server.manager.stats().closes;
    let count = |r: &str| closes.get(r).copied().unwrap_or(0);
    assert_eq!(
        count("client_closed") + count("connection_lost") + count("replaced"),
        40,
        "{closes:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_says_goodbye_with_1001_to_everyone() {
    let server = server(|c| c.drain = Duration::from_millis(300)).await;
    let mut clients = Vec::new();
    for i in 0..30 {
        clients.push(connect(server.addr, &format!("l{}", i % 3), &format!("u{i}")).await);
    }
    let addr = server.addr;
    assert_eq!(http_status(addr, "/readyz").await, 200);
    let manager = server.manager.clone();
    let stopping = tokio::spawn(server.shutdown());
    // The listener stays up during the drain, reporting not-ready.
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_status(addr, "/readyz").await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never turned 503"
        );
    }
    connect_refused(addr, "l1", "late", ip(1))
        .await
        .assert(1001, "server_shutdown", true);
    for mut c in clients {
        c.ending_skipping_data("the shutdown")
            .await
            .assert(1001, "server_shutdown", true);
    }
    assert!(
        stopping.await.unwrap().unwrap(),
        "drained before the deadline"
    );
    let s = manager.stats();
    assert_eq!((s.total_connections, s.active_lobbies, s.users), (0, 0, 0));
    assert_eq!(s.closes["server_shutdown"], 30);
}

/// `GET path` over a raw TCP connection; the status code, or 0 when the connection fails.
async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn probes_answer() {
    let server = server(|_| {}).await;
    assert_eq!(http_status(server.addr, "/healthz").await, 200);
    assert_eq!(http_status(server.addr, "/readyz").await, 200);
}

/// The real binary: prints `listening on ADDR` first, serves, and exits 0 on SIGTERM after
/// closing its clients with 1001.
#[tokio::test]
async fn binary_prints_its_address_and_drains_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--dev")
        .env("SWITCHBOARD_BIND", "127.0.0.1:0")
        .env("SWITCHBOARD_SHUTDOWN__DRAIN_MS", "200")
        .env("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line was {line:?}"))
        .parse()
        .unwrap();
    let mut a = connect(addr, "l1", "alice").await;
    // The environment's limit is in force.
    connect_refused(addr, "l1", "bob", ip(1))
        .await
        .assert(4002, "lobby_full", true);
    a.send(broadcast(json!("hi"))).await;
    a.expect("message", "own broadcast").await;
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    a.ending("SIGTERM drain")
        .await
        .assert(1001, "server_shutdown", true);
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // Logs to a pipe (a file, journald) carry no colour codes: those are for terminals.
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut logs).unwrap();
    assert!(logs.contains("connected"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "ANSI escapes in {logs:?}");
}

#[test]
fn binary_refuses_a_bad_configuration_naming_the_field() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "lots")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("limits.max_per_lobby"), "{stderr}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.is_empty(), "nothing listens: {out}");
    let _ = std::io::stdout().flush();
}

/// Dev mode is never inferred: without a key and without `--dev` the binary stops and says
/// what to set; an empty secret is a mistake, not "no secret".
#[test]
fn binary_without_auth_or_dev_refuses_to_start() {
    for secret in [None, Some("")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.env("SWITCHBOARD_BIND", "127.0.0.1:0");
        if let Some(secret) = secret {
            cmd.env("SWITCHBOARD_AUTH__JWT_SECRET", secret);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "secret {secret:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("auth.jwt_secret"), "{err}");
        if secret.is_none() {
            assert!(err.contains("--dev"), "says how to try it out: {err}");
        }
        assert!(out.stdout.is_empty(), "nothing listens");
    }
}

#[test]
fn binary_refuses_dev_mode_on_a_public_bind() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env("SWITCHBOARD_BIND", "0.0.0.0:0")
        .env("SWITCHBOARD_DEV_MODE", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dev_mode"));
}

#[tokio::test]
async fn frames_queued_before_a_kick_are_delivered_before_the_close() {
    let server = server(|_| {}).await;
    let mut a = connect(server.addr, "l1", "a").await;
    let id = a.id().to_owned();
    server
        .manager
        .send_to_connection(&id, &json!({"why": "spam"}))
        .await
        .unwrap();
    server
        .manager
        .disconnect(&id, DisconnectReason::Kicked)
        .await
        .unwrap();
    let d = a.expect("direct", "the explanation before the kick").await;
    assert_eq!(d["data"]["why"], "spam");
    a.ending("the kick").await.assert(4009, "kicked", false);
    // Pinging a connection that is gone fails at once rather than after the timeout.
    let started = std::time::Instant::now();
    assert!(
        server
            .manager
            .ping(&id, Duration::from_secs(30))
            .await
            .is_err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    all_clean(&server).await;
}
