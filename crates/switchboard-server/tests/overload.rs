//! Overload without collateral: a publisher drives the real server past what it can deliver
//! while its members read, and five members stop reading. The readers are never closed and
//! end with every broadcast, in order (caught up from the history where the server fell
//! behind); publishes are shed where they enter; only the non-readers are closed, as slow
//! consumers; memory stays bounded; and the server is back to live traffic by itself.
//!
//! The server runs at the lowest CPU priority (`renice 19`), so that on a machine the test
//! shares with it the server, not the test's readers, is the one that cannot keep up.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use serde_json::{Value, json};

const READERS: usize = 100;
const STUCK: usize = 5;
/// How long the publisher floods, and the most frames it sends.
const FLOOD: Duration = Duration::from_secs(10);
const MAX_FRAMES: u64 = 2_000_000;
/// The slow-consumer grace the servers run with (the default).
const GRACE_MS: &str = "2000";
/// Everything after the flood (the last broadcast getting through, every reader reaching it).
const SETTLE: Duration = Duration::from_secs(60);
/// The most the server's resident memory may reach.
const MAX_RSS_KIB: u64 = 256 * 1024;
const LOBBY: &str = "flood";

/// The two tests load the machine: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn settings(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("SWITCHBOARD_RATE__MESSAGES_PER_SEC", "0"),
        ("SWITCHBOARD_RATE__CONNECTS_PER_IP_PER_SEC", "0"),
        ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "1000"),
        ("SWITCHBOARD_LIMITS__MAX_PER_IP", "1000"),
        ("SWITCHBOARD_QUEUE__SLOW_GRACE_MS", GRACE_MS),
        // Health checks out of the way: the non-readers must be closed as slow consumers.
        // (the test's cheap clients never answer a ping).
        ("SWITCHBOARD_HEALTH__PING_INTERVAL_MS", "600000"),
        ("SWITCHBOARD_PRESENCE__EVENTS", "false"),
    ];
    env.extend_from_slice(extra);
    env
}

/// Lowers a process's CPU priority to the least: every thread's (a nice value is a thread's
/// own on Linux; threads started later inherit it from their parent thread).
fn renice(process: &Process, nice: &str) {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", process.child.id())).unwrap();
    let tids: Vec<String> = tasks
        .map(|t| t.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let status = std::process::Command::new("renice")
        .args(["-n", nice, "-p"])
        .args(&tids)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The resident memory of a process, in KiB.
fn rss_kib(process: &Process) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A WebSocket client kept deliberately cheap (the server, not the test, must be the one
/// that cannot keep up): the upgrade written by hand, frames read from large reads and
/// scanned with the standard library's (optimised) searches, broadcasts sent as pre-encoded
/// bytes.
mod raw {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Upgrades a TCP connection to `path`; returns it with the bytes read past the response.
    /// `receive_buffer`: the socket's receive buffer (the kernel's default when `None`).
    pub(crate) async fn connect(
        addr: SocketAddr,
        path: &str,
        receive_buffer: Option<u32>,
    ) -> (TcpStream, Vec<u8>) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut tcp = socket.connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(
                    buf.starts_with(b"HTTP/1.1 101"),
                    "{:?}",
                    String::from_utf8_lossy(&buf)
                );
                return (tcp, buf.split_off(end + 4));
            }
        }
    }

    /// One masked text frame, as a client sends it.
    pub(crate) fn text_frame(payload: &str) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let len = payload.len();
        let mut out = vec![0x81];
        if len < 126 {
            out.push(0x80 | len as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// What the next frame in `buf` is: `(opcode, payload range, frame length)`, once whole.
    fn next_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
        let (&b0, &b1) = (buf.first()?, buf.get(1)?);
        let (len, at) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        (buf.len() >= at + len).then(|| (b0 & 0x0f, at..at + len, at + len))
    }

    /// Reads frames, handing each text payload to `on_text` until it says stop; `Err` with
    /// how the connection ended otherwise.
    pub(crate) async fn read_texts(
        tcp: &mut (impl tokio::io::AsyncRead + Unpin),
        mut buf: Vec<u8>,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<(), String> {
        let mut at = 0;
        loop {
            while let Some((opcode, payload, len)) = next_frame(&buf[at..]) {
                let payload = &buf[at + payload.start..at + payload.end];
                match opcode {
                    0x1 if !on_text(std::str::from_utf8(payload).unwrap()) => return Ok(()),
                    0x8 => return Err(format!("closed: {:?}", String::from_utf8_lossy(payload))),
                    _ => {}
                }
                at += len;
            }
            buf.drain(..at);
            at = 0;
            let read_from = buf.len();
            buf.resize(read_from + 64 * 1024, 0);
            let n = tcp
                .read(&mut buf[read_from..])
                .await
                .map_err(|e| e.to_string())?;
            buf.truncate(read_from + n);
            if n == 0 {
                return Err("connection lost".into());
            }
        }
    }
}

/// The `"offset":N` of an encoded frame.
fn offset_of(frame: &str) -> Option<u64> {
    let at = frame.find("\"offset\":")? + "\"offset\":".len();
    let end = frame[at..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(frame.len(), |n| at + n);
    frame[at..end].parse().ok()
}

/// What one reader saw.
#[derive(Debug, Default)]
struct Tally {
    /// The last broadcast's offset.
    last: u64,
    received: u64,
    /// Broadcasts out of order: a gap or a repeat.
    out_of_order: Vec<(u64, u64)>,
    /// `recovered` with `ok: false`: told that broadcasts were lost.
    lost: bool,
    /// How it ended, if the server closed it.
    closed: Option<String>,
}

/// Connects a member that reads every frame until the broadcast carrying `marker`, checking
/// that offsets follow each other from the `welcome`'s.
async fn reader(addr: SocketAddr, user: &str) -> tokio::task::JoinHandle<Tally> {
    let (mut tcp, buf) = raw::connect(addr, &format!("/ws/{LOBBY}?token={user}"), None).await;
    tokio::spawn(async move {
        let mut tally = Tally::default();
        let ended = raw::read_texts(&mut tcp, buf, |text| {
            if text.starts_with(r#"{"type":"message""#) {
                let offset = offset_of(text).unwrap();
                if offset != tally.last + 1 {
                    tally.out_of_order.push((tally.last, offset));
                }
                tally.last = offset;
                tally.received += 1;
                return !text.contains("\"marker\"");
            }
            if text.starts_with(r#"{"type":"welcome""#) {
                tally.last = offset_of(text).unwrap();
            } else if text.starts_with(r#"{"type":"recovered""#) && text.contains("false") {
                tally.lost = true;
            }
            true
        })
        .await;
        tally.closed = ended.err();
        tally
    })
}

/// Floods the lobby with broadcasts from one connection for [`FLOOD`]; returns how many it
/// sent and how many the server refused (`rate_limited`).
async fn flood(addr: SocketAddr) -> (u64, u64) {
    use tokio::io::AsyncWriteExt;
    let (tcp, buf) = raw::connect(addr, &format!("/ws/{LOBBY}?token=publisher"), None).await;
    let (mut read, mut write) = tcp.into_split();
    // Its answers are read as they come: a publisher that did not read would be a slow
    // consumer itself.
    let refusals = tokio::spawn(async move {
        let mut refused = 0u64;
        let _ended = raw::read_texts(&mut read, buf, |text| {
            refused += u64::from(text.contains("\"rate_limited\""));
            true
        })
        .await;
        refused
    });
    let frame =
        json!({"type": "broadcast", "data": {"text": "x".repeat(1000)}, "exclude_self": true})
            .to_string();
    let burst: Vec<u8> = (0..64).flat_map(|_| raw::text_frame(&frame)).collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < FLOOD && sent < MAX_FRAMES {
        write.write_all(&burst).await.unwrap();
        sent += 64;
    }
    // A close frame; the server's close ends the reading task.
    let close = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
    write.write_all(&close).await.unwrap();
    let refused = tokio::time::timeout(SETTLE, refusals)
        .await
        .unwrap()
        .unwrap();
    (sent, refused)
}

/// Publishes a broadcast through the API, retrying while it is shed (503).
async fn publish(addr: SocketAddr, data: &str) {
    let deadline = Instant::now() + SETTLE;
    let body = json!({ "data": data }).to_string();
    loop {
        let path = format!("/api/lobbies/{LOBBY}/broadcast");
        let r = http(addr, "POST", &path, None, Some(&body)).await;
        if r.status == 200 {
            return;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.error_code(), "lobby_busy");
        assert!(Instant::now() < deadline, "the lobby stayed busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stats(addr: SocketAddr) -> Value {
    http(addr, "GET", "/api/stats", None, None).await.json()
}

/// Connects the readers and the non-readers to `members`, floods through `publisher`, then
/// checks every promise of the module's doc.
async fn overload(members: &Process, publisher: &Process) {
    let mut readers = Vec::new();
    for i in 0..READERS {
        readers.push(reader(members.addr, &format!("reader{i}")).await);
    }
    let mut stuck = Vec::new();
    for i in 0..STUCK {
        let path = format!("/ws/{LOBBY}?token=stuck{i}");
        // Connected, then never read again: the kernel's buffers (kept small) fill, then the
        // socket stops taking bytes.
        stuck.push(raw::connect(members.addr, &path, Some(4096)).await);
    }
    let mut max_rss = rss_kib(members);
    let flooding = tokio::spawn(flood(publisher.addr));
    while !flooding.is_finished() {
        max_rss = max_rss.max(rss_kib(members));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (sent, refused) = flooding.await.unwrap();
    // Traffic goes on at an ordinary pace until the non-readers' sockets have stopped taking
    // bytes for the grace (their kernel buffers and queues hold megabytes first): each is
    // closed when a broadcast for it finds it so.
    let deadline = Instant::now() + SETTLE;
    let large = "y".repeat(32 * 1024);
    while stats(members.addr).await["closes"]["slow_consumer"] != STUCK {
        assert!(Instant::now() < deadline, "non-readers still open");
        for _ in 0..10 {
            publish(publisher.addr, &large).await;
        }
    }
    publish(publisher.addr, "marker").await;
    let mut tallies = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let Ok(tally) = tokio::time::timeout(SETTLE, reader).await else {
            // What the servers said, apart from the connects and disconnects.
            let said = |p: &Process| {
                let logs = p.logs();
                let lines = logs
                    .lines()
                    .filter(|l| !l.contains("switchboard::connection"));
                lines.collect::<Vec<_>>().join("\n")
            };
            panic!(
                "reader {i} never got the last broadcast; members: {}; publisher: {}\n\
                 members' logs: {}\npublisher's logs: {}",
                stats(members.addr).await,
                stats(publisher.addr).await,
                said(members),
                said(publisher)
            );
        };
        tallies.push(tally.unwrap());
    }
    for (i, tally) in tallies.into_iter().enumerate() {
        assert_eq!(tally.closed, None, "reader {i} was closed");
        assert!(!tally.lost, "reader {i} was told broadcasts were lost");
        assert_eq!(tally.out_of_order, [], "reader {i}: gaps or repeats");
        assert!(tally.received > 1, "reader {i} got {}", tally.received);
    }
    let s = eventually_stats(members.addr, |s| {
        s["closes"]["slow_consumer"] == STUCK && s["lagging_members"] == 0
    })
    .await;
    let closes = s["closes"].as_object().unwrap();
    // The readers closed their own connections after the last broadcast (`connection_lost`),
    // the publisher its own (`client_closed`); the server closed only the non-readers.
    assert!(
        closes
            .keys()
            .all(|r| ["slow_consumer", "client_closed", "connection_lost"].contains(&r.as_str())),
        "only the non-readers were closed: {closes:?}"
    );
    if publisher.addr == members.addr {
        assert!(s["shed_deliveries"].as_u64().unwrap() > 0, "{s}");
    }
    let p = stats(publisher.addr).await;
    assert!(
        p["shed_publishes"].as_u64().unwrap() > 0 && refused > 0,
        "the server never fell behind ({sent} sent): {p}"
    );
    assert!(max_rss < MAX_RSS_KIB, "RSS reached {max_rss} KiB");
    eprintln!(
        "{sent} broadcasts sent, {refused} shed; member node: {}; max RSS {max_rss} KiB",
        s
    );
    drop(stuck);
}

async fn eventually_stats(addr: SocketAddr, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = stats(addr).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_past_saturation_sheds_publishes_and_closes_only_non_readers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = Process::start(&settings(&[]), None);
    renice(&server, "19");
    overload(&server, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_past_saturation_shed_publishes_across_the_cluster() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let url = redis.url();
    let cluster = |id: &'static str| {
        // Broadcasts already on their way when word of the members' lag goes out still arrive
        // (at this flood's rate, thousands): the history must reach back past them for the
        // members to catch up (docs/cluster.md).
        let mut env = settings(&[
            ("SWITCHBOARD_REDIS__NODE_ID", id),
            ("SWITCHBOARD_HISTORY__SIZE", "2000"),
        ]);
        env.push((
            "SWITCHBOARD_REDIS__URL",
            Box::leak(url.clone().into_boxed_str()),
        ));
        Process::start(&env, None)
    };
    let members = cluster("members");
    let publisher = cluster("publisher");
    renice(&members, "10");
    overload(&members, &publisher).await;
}
