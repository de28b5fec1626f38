//! The connect and join proxy against a real backend started by the test: the backend admits
//! clients by its own session cookie, refuses them (4001), or fails to decide (a timeout, a
//! 5xx, an answer it cannot use, too many calls waiting): then the client is told to retry
//! (1013 with a goodbye), never left hanging. v2 joins go through `auth.join_url` the same way.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "proxy-secret";

/// What the backend was asked: the route, the body, and whether its signature verified.
struct Asked {
    route: &'static str,
    body: Value,
    signed: bool,
}

/// A backend on 127.0.0.1:0. `/connect` decides by the `session` cookie: `good` is alice
/// (lobbies `room` and `team-*`, an hour to live), `bad` is refused, `broken` is a 500,
/// `garbage` a 200 that is not JSON, `slow` answers after 2 s, `held` waits for a permit of
/// `hold`. `/join` allows lobbies starting with `open`, fails `flaky`, refuses the rest.
async fn backend(hold: Arc<Semaphore>) -> (SocketAddr, mpsc::UnboundedReceiver<Asked>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let record = move |route: &'static str, headers: &HeaderMap, body: &Bytes| {
        let signed = verify_signature(SECRET, headers, body);
        let body: Value = serde_json::from_slice(body).unwrap();
        let _ = tx.send(Asked {
            route,
            body: body.clone(),
            signed,
        });
        body
    };
    let on_join = record.clone();
    let app = axum::Router::new()
        .route(
            "/connect",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let asked = record("connect", &headers, &body);
                let hold = hold.clone();
                async move { decide_connect(&asked, hold).await }
            }),
        )
        .route(
            "/join",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let asked = on_join("join", &headers, &body);
                async move {
                    match asked["lobby"].as_str().unwrap() {
                        l if l.starts_with("open") => StatusCode::NO_CONTENT,
                        "flaky" => StatusCode::BAD_GATEWAY,
                        _ => StatusCode::FORBIDDEN,
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

async fn decide_connect(asked: &Value, hold: Arc<Semaphore>) -> Response {
    let cookie = asked["headers"]["cookie"].as_str().unwrap_or("");
    let session = cookie
        .split("; ")
        .find_map(|c| c.strip_prefix("session="))
        .unwrap_or("");
    let an_hour = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let alice = json!({"user_id": "alice", "lobbies": ["room", "team-*"], "expires_at": an_hour});
    match session {
        "good" => Json(alice).into_response(),
        "bad" => StatusCode::UNAUTHORIZED.into_response(),
        "broken" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "garbage" => "not json".into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Json(alice).into_response()
        }
        "held" => {
            hold.acquire().await.unwrap().forget();
            Json(alice).into_response()
        }
        _ => StatusCode::FORBIDDEN.into_response(),
    }
}

/// A server whose backend at `addr` decides connects (and, with `joins`, v2 joins).
async fn proxied(
    addr: SocketAddr,
    joins: bool,
    tune: impl FnOnce(&mut switchboard_server::ServerConfig),
) -> switchboard_server::RunningServer {
    server(|c| {
        c.set("auth.connect_url", &format!("http://{addr}/connect"))
            .unwrap();
        if joins {
            c.set("auth.join_url", &format!("http://{addr}/join"))
                .unwrap();
        }
        c.set("auth.forward_headers", "Cookie, User-Agent").unwrap();
        c.set("auth.proxy_timeout_ms", "300").unwrap();
        c.set("webhook.secret", SECRET).unwrap();
        tune(c);
    })
    .await
}

/// Opens a WebSocket to `path` with a session cookie (v2 when `v2`).
async fn open(addr: SocketAddr, path: &str, session: &str, v2: bool) -> Client {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "cookie",
        format!("theme=dark; session={session}").parse().unwrap(),
    );
    headers.insert("user-agent", "proxy-test".parse().unwrap());
    headers.insert("x-not-forwarded", "secret".parse().unwrap());
    if v2 {
        headers.insert("sec-websocket-protocol", "switchboard.v2".parse().unwrap());
    }
    let (ws, _) = client_async(request, stream).await.expect("upgrade");
    Client {
        ws,
        welcome: Value::Null,
    }
}

/// `switchboard_proxy_calls_total` of connects with `outcome`, from a real scrape.
async fn proxy_calls(addr: SocketAddr, outcome: &str) -> u64 {
    let metrics = http(addr, "GET", "/metrics", None, None).await.body;
    let line = format!(r#"switchboard_proxy_calls_total{{kind="connect",outcome="{outcome}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in {metrics}"))
        .parse()
        .unwrap()
}

async fn asked(rx: &mut mpsc::UnboundedReceiver<Asked>) -> Asked {
    let asked = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(asked.signed, "every call is signed: {}", asked.body);
    asked
}

#[tokio::test]
async fn the_backend_admits_a_client_by_its_session_cookie() {
    let (addr, mut calls) = backend(Arc::new(Semaphore::new(0))).await;
    let server = proxied(addr, false, |_| {}).await;
    let mut alice = open(server.addr, "/ws/room?token=opaque", "good", false).await;
    let welcome = alice.expect("welcome", "alice admitted").await;
    assert_eq!(welcome["user_id"], "alice", "the backend named the user");
    let call = asked(&mut calls).await;
    assert_eq!(call.route, "connect");
    assert_eq!(
        call.body,
        json!({
            "transport": "websocket",
            "token": "opaque",
            "headers": {"cookie": "theme=dark; session=good", "user-agent": "proxy-test"},
            "ip": "127.0.0.1",
            "lobby": "room",
            "lobbies": [],
        }),
        "only the headers named in auth.forward_headers are sent"
    );
    let info = server.manager.user_connections("alice");
    assert!(info[0].connected_at <= SystemTime::now());

    // The backend's lobby patterns bind the connection: not `den` (4001), `team-*` on v2.
    let mut elsewhere = open(server.addr, "/ws/den", "good", false).await;
    elsewhere
        .ending("a lobby the backend does not allow")
        .await
        .assert(4001, "unauthorized", false);
    let mut v2 = open(server.addr, "/ws", "good", true).await;
    v2.expect("welcome", "v2").await;
    v2.join("team-red", 1).await;
    let refused = v2
        .refused(json!({"type": "join", "lobby": "den", "id": 2}), "den")
        .await;
    assert_eq!(refused["code"], "not_allowed");
    // SSE asks the same backend.
    let sse = http_with(
        server.addr,
        "GET",
        "/sse/den",
        None,
        None,
        &[("cookie", "session=bad")],
    )
    .await;
    assert_eq!(sse.status, 401, "{}", sse.body);
    // The recorder is process-wide: other tests' calls count too.
    assert!(proxy_calls(server.addr, "allowed").await >= 3);
    alice.close().await;
    v2.close().await;
    all_clean(&server).await;
}

#[tokio::test]
async fn the_backend_refuses_with_4001_and_no_retry() {
    let (addr, _calls) = backend(Arc::new(Semaphore::new(0))).await;
    let server = proxied(addr, false, |_| {}).await;
    for session in ["bad", "unknown"] {
        let mut client = open(server.addr, "/ws/room", session, false).await;
        client
            .ending(session)
            .await
            .assert(4001, "unauthorized", false);
    }
    assert_eq!(server.manager.stats().total_connections, 0);
}

#[tokio::test]
async fn a_backend_that_does_not_decide_invites_a_retry_never_a_hang() {
    let (addr, _calls) = backend(Arc::new(Semaphore::new(0))).await;
    let server = proxied(addr, false, |_| {}).await;
    for session in ["slow", "broken", "garbage"] {
        let started = Instant::now();
        let mut client = open(server.addr, "/ws/room", session, false).await;
        let ending = client.ending(session).await;
        ending.assert(1013, "backend_unavailable", true);
        let retry = ending.goodbye.unwrap()["retry_after_ms"].as_u64().unwrap();
        assert!((1_000..5_000).contains(&retry), "{retry}");
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{session}: decided within auth.proxy_timeout_ms, not the backend's 2 s"
        );
    }
    // A backend that is not there at all.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let server2 = proxied(gone_addr, false, |_| {}).await;
    let mut client = open(server2.addr, "/ws/room", "good", false).await;
    client
        .ending("no backend")
        .await
        .assert(1013, "backend_unavailable", true);
    let sse = http_with(server2.addr, "GET", "/sse/room", None, None, &[]).await;
    assert_eq!(sse.status, 503, "SSE: 503 with Retry-After");
    assert!(sse.headers.iter().any(|(n, _)| n == "retry-after"));
}

#[tokio::test]
async fn calls_waiting_for_the_backend_are_bounded() {
    let hold = Arc::new(Semaphore::new(0));
    let (addr, mut calls) = backend(hold.clone()).await;
    let server = proxied(addr, false, |c| {
        c.set("auth.proxy_concurrency", "1").unwrap();
        c.set("auth.proxy_timeout_ms", "3000").unwrap();
    })
    .await;
    let at = server.addr;
    // The upgrade is answered once the backend decides, so this waits inside `open`.
    let first = tokio::spawn(async move {
        let mut held = open(at, "/ws/room", "held", false).await;
        held.expect("welcome", "admitted once the backend answers")
            .await;
        held
    });
    assert_eq!(
        asked(&mut calls).await.route,
        "connect",
        "the first call waits"
    );
    let started = Instant::now();
    let mut second = open(at, "/ws/room", "good", false).await;
    second
        .ending("a connect past auth.proxy_concurrency")
        .await
        .assert(1013, "backend_unavailable", true);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not after the first call"
    );
    hold.add_permits(1);
    let held = first.await.unwrap();
    held.close().await;
    let mut third = open(at, "/ws/room", "good", false).await;
    third.expect("welcome", "the slot is free again").await;
    third.close().await;
    assert!(proxy_calls(at, "unavailable").await >= 1);
    all_clean(&server).await;
}

#[tokio::test]
async fn v2_joins_go_through_the_backend() {
    let (addr, mut calls) = backend(Arc::new(Semaphore::new(0))).await;
    let server = server(|c| {
        c.set("auth.join_url", &format!("http://{addr}/join"))
            .unwrap();
        c.set("auth.proxy_timeout_ms", "300").unwrap();
        c.set("webhook.secret", SECRET).unwrap();
    })
    .await;
    let mut bob = connect_v2(server.addr, "/ws?token=bob").await;
    bob.join("open-1", 1).await;
    let call = asked(&mut calls).await;
    assert_eq!(call.route, "join");
    assert_eq!(
        call.body,
        json!({"connection_id": bob.id(), "user_id": "bob", "ip": "127.0.0.1", "lobby": "open-1"})
    );
    let refused = bob
        .refused(
            json!({"type": "join", "lobby": "closed", "id": 2}),
            "closed",
        )
        .await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_u64()),
        (Some("not_allowed"), Some(2))
    );
    let flaky = bob
        .refused(json!({"type": "join", "lobby": "flaky", "id": 3}), "flaky")
        .await;
    assert_eq!(
        (flaky["code"].as_str(), flaky["id"].as_u64()),
        (Some("overloaded"), Some(3))
    );
    let id = bob.id().to_owned();
    let lobbies: Vec<String> = server
        .manager
        .lobbies_of(&id)
        .unwrap()
        .iter()
        .map(|l| l.as_str().to_owned())
        .collect();
    assert_eq!(lobbies, ["open-1"], "refused joins leave nothing behind");
    bob.close().await;
    all_clean(&server).await;
}
