//! permessage-deflate (RFC 7692) against the real server: the negotiation, a broadcast
//! compressed once for all its members, small frames plain, compressed client messages, a zip
//! bomb, and offers the server declines. The client is raw TCP with flate2
//! (`common::deflate`): tokio-tungstenite has no permessage-deflate.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::deflate::*;
use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A realistic chat payload of about `n` bytes of JSON.
fn chat(n: usize) -> Value {
    let line = json!({"user": "alice", "text": "are we still on for the review at four?", "at": 1_795_800_000_000u64});
    let lines = n / line.to_string().len() + 1;
    json!({"lines": vec![line; lines]})
}

/// Connects as `user` offering permessage-deflate; returns the client after `welcome`.
async fn connect_deflate(addr: std::net::SocketAddr, lobby: &str, user: &str) -> DeflateClient {
    let mut client = connect_offering(
        addr,
        &format!("/ws/{lobby}?token={user}"),
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await;
    assert_eq!(client.extensions.as_deref(), Some(ANSWER));
    let (welcome, _) = client.expect("welcome", "welcome").await;
    assert!(!welcome.compressed, "welcome is below min_bytes: plain");
    client
}

#[tokio::test]
async fn the_extension_is_negotiated_without_context_takeover() {
    let server = server(|_| {}).await;
    let mut client = connect_deflate(server.addr, "l1", "alice").await;
    // Plain messages from a client that negotiated it are fine too.
    client
        .send_text(&json!({"type": "presence"}).to_string(), false)
        .await;
    let (presence, value) = client.expect("presence", "presence").await;
    assert!(!presence.compressed);
    assert_eq!(value["users"], json!(["alice"]));
}

#[tokio::test]
async fn a_broadcast_is_compressed_once_for_every_member_that_negotiated_it() {
    let server = server(|c| c.manager.presence.events = false).await;
    let mut compressed = Vec::new();
    for user in ["a", "b", "c"] {
        compressed.push(connect_deflate(server.addr, "room", user).await);
    }
    let mut plain = connect(server.addr, "room", "plain").await;
    let before = server.manager.stats().messages_deflated;
    let data = chat(2000);
    plain.send(broadcast(data.clone())).await;
    let expected = plain.expect("message", "the plain member's copy").await;
    assert_eq!(expected["data"], data);
    let mut wire = Vec::new();
    for client in &mut compressed {
        let (message, value) = client.expect("message", "a compressed copy").await;
        assert!(
            message.compressed,
            "RSV1 set for a member that negotiated it"
        );
        assert_eq!(value, expected, "inflates to the plain member's frame");
        assert!(
            message.wire_len * 4 < message.payload.len(),
            "JSON compresses"
        );
        wire.push(message.wire_len);
    }
    assert!(
        wire.windows(2).all(|w| w[0] == w[1]),
        "the same bytes for all: {wire:?}"
    );
    let stats = server.manager.stats();
    assert_eq!(
        stats.messages_deflated - before,
        1,
        "compressed once, not once per member"
    );
    let metrics = http(server.addr, "GET", "/metrics", None, None).await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchboard_deflated_messages_total ")),
        "{metrics}"
    );
    // A second broadcast is compressed once more, whoever sends it.
    compressed[0]
        .send_text(&broadcast(chat(1000)).to_string(), true)
        .await;
    for client in &mut compressed {
        let (message, _) = client.expect("message", "the second broadcast").await;
        assert!(message.compressed);
    }
    plain.expect("message", "the second, plain").await;
    assert_eq!(server.manager.stats().messages_deflated - before, 2);
}

#[tokio::test]
async fn replays_reuse_the_compressed_broadcasts_the_history_keeps() {
    let server = server(|c| c.manager.presence.events = false).await;
    let mut bob = connect(server.addr, "l1", "bob").await;
    let before = server.manager.stats().messages_deflated;
    // Nobody with the extension yet: nothing is compressed.
    for n in 0..3 {
        bob.send(broadcast(json!({"n": n, "chat": chat(1000)})))
            .await;
        bob.expect("message", "bob's own broadcast").await;
    }
    assert_eq!(server.manager.stats().messages_deflated, before);
    // A reconnect from before them: the replay is compressed, each broadcast once.
    let path = |user: &str, epoch: &Value| {
        format!(
            "/ws/l1?token={user}&since=0&epoch={}",
            epoch.as_str().unwrap()
        )
    };
    let epoch = bob.welcome["epoch"].clone();
    let offer = Some("permessage-deflate");
    for user in ["alice", "carol"] {
        let mut client = connect_offering(server.addr, &path(user, &epoch), offer).await;
        client.expect("welcome", "welcome").await;
        for n in 0..3 {
            let (message, value) = client.expect("message", "a replayed broadcast").await;
            assert!(message.compressed, "{user}: replayed compressed");
            assert_eq!(value["data"]["n"], n);
        }
        let (_, recovered) = client.expect("recovered", "the end of the replay").await;
        assert_eq!(recovered["ok"], true);
    }
    assert_eq!(
        server.manager.stats().messages_deflated - before,
        3,
        "the second replay reused the first one's compressed bytes"
    );
}

#[tokio::test]
async fn small_frames_go_out_plain_and_a_large_direct_message_compressed() {
    let server = server(|c| c.manager.presence.events = false).await;
    let mut alice = connect_deflate(server.addr, "l1", "alice").await;
    let mut bob = connect(server.addr, "l1", "bob").await;
    bob.send(broadcast(json!("hi"))).await;
    let (small, value) = alice.expect("message", "a small broadcast").await;
    assert!(!small.compressed, "under min_bytes (256): plain");
    assert_eq!(value["data"], "hi");
    let data = chat(1000);
    bob.send(json!({"type": "direct", "to": "alice", "data": data}))
        .await;
    let (direct, value) = alice.expect("direct", "a large direct message").await;
    assert!(
        direct.compressed,
        "at least min_bytes: compressed on alice's own path"
    );
    assert_eq!(value["data"], data);
}

#[tokio::test]
async fn compressed_client_messages_are_inflated_whole_and_fragmented() {
    let server = server(|c| c.manager.presence.events = false).await;
    let mut alice = connect_deflate(server.addr, "l1", "alice").await;
    let mut bob = connect(server.addr, "l1", "bob").await;
    let data = chat(3000);
    alice
        .send_text(&broadcast(data.clone()).to_string(), true)
        .await;
    assert_eq!(bob.expect("message", "whole").await["data"], data);
    // Fragmented: RSV1 on the first frame only, a ping between the fragments.
    let z = deflate(
        broadcast(json!({"n": 2, "pad": "y".repeat(500)}))
            .to_string()
            .as_bytes(),
    );
    alice.send_frame(0x40 | 0x01, &z[..5]).await;
    alice.send_frame(0x89, b"ping").await;
    alice.send_frame(0x00, &z[5..9]).await;
    alice.send_frame(0x80, &z[9..]).await;
    assert_eq!(bob.expect("message", "fragmented").await["data"]["n"], 2);
}

/// This process's resident memory (the server runs in it), in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_zip_bomb_is_closed_with_1009_without_inflating_it() {
    let server = server(|c| {
        c.manager.max_message_bytes = 1 << 20;
        c.manager.presence.events = false;
    })
    .await;
    let mut alice = connect_deflate(server.addr, "l1", "alice").await;
    // 512 MiB of zeros in about half a MiB: within max_message_bytes compressed, 512 times it
    // inflated. One MiB of zeros compressed (non-final blocks ending in a sync flush), 512
    // times over, is a valid stream of it.
    let mut mib = deflate(&vec![0u8; 1 << 20]);
    mib.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut bomb = mib.repeat(512);
    bomb.truncate(bomb.len() - 4);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let before = rss();
    alice.send_frame(0xc1, &bomb).await;
    assert_eq!(alice.close_code("the 1009 close").await, Some(1009));
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "inflating stopped at the limit: RSS grew by {grown} bytes"
    );
    all_clean(&server).await;
    assert_eq!(
        server.manager.stats().closes.get("message_too_big"),
        Some(&1)
    );
    // The same message just within the limit is delivered.
    let mut bob = connect(server.addr, "l1", "bob").await;
    let mut alice = connect_deflate(server.addr, "l1", "alice").await;
    let big = broadcast(json!("z".repeat((1 << 20) - 100)));
    alice.send_text(&big.to_string(), true).await;
    let got = bob.expect("message", "a message of nearly 1 MiB").await;
    assert_eq!(got["data"].as_str().unwrap().len(), (1 << 20) - 100);
}

#[tokio::test]
async fn with_compression_disabled_the_offer_is_declined_and_rsv1_is_a_protocol_error() {
    let server = server(|c| c.manager.compression.enabled = false).await;
    let path = "/ws/l1?token=alice";
    let mut alice = connect_offering(server.addr, path, Some("permessage-deflate")).await;
    assert_eq!(alice.extensions, None);
    alice.expect("welcome", "welcome").await;
    alice
        .send_text(&broadcast(chat(500)).to_string(), true)
        .await;
    assert_eq!(alice.close_code("the 1002 close").await, Some(1002));
}

#[tokio::test]
async fn offers_it_cannot_honour_are_declined_and_the_handshake_succeeds() {
    let server = server(|_| {}).await;
    for (n, offer) in [
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; mystery_parameter",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "x-webkit-deflate-frame",
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/ws/l1?token=u{n}");
        let mut client = connect_offering(server.addr, &path, Some(offer)).await;
        assert_eq!(client.extensions, None, "{offer}");
        client.expect("welcome", offer).await;
    }
}

#[tokio::test]
async fn a_smaller_window_is_honoured_and_the_first_acceptable_offer_wins() {
    let server = server(|c| c.manager.presence.events = false).await;
    let offers = "permessage-deflate; server_max_window_bits=99, \
                  permessage-deflate; server_max_window_bits=10; client_max_window_bits";
    let mut alice = connect_offering(server.addr, "/ws/l1?token=alice", Some(offers)).await;
    assert_eq!(
        alice.extensions.as_deref(),
        Some(format!("{ANSWER}; server_max_window_bits=10").as_str())
    );
    assert_eq!(alice.server_window_bits, 10);
    alice.expect("welcome", "welcome").await;
    let mut bob = connect(server.addr, "l1", "bob").await;
    // Repeats 3 KiB apart: a 1 KiB window must not reach them (the test inflater refuses
    // distances past 10 bits).
    let block: String = (0..3000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let data = json!([block, block]);
    bob.ws
        .send(Message::Text(broadcast(data.clone()).to_string().into()))
        .await
        .unwrap();
    let (message, value) = alice.expect("message", "a compressed broadcast").await;
    assert!(message.compressed);
    assert_eq!(value["data"], data);
}

#[tokio::test]
async fn an_8_bit_window_is_accepted_but_the_server_sends_plain() {
    let server = server(|c| c.manager.presence.events = false).await;
    let offer = "permessage-deflate; server_max_window_bits=8";
    let mut alice = connect_offering(server.addr, "/ws/l1?token=alice", Some(offer)).await;
    assert_eq!(
        alice.extensions.as_deref(),
        Some(format!("{ANSWER}; server_max_window_bits=8").as_str())
    );
    alice.expect("welcome", "welcome").await;
    let mut bob = connect(server.addr, "l1", "bob").await;
    // The client may still compress what it sends.
    let data = chat(2000);
    alice
        .send_text(&broadcast(data.clone()).to_string(), true)
        .await;
    assert_eq!(
        bob.expect("message", "alice's broadcast").await["data"],
        data
    );
    let (message, value) = alice.expect("message", "its echo").await;
    assert!(!message.compressed, "zlib cannot keep to a 256-byte window");
    assert_eq!(value["data"], data);
}

#[tokio::test]
async fn rsv1_on_a_control_frame_is_a_protocol_error() {
    let server = server(|_| {}).await;
    let mut alice = connect_deflate(server.addr, "l1", "alice").await;
    alice.send_frame(0x80 | 0x40 | 0x09, b"").await;
    assert_eq!(alice.close_code("the 1002 close").await, Some(1002));
}

/// The header's value in a response, if any.
fn header<'a>(r: &'a HttpResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn event_streams_are_gzipped_event_by_event_for_clients_that_ask() {
    use common::sse::Sse;
    let server = server(|c| c.manager.presence.events = false).await;
    let gzip = [("Accept-Encoding", "gzip, deflate, br")];
    let mut sse = Sse::open(server.addr, "/sse/room?token=sam", &gzip).await;
    assert_eq!(sse.status, 200);
    assert!(
        sse.headers.contains("content-encoding: gzip"),
        "{}",
        sse.headers
    );
    assert!(sse.headers.contains("vary: accept-encoding"));
    // Each event decodes on arrival (the test client decodes chunk by chunk): a stream
    // compressed with a kept window would hold `welcome` back.
    let welcome = sse.expect("welcome", "welcome, decoded at once").await;
    let id = welcome.data["connection_id"].as_str().unwrap().to_owned();
    let data = chat(2000);
    let mut ws = connect(server.addr, "room", "wendy").await;
    for _ in 0..3 {
        ws.send(broadcast(data.clone())).await;
        let m = sse.expect("message", "a broadcast").await;
        assert_eq!(m.data["data"], data);
    }
    let decoded = 3 * data.to_string().len();
    assert!(
        sse.wire_bytes < decoded / 3,
        "{} bytes on the wire for {decoded} of messages",
        sse.wire_bytes
    );
    // The stream ends with a valid gzip trailer (CRC and length).
    server
        .manager
        .disconnect(&id, switchboard::DisconnectReason::Kicked)
        .await
        .unwrap();
    assert_eq!(sse.next("the close event").await.unwrap().name, "close");
    assert!(sse.next("the end of the stream").await.is_none());
    assert!(sse.gzip_complete, "the stream ended with its gzip trailer");

    // Without Accept-Encoding, or with gzip refused, the stream is plain.
    for headers in [&[][..], &[("Accept-Encoding", "br, gzip;q=0")][..]] {
        let mut plain = Sse::open(server.addr, "/sse/room?token=pat", headers).await;
        assert!(
            !plain.headers.contains("content-encoding"),
            "{}",
            plain.headers
        );
        plain.expect("welcome", "a plain welcome").await;
    }
}

#[tokio::test]
async fn api_responses_and_metrics_are_gzipped_for_clients_that_ask() {
    let server = server(|_| {}).await;
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(connect(server.addr, &format!("lobby-{i}"), &format!("user-{i}")).await);
    }
    let gzip = [("Accept-Encoding", "gzip")];
    for path in ["/api/lobbies", "/api/stats", "/metrics"] {
        let plain = http(server.addr, "GET", path, None, None).await;
        let zipped = http_with(server.addr, "GET", path, None, None, &gzip).await;
        assert_eq!((plain.status, zipped.status), (200, 200), "{path}");
        assert_eq!(header(&plain, "content-encoding"), None, "{path}");
        assert_eq!(header(&zipped, "content-encoding"), Some("gzip"), "{path}");
        assert!(
            zipped.bytes.len() < plain.bytes.len(),
            "{path}: {} gzipped, {} plain",
            zipped.bytes.len(),
            plain.bytes.len()
        );
        if path != "/metrics" {
            // The same document either way (the stats move a little: compare the shape).
            let (a, b) = (plain.json(), zipped.json());
            assert_eq!(
                a.as_object().map(|o| o.len()),
                b.as_object().map(|o| o.len())
            );
        }
    }
    // The API's errors are JSON too, and still readable.
    let missing = http_with(server.addr, "GET", "/api/nope", None, None, &gzip).await;
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "not_found")
    );
}

#[tokio::test]
async fn with_compression_disabled_nothing_is_gzipped() {
    use common::sse::Sse;
    let server = server(|c| c.manager.compression.enabled = false).await;
    let gzip = [("Accept-Encoding", "gzip")];
    let r = http_with(server.addr, "GET", "/api/stats", None, None, &gzip).await;
    assert_eq!((r.status, header(&r, "content-encoding")), (200, None));
    let mut sse = Sse::open(server.addr, "/sse/room?token=sam", &gzip).await;
    assert!(!sse.headers.contains("content-encoding"), "{}", sse.headers);
    sse.expect("welcome", "a plain welcome").await;
}
