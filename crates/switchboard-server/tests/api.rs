//! The HTTP API for backends, against the real `switchboard` process: every endpoint, the key,
//! and bad requests.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::{Value, json};

const KEY: &str = "test-api-key";

async fn api_server() -> Process {
    Process::start(
        &[
            ("SWITCHBOARD_API__KEY", KEY),
            ("SWITCHBOARD_USER_POLICY", "multi"),
            ("SWITCHBOARD_RATE__CONNECTS_PER_IP_PER_SEC", "0"),
        ],
        None,
    )
}

impl ApiAddr for Process {
    fn api_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

trait ApiAddr {
    fn api_addr(&self) -> std::net::SocketAddr;
}

#[tokio::test]
async fn the_key_is_required_and_checked() {
    let server = api_server().await;
    let a = server.api_addr();
    let missing = http(a, "GET", "/api/stats", None, None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code(), "unauthorized");
    assert!(
        missing
            .headers
            .iter()
            .any(|(n, v)| n == "www-authenticate" && v == "Bearer")
    );
    let wrong = http(a, "GET", "/api/stats", Some("test-api-kez"), None).await;
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (401, "unauthorized")
    );
    let short = http(a, "GET", "/api/stats", Some("t"), None).await;
    assert_eq!(short.status, 401);
    assert_eq!(
        http(a, "GET", "/api/stats", Some(KEY), None).await.status,
        200
    );
    let unknown = http(a, "GET", "/api/nope", Some(KEY), None).await;
    assert_eq!(
        (unknown.status, unknown.error_code().as_str()),
        (404, "not_found")
    );
}

#[tokio::test]
async fn without_a_key_the_api_is_off_unless_dev_mode() {
    // JWT mode, no key: off.
    let jwt = Process::start(&[("SWITCHBOARD_AUTH__JWT_SECRET", TEST_SECRET)], None);
    let r = http(jwt.addr, "GET", "/api/stats", None, None).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "api_disabled"));
    // Dev mode (loopback), no key: open.
    let dev = Process::start(&[], None);
    assert_eq!(
        http(dev.addr, "GET", "/api/stats", None, None).await.status,
        200
    );
}

#[tokio::test]
async fn publish_to_a_lobby_with_and_without_exclusion() {
    let server = api_server().await;
    let mut alice = connect(server.addr, "room", "alice").await;
    let mut bob = connect(server.addr, "room", "bob").await;
    alice.expect("member_joined", "bob's join").await;
    let body = r#"{"data":{"n":1},"exclude_user":"alice"}"#;
    let r = http(
        server.api_addr(),
        "POST",
        "/api/lobbies/room/broadcast",
        Some(KEY),
        Some(body),
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"delivered": 1})));
    let m = bob.expect("message", "the API broadcast").await;
    assert_eq!(
        m,
        json!({"type":"message","lobby":"room","from":null,"data":{"n":1},"offset":1})
    );
    let r = http(
        server.api_addr(),
        "POST",
        "/api/lobbies/room/broadcast",
        Some(KEY),
        Some(r#"{"data":"all"}"#),
    )
    .await;
    assert_eq!(r.json(), json!({"delivered": 2}));
    assert_eq!(
        alice.expect("message", "the second broadcast").await["data"],
        "all"
    );
    let empty = http(
        server.api_addr(),
        "POST",
        "/api/lobbies/nobody/broadcast",
        Some(KEY),
        Some(r#"{"data":1}"#),
    )
    .await;
    assert_eq!((empty.status, empty.json()), (200, json!({"delivered": 0})));
}

#[tokio::test]
async fn bad_requests_get_stable_error_codes_and_change_nothing() {
    let server = api_server().await;
    let mut alice = connect(server.addr, "room", "alice").await;
    let a = server.api_addr();
    for (method, path, body, status, code) in [
        (
            "POST",
            "/api/lobbies/bad%20lobby/broadcast",
            r#"{"data":1}"#,
            400,
            "invalid_lobby",
        ),
        (
            "POST",
            "/api/lobbies/room/broadcast",
            r#"{"nodata":1}"#,
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/lobbies/room/broadcast",
            "{not json",
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/lobbies/room/broadcast",
            r#"{"data":1,"exclude_user":""}"#,
            400,
            "invalid_user",
        ),
        ("POST", "/api/users/alice/send", "[]", 400, "invalid_body"),
        (
            "GET",
            "/api/lobbies/bad%20lobby/presence",
            "",
            400,
            "invalid_lobby",
        ),
        ("DELETE", "/api/connections/nope-1", "", 404, "not_found"),
    ] {
        let r = http(a, method, path, Some(KEY), Some(body)).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{method} {path} {body}"
        );
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Nothing was delivered: the next frame alice sees is her own presence answer.
    alice.send(json!({"type": "presence"})).await;
    alice.expect("presence", "no stray message").await;
}

#[tokio::test]
async fn send_to_a_user_reaches_every_connection() {
    let server = api_server().await;
    let mut t1 = connect(server.addr, "a", "carol").await;
    let mut t2 = connect(server.addr, "b", "carol").await;
    let r = http(
        server.api_addr(),
        "POST",
        "/api/users/carol/send",
        Some(KEY),
        Some(r#"{"data":{"x":true}}"#),
    )
    .await;
    assert_eq!(r.json(), json!({"delivered": 2}));
    for t in [&mut t1, &mut t2] {
        let d = t.expect("direct", "the API send").await;
        assert_eq!(d, json!({"type":"direct","from":null,"data":{"x":true}}));
    }
    let nobody = http(
        server.api_addr(),
        "POST",
        "/api/users/nobody/send",
        Some(KEY),
        Some(r#"{"data":1}"#),
    )
    .await;
    assert_eq!(
        (nobody.status, nobody.json()),
        (200, json!({"delivered": 0}))
    );
}

#[tokio::test]
async fn send_to_one_connection_reaches_only_it() {
    let server = api_server().await;
    let mut t1 = connect(server.addr, "a", "carol").await;
    let mut t2 = connect(server.addr, "a", "carol").await;
    let path = format!("/api/connections/{}/send", t1.id());
    let r = http(
        server.api_addr(),
        "POST",
        &path,
        Some(KEY),
        Some(r#"{"data":[1]}"#),
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"delivered": 1})));
    let d = t1.expect("direct", "the API send").await;
    assert_eq!(d, json!({"type":"direct","from":null,"data":[1]}));
    // t2 got nothing: the next thing it sees is what is sent to it now.
    let path2 = format!("/api/connections/{}/send", t2.id());
    http(
        server.api_addr(),
        "POST",
        &path2,
        Some(KEY),
        Some(r#"{"data":2}"#),
    )
    .await;
    assert_eq!(t2.expect("direct", "its own").await["data"], 2);
    for (id, body, status, code) in [
        ("nope-1", r#"{"data":1}"#, 404, "not_found"),
        ("garbage", r#"{"data":1}"#, 404, "not_found"),
        (t1.id(), r#"{"nodata":1}"#, 400, "invalid_body"),
    ] {
        let path = format!("/api/connections/{id}/send");
        let r = http(server.api_addr(), "POST", &path, Some(KEY), Some(body)).await;
        assert_eq!(
            (r.status, r.error_code()),
            (status, code.to_owned()),
            "{id} {body}"
        );
    }
    let unauthorized = http(
        server.api_addr(),
        "POST",
        &path,
        None,
        Some(r#"{"data":1}"#),
    )
    .await;
    assert_eq!(unauthorized.status, 401);
}

/// `GET /api/history`: one sample a second of every series the dashboard draws, each series
/// as long as the list of times, closes per second by reason.
#[tokio::test]
async fn history_samples_every_second() {
    let server = api_server().await;
    let history = || http(server.api_addr(), "GET", "/api/history", Some(KEY), None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The first sample is the baseline of the rates: what happens after it shows as a rate.
    while history().await.json()["t"].as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no sample at all");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _alice = connect(server.addr, "h", "alice").await;
    let bob = connect(server.addr, "h", "bob").await;
    bob.close().await;
    let history = loop {
        let h = history().await.json();
        let closed: f64 = h["closes_per_s"]["client_closed"]
            .as_array()
            .map_or(0.0, |v| v.iter().filter_map(Value::as_f64).sum());
        let now = h["series"]["connections"]
            .as_array()
            .and_then(|c| c.last().cloned());
        if closed > 0.0 && now == Some(json!(1.0)) {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sample saw bob leave: {h}"
        );
        // Samples come once a second; nothing to await but the next one.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(history["interval_ms"], 1000);
    let samples = history["t"].as_array().unwrap().len();
    assert!(samples >= 1);
    for name in [
        "connections",
        "connects_per_s",
        "messages_out_per_s",
        "rtt_p99_ms",
    ] {
        let series = history["series"][name].as_array().unwrap();
        assert_eq!(series.len(), samples, "{name}");
    }
    assert!(
        history["series"].get("redis_up").is_none(),
        "cluster mode only"
    );
    let denied = http(server.api_addr(), "GET", "/api/history", None, None).await;
    assert_eq!(denied.status, 401);
}

/// `GET /api/users/{user}`: the user's connections on this node, as the dashboard's search
/// shows them.
#[tokio::test]
async fn a_users_connections_with_their_lobbies_and_round_trip() {
    let server = api_server().await;
    let t1 = connect(server.addr, "u1", "uma").await;
    let _t2 = connect(server.addr, "u2", "uma").await;
    let u = http(server.api_addr(), "GET", "/api/users/uma", Some(KEY), None)
        .await
        .json();
    assert_eq!(u["user_id"], "uma");
    let connections = u["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 2);
    let first = connections.iter().find(|c| c["id"] == t1.id()).unwrap();
    assert_eq!(first["lobbies"], json!(["u1"]));
    assert_eq!(first["ip"], "127.0.0.1");
    assert_eq!(first["transport"], "websocket");
    assert_eq!(
        first["queued"], 0,
        "a client that reads has nothing waiting"
    );
    assert!(first.get("rtt_ms").is_some(), "null until the first pong");
    // An SSE connection says so.
    let mut sse = common::sse::Sse::open(server.addr, "/sse/u3?token=uma", &[]).await;
    let welcome = sse.expect("welcome", "the SSE welcome").await;
    let id = welcome.data["connection_id"].as_str().unwrap().to_owned();
    let path = format!("/api/connections/{id}");
    let c = http(server.api_addr(), "GET", &path, Some(KEY), None)
        .await
        .json();
    assert_eq!(c["transport"], "sse");
    let nobody = http(
        server.api_addr(),
        "GET",
        "/api/users/nobody",
        Some(KEY),
        None,
    )
    .await
    .json();
    assert_eq!(nobody["connections"], json!([]));
}

#[tokio::test]
async fn lobbies_presence_and_stats() {
    let server = api_server().await;
    let _a1 = connect(server.addr, "l1", "alice").await;
    let _a2 = connect(server.addr, "l1", "alice").await;
    let _b = connect(server.addr, "l2", "bob").await;
    let a = server.api_addr();
    let lobbies = http(a, "GET", "/api/lobbies", Some(KEY), None).await.json();
    assert_eq!(
        lobbies,
        json!([{"lobby":"l1","connections":2,"users":1},{"lobby":"l2","connections":1,"users":1}])
    );
    let p = http(a, "GET", "/api/lobbies/l1/presence", Some(KEY), None)
        .await
        .json();
    assert_eq!(p, json!({"lobby":"l1","users":["alice"]}));
    let empty = http(a, "GET", "/api/lobbies/zzz/presence", Some(KEY), None)
        .await
        .json();
    assert_eq!(empty, json!({"lobby":"zzz","users":[]}));
    let stats = http(a, "GET", "/api/stats", Some(KEY), None).await.json();
    assert_eq!(stats["total_connections"], 3);
    assert_eq!(stats["max_connections"], 10_000);
    assert_eq!(stats["capacity_percent"], 0.03);
    assert_eq!(stats["active_lobbies"], 2);
    assert_eq!(stats["users"], 2);
    for field in [
        "messages_in",
        "messages_out",
        "rejections",
        "stale_closed",
        "uptime_seconds",
        "node_id",
    ] {
        assert!(stats.get(field).is_some(), "stats lacks {field}: {stats}");
    }
}

#[tokio::test]
async fn kick_a_user_or_one_connection() {
    let server = api_server().await;
    let mut a1 = connect(server.addr, "l1", "alice").await;
    let mut a2 = connect(server.addr, "l2", "alice").await;
    let mut b = connect(server.addr, "l3", "bob").await;
    let a = server.api_addr();
    let r = http(a, "DELETE", "/api/users/alice", Some(KEY), None).await;
    assert_eq!(r.json(), json!({"closed": 2}));
    a1.ending("kick of alice's first tab")
        .await
        .assert(4009, "kicked", false);
    a2.ending("kick of alice's second tab")
        .await
        .assert(4009, "kicked", false);
    let none = http(a, "DELETE", "/api/users/alice", Some(KEY), None).await;
    assert_eq!((none.status, none.json()), (200, json!({"closed": 0})));
    let path = format!("/api/connections/{}", b.id());
    let r = http(a, "DELETE", &path, Some(KEY), None).await;
    assert_eq!((r.status, r.json()), (200, json!({"closed": 1})));
    b.ending("kick of bob's connection")
        .await
        .assert(4009, "kicked", false);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = http(a, "GET", "/api/stats", Some(KEY), None).await.json();
        if [&s["total_connections"], &s["active_lobbies"], &s["users"]] == [&json!(0); 3] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stats never reached zero: {s}"
        );
    }
}

#[tokio::test]
async fn openapi_document_lists_every_path() {
    let server = api_server().await;
    let doc = http(
        server.api_addr(),
        "GET",
        "/api/openapi.json",
        Some(KEY),
        None,
    )
    .await
    .json();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    for path in [
        "/api/lobbies/{lobby}/broadcast",
        "/api/users/{user}/send",
        "/api/lobbies",
        "/api/lobbies/{lobby}/presence",
        "/api/users/{user}",
        "/api/connections/{id}",
        "/api/connections/{id}/send",
        "/api/history",
        "/api/users/{user}/lobbies/{lobby}",
        "/api/stats",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}
