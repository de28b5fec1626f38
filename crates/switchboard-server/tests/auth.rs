//! Authentication: dev mode, HS256 JWT (sub, exp, lobbies claim), token expiry, origins.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = TEST_SECRET;

fn token(sub: &str, exp_in_secs: i64, lobbies: Option<&[&str]>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims = json!({"sub": sub, "exp": now + exp_in_secs});
    if let Some(l) = lobbies {
        claims["lobbies"] = json!(l);
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn jwt_server() -> switchboard_server::RunningServer {
    server(|c| c.jwt_secret = Some(switchboard_server::config::Secret(SECRET.into()))).await
}

async fn refused(addr: std::net::SocketAddr, path: &str) -> Ending {
    let ws = raw_connect(addr, path, ip(1)).await;
    Client {
        ws,
        welcome: serde_json::Value::Null,
    }
    .ending(path)
    .await
}

#[tokio::test]
async fn valid_jwt_connects_as_its_subject() {
    let server = jwt_server().await;
    let t = token("alice", 60, None);
    let ws = raw_connect(server.addr, &format!("/ws/l1?token={t}"), ip(1)).await;
    let mut c = Client {
        ws,
        welcome: serde_json::Value::Null,
    };
    let w = c.expect("welcome", "welcome for a valid JWT").await;
    assert_eq!(w["user_id"], "alice");
}

#[tokio::test]
async fn bearer_header_is_accepted() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = jwt_server().await;
    let mut req = format!("ws://{}/ws/l1", server.addr)
        .into_client_request()
        .unwrap();
    let bearer = format!("Bearer {}", token("bob", 60, None));
    req.headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let mut c = Client {
        ws,
        welcome: serde_json::Value::Null,
    };
    assert_eq!(
        c.expect("welcome", "welcome via bearer").await["user_id"],
        "bob"
    );
}

#[tokio::test]
async fn bad_tokens_close_with_4001_and_no_retry_invitation() {
    let server = jwt_server().await;
    let forged = {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({"sub": "eve", "exp": now + 60});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"wrong"),
        )
        .unwrap()
    };
    for path in [
        "/ws/l1".to_string(),
        "/ws/l1?token=alice".to_string(),
        format!("/ws/l1?token={forged}"),
        format!("/ws/l1?token={}", token("alice", -10, None)),
        format!("/ws/l2?token={}", token("alice", 60, Some(&["l1"]))),
    ] {
        refused(server.addr, &path)
            .await
            .assert(4001, "unauthorized", false);
    }
    assert_eq!(server.manager.stats().rejections["unauthorized"], 5);
    assert_eq!(server.manager.stats().total_connections, 0);
}

#[tokio::test]
async fn lobby_claim_allows_listed_lobbies() {
    let server = jwt_server().await;
    let t = token("alice", 60, Some(&["l1", "l2"]));
    let ws = raw_connect(server.addr, &format!("/ws/l2?token={t}"), ip(1)).await;
    let mut c = Client {
        ws,
        welcome: serde_json::Value::Null,
    };
    c.expect("welcome", "welcome into a listed lobby").await;
}

#[tokio::test]
async fn expired_token_closes_the_connection_with_4010() {
    let server = jwt_server().await;
    let t = token("alice", 1, None);
    let ws = raw_connect(server.addr, &format!("/ws/l1?token={t}"), ip(1)).await;
    let mut c = Client {
        ws,
        welcome: serde_json::Value::Null,
    };
    c.expect("welcome", "welcome").await;
    c.ending("the token's expiry")
        .await
        .assert(4010, "token_expired", true);
    all_clean(&server).await;
}

#[tokio::test]
async fn foreign_origins_are_refused_before_the_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = server(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    for (origin, ok) in [
        ("https://evil.example", false),
        ("https://app.example", true),
    ] {
        let mut req = format!("ws://{}/ws/l1?token=a", server.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        let result = tokio_tungstenite::connect_async(req).await;
        match (result, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => assert!(e.to_string().contains("403"), "{e}"),
            (r, _) => panic!("origin {origin}: unexpected {:?}", r.map(|_| ())),
        }
    }
}

fn signed(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn connects(addr: std::net::SocketAddr, token: &str) -> bool {
    let ws = raw_connect(addr, &format!("/ws/l1?token={token}"), ip(1)).await;
    let mut c = Client {
        ws,
        welcome: serde_json::Value::Null,
    };
    let first = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws))
        .await
        .expect("an answer to the token")
        .expect("a frame")
        .expect("no error");
    match first {
        Message::Text(t) => {
            let frame: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(frame["type"], "welcome", "{frame}");
            true
        }
        Message::Close(Some(close)) => {
            assert_eq!(
                (u16::from(close.code), close.reason.as_str()),
                (4001, "unauthorized")
            );
            false
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// `iss` and `aud` must match when configured; `nbf` in the future is refused; an `exp` no
/// clock can hold is refused, never a panic.
#[tokio::test]
async fn issuer_audience_not_before_and_absurd_expiry() {
    let server = server(|c| {
        c.jwt_secret = Some(switchboard_server::config::Secret(SECRET.into()));
        c.jwt_issuer = Some("https://auth.example".into());
        c.jwt_audience = Some("switchboard".into());
    })
    .await;
    let now = now_secs();
    let good =
        json!({"sub": "a", "exp": now + 60, "iss": "https://auth.example", "aud": "switchboard"});
    assert!(connects(server.addr, &signed(good.clone())).await);
    let with = |key: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[key] = value;
        signed(claims)
    };
    let without = |key: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(key);
        signed(claims)
    };
    for (what, token) in [
        ("another issuer", with("iss", json!("https://evil.example"))),
        ("no issuer", without("iss")),
        ("another audience", with("aud", json!(["other"]))),
        ("no audience", without("aud")),
        ("not before a minute from now", with("nbf", json!(now + 60))),
        ("exp beyond any clock", with("exp", json!(u64::MAX))),
    ] {
        assert!(!connects(server.addr, &token).await, "{what} was accepted");
    }
    assert!(
        connects(server.addr, &with("aud", json!(["other", "switchboard"]))).await,
        "an audience list that contains ours"
    );
    assert!(connects(server.addr, &with("nbf", json!(now - 1))).await);
    assert_eq!(server.manager.stats().rejections["unauthorized"], 6);
}
