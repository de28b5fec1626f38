//! Webhooks against a real HTTP receiver started by the test: every event arrives signed, in
//! order, with its fields; retries resend the same events; a dead receiver costs the clients
//! nothing and what does not fit the queue is counted.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Every request the receiver got: its body, and whether its signature verified.
struct Posted {
    body: Value,
    signed: bool,
}

/// A receiver on 127.0.0.1:0 that verifies signatures with `secret` and answers 500 to its
/// first `fail_first` requests.
async fn receiver(
    secret: &'static str,
    fail_first: usize,
) -> (SocketAddr, mpsc::UnboundedReceiver<Posted>) {
    receiver_while(secret, fail_first, Arc::new(AtomicBool::new(true))).await
}

/// [`receiver`] that is down (503, nothing recorded) while `up` is false.
async fn receiver_while(
    secret: &'static str,
    fail_first: usize,
    up: Arc<AtomicBool>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Posted>) {
    let (app, rx) = hook_app(secret, fail_first, up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

/// The receiver's routes: `/hook` records every post (see [`receiver_while`]).
fn hook_app(
    secret: &'static str,
    fail_first: usize,
    up: Arc<AtomicBool>,
) -> (axum::Router, mpsc::UnboundedReceiver<Posted>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let failures = Arc::new(AtomicUsize::new(fail_first));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (tx, failures, up) = (tx.clone(), failures.clone(), up.clone());
            async move {
                if !up.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let signed = verify_signature(secret, &headers, &body);
                let _ = tx.send(Posted {
                    body: serde_json::from_slice(&body).unwrap(),
                    signed,
                });
                let fail = failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    (app, rx)
}

async fn next_posted(rx: &mut mpsc::UnboundedReceiver<Posted>) -> Posted {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a batch in time")
        .unwrap()
}

/// Reads batches until `n` events have arrived; every batch must verify.
async fn events(rx: &mut mpsc::UnboundedReceiver<Posted>, n: usize) -> Vec<Value> {
    let mut all = Vec::new();
    while all.len() < n {
        let posted = next_posted(rx).await;
        assert!(posted.signed, "every batch is signed: {}", posted.body);
        all.extend(posted.body["events"].as_array().unwrap().iter().cloned());
    }
    all
}

fn hooked(url: String, secrets: &str) -> impl FnOnce(&mut switchboard_server::ServerConfig) {
    let secrets = secrets.to_owned();
    move |c| {
        c.set("webhook.url", &url).unwrap();
        c.set("webhook.secret", &secrets).unwrap();
        c.set("webhook.batch_ms", "5").unwrap();
        c.manager.node_id = "hooknode".into();
    }
}

#[tokio::test]
async fn events_reach_the_backend_signed_in_order_with_their_fields() {
    let (addr, mut posted) = receiver("new-secret", 0).await;
    // Two secrets (a rotation): the receiver knows only the new one.
    let server = server(|c| {
        hooked(format!("http://{addr}/hook"), "old-secret,new-secret")(c);
        c.set("webhook.events", "connect,disconnect,join,leave,message")
            .unwrap();
    })
    .await;
    let mut alice = connect_v2(server.addr, "/ws/room?token=alice").await;
    alice.expect("joined", "room").await;
    alice.join("side", 1).await;
    alice
        .send(json!({"type": "game_move", "x": [1, 2], "id": 2}))
        .await;
    assert_eq!(
        alice.expect("ack", "the app message is accepted").await["id"],
        2
    );
    alice
        .send(json!({"type": "leave", "lobby": "side", "id": 3}))
        .await;
    alice.expect("left", "side").await;
    let id = alice.id().to_owned();
    alice.close().await;

    let events = events(&mut posted, 5).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["connect", "join", "message", "leave", "disconnect"]);
    for e in &events {
        assert_eq!(
            (e["connection_id"].as_str(), e["user_id"].as_str()),
            (Some(id.as_str()), Some("alice"))
        );
        assert_eq!(e["node"], "hooknode");
        assert_eq!(e["ip"], "127.0.0.1");
        assert!(e["time"].as_u64().unwrap() > 1_700_000_000_000);
    }
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "unique ids");
    assert_eq!(
        (events[0]["protocol"].as_u64(), &events[0]["lobbies"]),
        (Some(2), &json!(["room"]))
    );
    assert_eq!(events[1]["lobby"], "side");
    assert_eq!(events[2]["message_type"], "game_move");
    assert_eq!(
        events[2]["message"],
        json!({"type": "game_move", "x": [1, 2], "id": 2})
    );
    assert_eq!(events[3]["lobby"], "side");
    // A close the client started has no code of the server's: `code` is null.
    assert_eq!(
        (events[4]["reason"].as_str(), &events[4]["code"]),
        (Some("client_closed"), &Value::Null)
    );
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_events_again() {
    let (addr, mut posted) = receiver("s3cret", 2).await;
    let server = server(hooked(format!("http://{addr}/hook"), "s3cret")).await;
    let alice = connect_v2(server.addr, "/ws?token=alice").await;
    alice.close().await;
    // Three attempts (500, 500, 200), each with the same events.
    let mut attempts = Vec::new();
    while attempts.len() < 3 {
        let posted = next_posted(&mut posted).await;
        assert!(posted.signed);
        let ids: Vec<String> = posted.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        attempts.push(ids);
    }
    assert!(!attempts[0].is_empty());
    assert_eq!(attempts[0], attempts[1]);
    assert_eq!(attempts[1], attempts[2]);
}

#[tokio::test]
async fn application_messages_stay_refused_without_the_message_event() {
    let (addr, _posted) = receiver("s", 0).await;
    let server = server(|c| {
        hooked(format!("http://{addr}/hook"), "s")(c);
        c.set("webhook.events", "connect,disconnect").unwrap();
    })
    .await;
    let mut alice = connect_v2(server.addr, "/ws?token=alice").await;
    alice.send(json!({"type": "game_move", "id": 1})).await;
    assert_eq!(
        alice.expect("error", "not forwarded").await["code"],
        "unknown_type"
    );
}

#[tokio::test]
async fn a_dead_receiver_costs_the_clients_nothing_and_drops_are_counted() {
    // A port nobody listens on, a tiny queue, short retries.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{dead}/hook");
    let server = Process::start(
        &[
            ("SWITCHBOARD_DEV_MODE", "true"),
            ("SWITCHBOARD_WEBHOOK__URL", url.as_str()),
            ("SWITCHBOARD_WEBHOOK__SECRET", "s"),
            ("SWITCHBOARD_WEBHOOK__QUEUE_BYTES", "600"),
            ("SWITCHBOARD_WEBHOOK__MAX_RETRY_MS", "2000"),
            ("SWITCHBOARD_RATE__CONNECTS_PER_IP_PER_SEC", "0"),
        ],
        None,
    );
    for i in 0..20 {
        let mut c = connect(server.addr, "room", &format!("u{i}")).await;
        c.send(json!({"type": "broadcast", "data": i})).await;
        assert_eq!(c.expect("message", "own broadcast").await["data"], i);
        c.close().await;
    }
    let mut dropped = 0.0;
    for _ in 0..100 {
        let metrics = http(server.addr, "GET", "/metrics", None, None).await.body;
        dropped = metrics
            .lines()
            .find(|l| l.starts_with("switchboard_webhook_events_total") && l.contains("dropped"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        dropped > 0.0,
        "events beyond the queue's bytes are counted as dropped"
    );
}

/// A TLS listener for axum: TCP accepts completed with a rustls handshake; failed handshakes
/// are counted (a client that does not trust the certificate shows up there).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    failed_handshakes: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                continue;
            };
            match self.tls.accept(tcp).await {
                Ok(tls) => return (tls, peer),
                Err(_) => {
                    self.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// An `https://` receiver with a certificate for 127.0.0.1 from the private CA in `dir`;
/// also returns its count of failed handshakes.
async fn tls_receiver(
    dir: &std::path::Path,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Posted>,
    Arc<AtomicUsize>,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let (app, rx) = hook_app("s", 0, Arc::new(AtomicBool::new(true)));
    let failed_handshakes = Arc::new(AtomicUsize::new(0));
    let listener = TlsListener {
        tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        failed_handshakes: failed_handshakes.clone(),
    };
    let addr = listener.tcp.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx, failed_handshakes)
}

/// An `https://` receiver signed by a private CA: trusted with `webhook.ca_file`, events
/// arrive; without it (the system's roots), the handshake is refused and nothing is posted.
#[tokio::test]
async fn an_https_receiver_is_trusted_through_webhook_ca_file() {
    let dir = common::tls::tls_files();
    let (addr, mut posted, failed_handshakes) = tls_receiver(&dir).await;
    let url = format!("https://{addr}/hook");
    let ca = dir.join("ca.pem").to_str().unwrap().to_owned();
    let trusting = server(|c| {
        hooked(url.clone(), "s")(c);
        c.set("webhook.events", "connect").unwrap();
        c.set("webhook.ca_file", &ca).unwrap();
    })
    .await;
    let alice = connect(trusting.addr, "room", "alice").await;
    let batch = events(&mut posted, 1).await;
    assert_eq!(batch[0]["type"], "connect");
    assert_eq!(batch[0]["user_id"], "alice");
    alice.close().await;

    let distrusting = server(|c| {
        hooked(url, "s")(c);
        c.set("webhook.events", "connect").unwrap();
        c.set("webhook.max_retry_ms", "200").unwrap();
    })
    .await;
    let bob = connect(distrusting.addr, "room", "bob").await;
    eventually("the untrusted certificate is refused", || {
        failed_handshakes.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(posted.try_recv().is_err(), "nothing reaches the receiver");
    bob.close().await;
}

/// The counter `switchboard_webhook_events_total{outcome}` of a server process.
async fn webhook_events(addr: SocketAddr, outcome: &str) -> u64 {
    let metrics = http(addr, "GET", "/metrics", None, None).await.body;
    let line = format!(r#"switchboard_webhook_events_total{{outcome="{outcome}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.parse().unwrap())
}

/// One chatting client: `rounds` app messages, one every `every`, each acked; answers health
/// pings. Returns how many acks it got.
async fn chat(mut client: Client, rounds: u64, every: Duration) -> u64 {
    let mut acked = 0;
    for n in 1..=rounds {
        let started = Instant::now();
        client.send(json!({"type": "chat", "n": n, "id": n})).await;
        loop {
            let frame = client.next_any(&format!("ack {n}")).await;
            match frame["type"].as_str() {
                Some("health_ping") => {
                    let pong = json!({"type": "health_pong", "timestamp": frame["timestamp"]});
                    client.send(pong).await;
                }
                Some("ack") if frame["id"] == n => break,
                // The URL lobby's `joined`.
                Some("joined") => {}
                _ => panic!("unexpected {frame}"),
            }
        }
        acked += 1;
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
    client.close().await;
    acked
}

/// A receiver down for 10 s while 1,000 clients chat: every message is acked and every ping
/// answered as usual (nobody is closed); afterwards the events that fit `queue_bytes` arrive,
/// in order per connection, once each, and the rest are counted as dropped, so that delivered
/// + dropped = sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_ten_seconds_while_a_thousand_clients_chat() {
    const CLIENTS: u64 = 1_000;
    const ROUNDS: u64 = 20;
    let up = Arc::new(AtomicBool::new(false));
    let (addr, mut posted) = receiver_while("s", 0, up.clone()).await;
    let url = format!("http://{addr}/hook");
    let server = Process::start(
        &[
            ("SWITCHBOARD_DEV_MODE", "true"),
            ("SWITCHBOARD_WEBHOOK__URL", url.as_str()),
            ("SWITCHBOARD_WEBHOOK__SECRET", "s"),
            ("SWITCHBOARD_WEBHOOK__EVENTS", "message"),
            ("SWITCHBOARD_WEBHOOK__QUEUE_BYTES", "262144"),
            ("SWITCHBOARD_WEBHOOK__MAX_RETRY_MS", "60000"),
            ("SWITCHBOARD_HEALTH__PING_INTERVAL_MS", "1000"),
            ("SWITCHBOARD_HEALTH__PONG_TIMEOUT_MS", "1000"),
            ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "1000"),
            ("SWITCHBOARD_LIMITS__MAX_PER_IP", "2000"),
            ("SWITCHBOARD_PRESENCE__EVENTS", "false"),
            ("SWITCHBOARD_RATE__CONNECTS_PER_IP_PER_SEC", "0"),
        ],
        None,
    );
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let path = format!("/ws/room{}?token=u{i}", i % 10);
        clients.push(connect_v2(server.addr, &path).await);
    }
    let started = Instant::now();
    let chats: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(chat(c, ROUNDS, Duration::from_millis(500))))
        .collect();
    for chat in chats {
        assert_eq!(chat.await.unwrap(), ROUNDS, "every message acked");
    }
    let chatted = started.elapsed();
    assert!(
        chatted >= Duration::from_secs(9),
        "the chat spans the outage"
    );
    // Every event was queued or dropped when its message was acked.
    let dropped = webhook_events(server.addr, "dropped").await;
    let sent = CLIENTS * ROUNDS;
    assert!(dropped > 0, "the byte bound was exceeded");
    assert!(dropped < sent, "some events fit the queue");
    up.store(true, Ordering::SeqCst);
    // The queued events arrive (retries back off up to 10 s), once each, in order per
    // connection.
    let mut ids = BTreeSet::new();
    let mut last_n = std::collections::HashMap::new();
    while (ids.len() as u64) < sent - dropped {
        let batch = tokio::time::timeout(Duration::from_secs(30), posted.recv())
            .await
            .expect("the queued events arrive")
            .unwrap();
        assert!(batch.signed);
        for event in batch.body["events"].as_array().unwrap() {
            assert!(
                ids.insert(event["id"].as_str().unwrap().to_owned()),
                "posted twice"
            );
            let n = event["message"]["n"].as_u64().unwrap();
            let previous = last_n.insert(event["connection_id"].to_string(), n);
            assert!(previous < Some(n), "in order per connection");
        }
    }
    assert_eq!(
        webhook_events(server.addr, "delivered").await,
        sent - dropped
    );
    assert_eq!(webhook_events(server.addr, "failed").await, 0);
}

/// Presence is per user: a user's second tab joins nobody, the last one out leaves.
#[tokio::test]
async fn presence_events_follow_users_not_tabs() {
    let (addr, mut posted) = receiver("s", 0).await;
    let server = server(|c| {
        hooked(format!("http://{addr}/hook"), "s")(c);
        c.set("webhook.events", "member_joined,member_left")
            .unwrap();
        c.manager.user_policy = switchboard::UserPolicy::Multi;
    })
    .await;
    let tab1 = connect(server.addr, "room", "alice").await;
    let tab2 = connect(server.addr, "room", "alice").await;
    let mut v2 = connect_v2(server.addr, "/ws?token=alice").await;
    v2.join("other", 1).await;
    tab1.close().await;
    tab2.close().await;
    v2.close().await;
    let events = events(&mut posted, 4).await;
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["lobby"].as_str().unwrap(),
                e["user_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("member_joined", "room", "alice"),
            ("member_joined", "other", "alice"),
            ("member_left", "room", "alice"),
            ("member_left", "other", "alice"),
        ]
    );
    // Nothing more: no event per tab.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), posted.recv())
            .await
            .is_err()
    );
}
