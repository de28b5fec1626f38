//! Rate limits, client permissions, RS256 tokens and trusted proxies.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchboard::Skip;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn message_flood_gets_rate_limited_errors_then_4008() {
    let server = server(|c| {
        c.manager.rate.messages_per_sec = 1;
        c.manager.rate.burst = 3;
        c.manager.rate.max_violations = 4;
    })
    .await;
    let mut bystander = connect(server.addr, "l1", "calm").await;
    let mut flooder = connect(server.addr, "l1", "flood").await;
    bystander
        .expect("member_joined", "the flooder's join")
        .await;
    for i in 0..7 {
        flooder
            .ws
            .send(Message::text(json!({"type":"presence","id":i}).to_string()))
            .await
            .unwrap();
    }
    // The burst passes, then each refusal is an error echoing the id, then the close.
    for i in 0..3 {
        let p = flooder
            .expect("presence", "an answer within the burst")
            .await;
        assert_eq!(p["type"], "presence", "{i}");
    }
    // Refused before the frame is parsed: no `id` to echo.
    for i in 3..7 {
        let e = flooder.expect("error", "a rate_limited error").await;
        assert_eq!(
            (e["code"].as_str(), e.get("id")),
            (Some("rate_limited"), None),
            "{i}"
        );
    }
    flooder
        .ending("the rate-limit close")
        .await
        .assert(4008, "rate_limited", true);
    bystander.expect("member_left", "the flooder's leave").await;
    bystander.send(json!({"type":"presence"})).await;
    bystander
        .expect("presence", "the bystander is unaffected")
        .await;
}

/// Reads until the next `health_ping`; returns its timestamp.
async fn next_health_ping(c: &mut Client) -> u64 {
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a health_ping in time")
            .expect("the stream goes on")
            .expect("no error");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "health_ping" {
                return v["timestamp"].as_u64().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn health_pongs_that_echo_no_ping_are_rate_limited() {
    let server = server(|c| {
        c.manager.rate.messages_per_sec = 1;
        c.manager.rate.burst = 1;
        c.manager.rate.max_violations = 2;
    })
    .await;
    let mut c = connect(server.addr, "l1", "a").await;
    for _ in 0..20 {
        c.send(json!({"type":"health_pong","timestamp":1})).await;
    }
    // One pong within the budget, then two refusals close the connection.
    for _ in 0..2 {
        let e = c.expect("error", "a rate_limited error").await;
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert_eq!(e.get("id"), None, "refused before parsing: no id");
    }
    c.ending("the rate-limit close")
        .await
        .assert(4008, "rate_limited", true);
}

#[tokio::test]
async fn the_first_echo_of_the_last_health_ping_is_free_and_measures_the_round_trip() {
    let server = server(|c| {
        c.manager.rate.messages_per_sec = 1;
        c.manager.rate.burst = 1;
        c.manager.rate.max_violations = 2;
        c.manager.ping_interval = Duration::from_secs(1);
    })
    .await;
    // Pings come every second: `expect` skips them, so the whole exchange has a deadline.
    let exchange = async {
        let mut c = connect(server.addr, "l1", "a").await;
        let id = c.id().to_owned();
        let ts = next_health_ping(&mut c).await;
        // The budget is spent on `presence`; the echo is free; a second echo is not.
        c.send(json!({"type":"presence"})).await;
        c.send(json!({"type":"health_pong","timestamp":ts})).await;
        c.send(json!({"type":"health_pong","timestamp":ts})).await;
        c.expect("presence", "the answer within the budget").await;
        let e = c.expect("error", "the second echo refused").await;
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert!(
            server.manager.latency(&id).is_some(),
            "the free echo measured a round trip"
        );
        c.send(json!({"type":"broadcast","data":"after","id":"last"}))
            .await;
        let e = c.expect("error", "one refusal more, the second").await;
        assert_eq!(e["code"], "rate_limited", "{e}");
        c.ending("two refusals close")
            .await
            .assert(4008, "rate_limited", true);
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the exchange within 20 s");
}

#[tokio::test]
async fn only_the_echo_of_the_last_ping_measures_a_round_trip() {
    let server = server(|_| {}).await;
    let mut c = connect(server.addr, "l1", "a").await;
    let id = c.id().to_owned();
    let five_s_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 5_000;
    c.send(json!({"type":"health_pong","timestamp":five_s_ago}))
        .await;
    c.ws.send(Message::Pong(vec![0, 0, 0, 0, 0, 0, 0, 1].into()))
        .await
        .unwrap();
    // Frames are handled in order: once `presence` is answered, both pongs were seen.
    c.send(json!({"type":"presence"})).await;
    c.expect("presence", "the answer after the pongs").await;
    assert_eq!(
        server.manager.latency(&id),
        None,
        "a pong that echoes no ping of ours is no round trip"
    );
}

#[tokio::test]
async fn websocket_pings_and_pongs_count_against_the_rate() {
    let server = server(|c| {
        c.manager.rate.messages_per_sec = 1;
        c.manager.rate.burst = 1;
        c.manager.rate.max_violations = 3;
    })
    .await;
    for frame in [Message::Ping, Message::Pong] {
        let mut c = connect(server.addr, "l1", "a").await;
        for _ in 0..10 {
            c.ws.send(frame(b"flood".to_vec().into())).await.unwrap();
        }
        // Over the budget control frames are dropped unanswered; the third refusal closes.
        c.ending_skipping_data("the close after a control-frame flood")
            .await
            .assert(4008, "rate_limited", true);
    }
}

#[tokio::test]
async fn violations_count_in_a_window_even_between_allowed_frames() {
    let server = server(|c| {
        c.manager.rate.messages_per_sec = 5;
        c.manager.rate.burst = 1;
        c.manager.rate.max_violations = 3;
    })
    .await;
    let mut c = connect(server.addr, "l1", "a").await;
    for round in 0..3 {
        // One allowed frame, then one refused: never two refusals in a row.
        c.send(json!({"type":"presence"})).await;
        c.send(json!({"type":"presence"})).await;
        c.expect("presence", "the allowed frame").await;
        let e = c.expect("error", "the refused frame").await;
        assert_eq!(e["code"], "rate_limited", "round {round}: {e}");
        if round < 2 {
            // Pacing, not synchronisation: the bucket refills one token in 200 ms.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    c.ending("three refusals within the window close")
        .await
        .assert(4008, "rate_limited", true);
}

#[tokio::test]
async fn connects_per_ip_are_rate_limited() {
    let server = server(|c| c.manager.rate.connects_per_ip_per_sec = 3).await;
    let mut ok = Vec::new();
    for i in 0..3 {
        ok.push(connect_from(server.addr, &format!("l{i}"), &format!("u{i}"), ip(20)).await);
    }
    connect_refused(server.addr, "l9", "u9", ip(20))
        .await
        .assert(4008, "rate_limited", true);
    // Another IP is not affected.
    connect_from(server.addr, "l9", "u9", ip(21)).await;
    assert_eq!(server.manager.stats().rejections["rate_limited"], 1);
}

#[tokio::test]
async fn client_permissions() {
    let server = server(|c| {
        c.manager.client.allow_broadcast = false;
        c.manager.client.allow_direct = false;
    })
    .await;
    let mut a = connect(server.addr, "l1", "a").await;
    a.send(json!({"type":"broadcast","data":1,"id":"b1"})).await;
    let e = a.expect("error", "broadcast refused").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("not_allowed"), Some("b1"))
    );
    a.send(json!({"type":"direct","to":"a","data":1,"id":"d1"}))
        .await;
    let e = a.expect("error", "direct refused").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("not_allowed"), Some("d1"))
    );
    // The backend still publishes.
    server
        .manager
        .broadcast("l1", &json!("from backend"), Skip::Nobody)
        .unwrap();
    assert_eq!(
        a.expect("message", "backend broadcast").await["from"],
        json!(null)
    );
}

fn rs256_token(sub: &str, lobbies: Option<&[&str]>) -> String {
    let pem = include_bytes!("fixtures/rs256-private.pem");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let mut claims = json!({"sub": sub, "exp": exp});
    if let Some(l) = lobbies {
        claims["lobbies"] = json!(l);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

#[tokio::test]
async fn rs256_tokens_with_a_lobby_claim() {
    let key_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rs256-public.pem"
    );
    let server = server(|c| c.jwt_public_key_file = Some(key_file.into())).await;
    let t = rs256_token("rita", Some(&["allowed"]));
    let ws = raw_connect(server.addr, &format!("/ws/allowed?token={t}"), ip(1)).await;
    let mut c = Client {
        ws,
        welcome: serde_json::Value::Null,
    };
    assert_eq!(
        c.expect("welcome", "RS256 welcome").await["user_id"],
        "rita"
    );
    let ws = raw_connect(server.addr, &format!("/ws/other?token={t}"), ip(1)).await;
    let mut c = Client {
        ws,
        welcome: serde_json::Value::Null,
    };
    c.ending("a lobby outside the claim")
        .await
        .assert(4001, "unauthorized", false);
    // An HS256 token (signed with the public key as a secret: the classic confusion) fails.
    let pem = include_bytes!("fixtures/rs256-public.pem");
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"eve","exp":exp}),
        &jsonwebtoken::EncodingKey::from_secret(pem),
    )
    .unwrap();
    let ws = raw_connect(server.addr, &format!("/ws/allowed?token={forged}"), ip(1)).await;
    let mut c = Client {
        ws,
        welcome: serde_json::Value::Null,
    };
    c.ending("an algorithm-confusion token")
        .await
        .assert(4001, "unauthorized", false);
}

async fn connect_with_forwarded(addr: std::net::SocketAddr, user: &str, forwarded: &str) -> Client {
    let mut c = upgrade_with_forwarded(addr, user, forwarded).await;
    c.welcome = c.expect("welcome", "welcome behind a proxy").await;
    c
}

/// An upgrade through a proxy that sent `X-Forwarded-For: forwarded`; the welcome (or the
/// refusal) is still to be read.
async fn upgrade_with_forwarded(addr: std::net::SocketAddr, user: &str, forwarded: &str) -> Client {
    let mut req = format!("ws://{addr}/ws/l1?token={user}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", forwarded.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    Client {
        ws,
        welcome: serde_json::Value::Null,
    }
}

/// Behind the documented nginx setup (which appends the address it saw), a client that
/// writes its own `X-Forwarded-For` with an entry that does not parse is still counted by its
/// real address: it neither escapes `max_per_ip` nor locks out the address it names.
#[tokio::test]
async fn a_forged_forwarded_list_neither_escapes_the_ip_limit_nor_frames_a_victim() {
    let server = server(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.manager.limits.max_per_ip = 1;
    })
    .await;
    let attacker = "198.51.100.1";
    let first = connect_with_forwarded(server.addr, "a1", &format!("6.6.6.6, x, {attacker}")).await;
    let ip_of = |c: &Client| server.manager.connection(c.id()).unwrap().ip.to_string();
    assert_eq!(ip_of(&first), attacker);
    let mut second =
        upgrade_with_forwarded(server.addr, "a2", &format!("7.7.7.7, junk, {attacker}")).await;
    second
        .ending("the attacker's second connection")
        .await
        .assert(4002, "ip_limit", true);
    // The address the attacker named is not locked out.
    let victim = connect_with_forwarded(server.addr, "v", "6.6.6.6").await;
    assert_eq!(ip_of(&victim), "6.6.6.6");
}

/// IPv6 clients count per /64 (`limits.ipv6_prefix`); IPv4-mapped addresses as IPv4.
#[tokio::test]
async fn ipv6_clients_count_per_network() {
    let server = server(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.manager.limits.max_per_ip = 2;
    })
    .await;
    let _a = connect_with_forwarded(server.addr, "a", "2001:db8:1:2::1").await;
    let _b = connect_with_forwarded(server.addr, "b", "[2001:db8:1:2:ffff::2]:443").await;
    let mut c = upgrade_with_forwarded(server.addr, "c", "2001:db8:1:2:abcd::3").await;
    c.ending("a third address of the same /64")
        .await
        .assert(4002, "ip_limit", true);
    let _d = connect_with_forwarded(server.addr, "d", "2001:db8:1:3::1").await;
    let e = connect_with_forwarded(server.addr, "e", "::ffff:203.0.113.5").await;
    assert_eq!(
        server.manager.connection(e.id()).unwrap().ip.to_string(),
        "203.0.113.5"
    );
    let _f = connect_with_forwarded(server.addr, "f", "203.0.113.5").await;
    let mut g = upgrade_with_forwarded(server.addr, "g", "203.0.113.5").await;
    g.ending("a third connection from the mapped address")
        .await
        .assert(4002, "ip_limit", true);
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let trusted = server(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.manager.limits.max_per_ip = 1;
    })
    .await;
    let a = connect_with_forwarded(trusted.addr, "a", "203.0.113.7").await;
    let b = connect_with_forwarded(trusted.addr, "b", "203.0.113.8").await;
    let ip_of = |c: &Client| trusted.manager.connection(c.id()).unwrap().ip.to_string();
    assert_eq!(
        (ip_of(&a), ip_of(&b)),
        ("203.0.113.7".into(), "203.0.113.8".into())
    );
    // Untrusted peer: the header is ignored, the socket's address counts.
    let untrusted = server(|c| c.manager.limits.max_per_ip = 10).await;
    let c = connect_with_forwarded(untrusted.addr, "c", "203.0.113.9").await;
    assert_eq!(
        untrusted.manager.connection(c.id()).unwrap().ip.to_string(),
        "127.0.0.1"
    );
}
