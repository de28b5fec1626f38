//! Cluster mode: real `redis-server` processes and several real `switchboard` processes.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::tls::tls_files;
use common::*;
use serde_json::{Value, json};

const HEARTBEAT_MS: u64 = 100;
const NODE_TTL_MS: u64 = 600;

fn node(redis: &Redis, id: &str, extra: &[(&str, &str)]) -> Process {
    let url = redis.url();
    let hb = HEARTBEAT_MS.to_string();
    let ttl = NODE_TTL_MS.to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("SWITCHBOARD_REDIS__URL", &url),
        ("SWITCHBOARD_REDIS__NODE_ID", id),
        ("SWITCHBOARD_REDIS__HEARTBEAT_MS", &hb),
        ("SWITCHBOARD_REDIS__NODE_TTL_MS", &ttl),
        ("SWITCHBOARD_RATE__CONNECTS_PER_IP_PER_SEC", "0"),
        ("SWITCHBOARD_RATE__MESSAGES_PER_SEC", "0"),
    ];
    env.extend_from_slice(extra);
    Process::start(&env, None)
}

async fn api(addr: SocketAddr, method: &str, path: &str) -> Value {
    let r = http(addr, method, path, None, None).await;
    assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    r.json()
}

async fn eventually_json(
    what: &str,
    addr: SocketAddr,
    path: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = api(addr, "GET", path).await;
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: last {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn broadcasts_and_directs_cross_nodes_exactly_once() {
    let redis = Redis::start();
    let a = node(&redis, "na", &[("SWITCHBOARD_USER_POLICY", "multi")]);
    let b = node(&redis, "nb", &[("SWITCHBOARD_USER_POLICY", "multi")]);
    let mut alice = connect(a.addr, "room", "alice").await;
    let mut bob = connect(b.addr, "room", "bob").await;
    let j = alice
        .expect("member_joined", "bob's join seen on the other node")
        .await;
    assert_eq!(j["user_id"], "bob");
    for i in 0..50 {
        bob.send(json!({"type": "broadcast", "data": i})).await;
    }
    for i in 0..50 {
        assert_eq!(
            alice.expect("message", "bob's broadcasts, in order").await["data"],
            i
        );
        assert_eq!(
            bob.expect("message", "bob's own broadcasts").await["data"],
            i
        );
    }
    // Exactly once: the next frame either sees is the answer to a presence request.
    for c in [&mut alice, &mut bob] {
        c.send(json!({"type": "presence"})).await;
        let p = c
            .expect(
                "presence",
                "no duplicate delivery before the presence answer",
            )
            .await;
        assert_eq!(p["users"], json!(["alice", "bob"]), "cluster-wide presence");
    }
    // A user with tabs on both nodes gets a direct message on each, once.
    let mut carol_a = connect(a.addr, "other", "carol").await;
    let mut carol_b = connect(b.addr, "other2", "carol").await;
    alice
        .send(json!({"type": "direct", "to": "carol", "data": "psst"}))
        .await;
    for tab in [&mut carol_a, &mut carol_b] {
        let d = tab.expect("direct", "alice's direct").await;
        assert_eq!(
            (d["from"].as_str(), d["data"].as_str()),
            (Some("alice"), Some("psst"))
        );
    }
    // The backend's broadcast through node B reaches node A's members too.
    let r = http(
        b.addr,
        "POST",
        "/api/lobbies/room/broadcast",
        None,
        Some(r#"{"data":"api"}"#),
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"delivered": 1}),
        "one member on node B itself"
    );
    assert_eq!(
        alice
            .expect("message", "API broadcast via the other node")
            .await["data"],
        "api"
    );
    for tab in [&mut carol_a, &mut carol_b] {
        tab.send(json!({"type": "presence"})).await;
        let p = tab.expect("presence", "no stray frames for carol").await;
        assert_eq!(p["type"], "presence");
    }
}

#[tokio::test]
async fn presence_is_per_user_across_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "pa", &[("SWITCHBOARD_USER_POLICY", "multi")]);
    let b = node(&redis, "pb", &[("SWITCHBOARD_USER_POLICY", "multi")]);
    let mut watcher = connect(a.addr, "room", "watcher").await;
    let tab1 = connect(a.addr, "room", "dana").await;
    watcher.expect("member_joined", "dana's first tab").await;
    let tab2 = connect(b.addr, "room", "dana").await;
    let p = api(b.addr, "GET", "/api/lobbies/room/presence").await;
    assert_eq!(p["users"], json!(["dana", "watcher"]), "dana listed once");
    let lobbies = api(a.addr, "GET", "/api/lobbies").await;
    assert_eq!(
        lobbies,
        json!([{"lobby": "room", "connections": 3, "users": 2}])
    );
    tab1.close().await;
    eventually_json("tab1 is released", a.addr, "/api/lobbies", |v| {
        v[0]["connections"] == 3 - 1
    })
    .await;
    watcher.send(json!({"type": "presence"})).await;
    let p = watcher
        .expect("presence", "no leave while a tab remains on the other node")
        .await;
    assert_eq!(p["users"], json!(["dana", "watcher"]));
    tab2.close().await;
    let left = watcher
        .expect("member_left", "dana's last tab, on the other node")
        .await;
    assert_eq!(left["user_id"], "dana");
    let stats = api(a.addr, "GET", "/api/stats").await;
    assert_eq!(stats["redis"], "up");
    assert_eq!(stats["cluster"]["nodes"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_cluster_wide_under_a_burst() {
    let redis = Redis::start();
    let limits = [
        ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "10"),
        ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "16"),
        ("SWITCHBOARD_LIMITS__MAX_PER_IP", "1000"),
    ];
    let nodes = [
        node(&redis, "la", &limits),
        node(&redis, "lb", &limits),
        node(&redis, "lc", &limits),
    ];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut tasks = Vec::new();
    for i in 0..45usize {
        let addr = addrs[i % 3];
        let lobby = if i % 2 == 0 { "even" } else { "odd" };
        tasks.push(tokio::spawn(async move {
            let ws = raw_connect(addr, &format!("/ws/{lobby}?token=u{i}"), ip(1)).await;
            let mut c = Client {
                ws,
                welcome: Value::Null,
            };
            let first = c.next_json("welcome or goodbye").await;
            (first, c)
        }));
    }
    let mut kept = Vec::new();
    let mut welcomed = 0;
    for t in tasks {
        let (first, c) = t.await.unwrap();
        if first["type"] == "welcome" {
            welcomed += 1;
        } else {
            assert!(
                matches!(first["reason"].as_str(), Some("lobby_full" | "server_full")),
                "{first}"
            );
        }
        kept.push(c);
    }
    assert_eq!(welcomed, 16, "the global cap of 16 across three nodes");
    let lobbies = api(addrs[0], "GET", "/api/lobbies").await;
    for l in lobbies.as_array().unwrap() {
        assert!(l["connections"].as_u64().unwrap() <= 10, "{lobbies}");
    }
    let stats = api(addrs[1], "GET", "/api/stats").await;
    assert_eq!(stats["cluster"]["total_connections"], 16);
    drop(kept);
    eventually_json(
        "every reservation is released",
        addrs[2],
        "/api/stats",
        |v| {
            v["cluster"]["total_connections"] == 0
                && v["cluster"]["users"] == 0
                && v["cluster"]["active_lobbies"] == 0
        },
    )
    .await;
}

#[tokio::test]
async fn replace_closes_the_older_connection_on_another_node() {
    let redis = Redis::start();
    let a = node(&redis, "ra", &[]);
    let b = node(&redis, "rb", &[]);
    let mut watcher = connect(a.addr, "room", "watcher").await;
    let mut old = connect(a.addr, "room", "erin").await;
    watcher.expect("member_joined", "erin's join").await;
    let mut new = connect(b.addr, "room", "erin").await;
    old.ending("the replaced connection on the other node")
        .await
        .assert(4003, "replaced", false);
    new.send(json!({"type": "broadcast", "data": "still here"}))
        .await;
    let m = watcher
        .expect("message", "no leave/join pair before erin's message")
        .await;
    assert_eq!(m["data"], "still here");
    let p = api(a.addr, "GET", "/api/lobbies/room/presence").await;
    assert_eq!(p["users"], json!(["erin", "watcher"]));
}

#[tokio::test]
async fn kicks_and_directs_reach_any_node_through_the_api() {
    let redis = Redis::start();
    let a = node(&redis, "ka", &[]);
    let b = node(&redis, "kb", &[]);
    // Redis's counters are exported at zero from the start, so an alert on them works early.
    for name in [
        "switchboard_redis_errors_total",
        "switchboard_redis_overloaded_total",
        "switchboard_redis_publish_dropped_total",
    ] {
        assert_eq!(redis_counter(a.addr, name).await, 0, "{name}");
    }
    let mut far = connect(b.addr, "room", "frank").await;
    let id = far.id().to_owned();
    // A direct to one connection reaches it on its node, too.
    let path = format!("/api/connections/{id}/send");
    let r = http(a.addr, "POST", &path, None, Some(r#"{"data":"psst"}"#)).await;
    assert_eq!((r.status, r.json()), (200, json!({"delivered": 1})));
    let d = far.expect("direct", "a direct routed to its node").await;
    assert_eq!(d, json!({"type": "direct", "from": null, "data": "psst"}));
    let gone = http(
        a.addr,
        "POST",
        "/api/connections/kb-999/send",
        None,
        Some("{\"data\":1}"),
    )
    .await;
    assert_eq!(gone.status, 404);
    let r = http(
        a.addr,
        "DELETE",
        &format!("/api/connections/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"closed": 1})));
    far.ending("a kick routed to its node")
        .await
        .assert(4009, "kicked", false);
    let missing = http(a.addr, "DELETE", "/api/connections/kb-999", None, None).await;
    assert_eq!(missing.status, 404);
    let mut g = connect(b.addr, "room", "gina").await;
    let r = api(a.addr, "DELETE", "/api/users/gina").await;
    assert_eq!(r, json!({"closed": 1}));
    g.ending_skipping_data("a user kick routed to the other node")
        .await
        .assert(4009, "kicked", false);
}

#[tokio::test]
async fn a_killed_node_leaves_the_cluster_within_the_ttl() {
    let redis = Redis::start();
    let a = node(&redis, "da", &[]);
    let mut b = node(&redis, "db", &[]);
    let mut watcher = connect(a.addr, "room", "watcher").await;
    let _doomed = connect(b.addr, "room", "hank").await;
    watcher.expect("member_joined", "hank's join").await;
    b.signal("KILL");
    b.wait(WAIT).await;
    let killed = Instant::now();
    let left = watcher
        .expect("member_left", "hank gone with his node")
        .await;
    assert_eq!(left["user_id"], "hank");
    let elapsed = killed.elapsed();
    let bound = Duration::from_millis(NODE_TTL_MS + 2 * HEARTBEAT_MS + 500);
    assert!(
        elapsed <= bound,
        "dead node cleaned after {elapsed:?}, bound {bound:?}"
    );
    let p = api(a.addr, "GET", "/api/lobbies/room/presence").await;
    assert_eq!(p["users"], json!(["watcher"]));
    let stats = api(a.addr, "GET", "/api/stats").await;
    assert_eq!(
        (
            stats["cluster"]["nodes"].clone(),
            stats["cluster"]["total_connections"].clone()
        ),
        (json!(1), json!(1))
    );
}

#[tokio::test]
async fn redis_outage_degrades_to_local_and_recovers() {
    let mut redis = Redis::start();
    let port = redis.port;
    let a = node(&redis, "oa", &[]);
    let b = node(&redis, "ob", &[]);
    let mut alice = connect(a.addr, "room", "alice").await;
    let mut bob = connect(b.addr, "room", "bob").await;
    alice.expect("member_joined", "bob's join").await;
    redis.kill();
    // Readiness stays 200 and says redis is down; local delivery goes on.
    let ready = eventually_json("node A notices", a.addr, "/readyz", |v| {
        v["redis"] == "down"
    })
    .await;
    assert_eq!(ready["ready"], true);
    assert_eq!(http(a.addr, "GET", "/readyz", None, None).await.status, 200);
    // The operator's search says it sees this node only; other nodes' charts are unavailable,
    // this node's are not.
    let found = api(a.addr, "GET", "/api/users/alice").await;
    assert_eq!(
        (
            &found["cluster_unavailable"],
            &found["redis"],
            &found["connections"][0]["id"]
        ),
        (&json!(true), &json!("down"), &json!(alice.id()))
    );
    let other = http(a.addr, "GET", "/api/history?node=ob", None, None).await;
    assert_eq!(
        (other.status, other.error_code()),
        (503, "cluster_unavailable".into())
    );
    let own = api(a.addr, "GET", "/api/history").await;
    assert_eq!(
        (&own["node_id"], &own["nodes"]),
        (&json!("oa"), &json!(["oa"]))
    );
    let mut alice2 = connect(a.addr, "room", "alice2").await;
    alice
        .expect("member_joined", "a local join during the outage")
        .await;
    alice2
        .send(json!({"type": "broadcast", "data": "local"}))
        .await;
    assert_eq!(
        alice
            .expect("message", "local delivery during the outage")
            .await["data"],
        "local"
    );
    alice2.expect("message", "own message").await;
    // Redis comes back (empty: it had no persistence): nodes reconnect, resubscribe, resync.
    let _redis = Redis::start_on(port);
    for n in [&a, &b] {
        eventually_json("the node reconnects", n.addr, "/readyz", |v| {
            v["redis"] == "up"
        })
        .await;
    }
    eventually_json(
        "presence re-registered",
        b.addr,
        "/api/lobbies/room/presence",
        |v| v["users"] == json!(["alice", "alice2", "bob"]),
    )
    .await;
    // Cross-node delivery resumes (the subscription may take a heartbeat to come back).
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        bob.send(json!({"type": "broadcast", "data": n})).await;
        let seen = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                let m = alice.next_json("bob's message after the outage").await;
                if m["type"] == "message" && m["from"] == "bob" {
                    return m;
                }
            }
        })
        .await;
        if seen.is_ok() {
            break;
        }
        n += 1;
        assert!(
            Instant::now() < deadline,
            "cross-node delivery never resumed"
        );
    }
    assert!(
        redis_counter(a.addr, "switchboard_redis_errors_total").await > 0,
        "outage counted in metrics"
    );
}

/// A counter of a node's `/metrics` (without labels).
async fn redis_counter(addr: SocketAddr, name: &str) -> u64 {
    let metrics = http(addr, "GET", "/metrics", None, None).await.body;
    let prefix = format!("{name} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} is not exported"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn sse_posts_reach_their_connection_through_any_node() {
    use common::sse::{Sse, sse_post};
    let redis = Redis::start();
    let a = node(&redis, "sa", &[]);
    let b = node(&redis, "sb", &[]);
    let mut ws = connect(a.addr, "room", "wendy").await;
    let mut sse = Sse::open(b.addr, "/sse/room?token=sam", &[]).await;
    let id = sse.expect("welcome", "welcome on node B").await.data["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.expect("member_joined", "sam's join on the other node")
        .await;
    // Posted to node A (no sticky sessions), the frame reaches sam's connection on node B.
    let r = sse_post(
        a.addr,
        "room",
        "sam",
        &id,
        json!({"type":"broadcast","data":"via A"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        ws.expect("message", "sam's broadcast").await["data"],
        "via A"
    );
    assert_eq!(
        sse.expect("message", "sam's own broadcast").await.data["data"],
        "via A"
    );
    let unknown = sse_post(a.addr, "room", "sam", "sb-999", json!({"type":"presence"})).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn recovery_works_across_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "ha", &[]);
    let b = node(&redis, "hb", &[]);
    let mut anchor = connect(a.addr, "room", "anchor").await;
    let mut c = connect(a.addr, "room", "cleo").await;
    anchor.expect("member_joined", "cleo's join").await;
    let epoch = c.welcome["epoch"].as_str().unwrap().to_owned();
    let r = http(
        a.addr,
        "POST",
        "/api/lobbies/room/broadcast",
        None,
        Some(r#"{"data":"first"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = c.expect("message", "the first message").await["offset"]
        .as_u64()
        .unwrap();
    drop(c); // abrupt
    for i in 0..100 {
        let body = format!(r#"{{"data":{{"missed":{i}}}}}"#);
        let node = if i % 2 == 0 { a.addr } else { b.addr };
        assert_eq!(
            http(
                node,
                "POST",
                "/api/lobbies/room/broadcast",
                None,
                Some(&body)
            )
            .await
            .status,
            200
        );
    }
    // Publishing is asynchronous: wait until the cluster numbered all of them (the anchor has
    // them) so that they are all history by the time cleo comes back.
    let mut numbered = 0;
    while numbered < 101 {
        if anchor.next_json("the broadcasts, at the anchor").await["type"] == "message" {
            numbered += 1;
        }
    }
    // Back on the other node, with since/epoch: the 100 missed ones, in order, then recovered.
    let path = format!("/ws/room?token=cleo&since={seen}&epoch={epoch}");
    let ws = raw_connect(b.addr, &path, ip(1)).await;
    let mut back = Client {
        ws,
        welcome: Value::Null,
    };
    let welcome = back.expect("welcome", "welcome on node B").await;
    assert_eq!(welcome["epoch"], json!(epoch), "one epoch cluster-wide");
    let mut expected = seen + 1;
    loop {
        let f = back.next_json("replayed messages").await;
        if f["type"] == "recovered" {
            assert_eq!(f["ok"], true);
            break;
        }
        if f["type"] == "message" {
            assert_eq!(f["offset"], expected, "in order, exactly once");
            expected += 1;
        }
    }
    assert_eq!(expected, seen + 101, "exactly the 100 missed messages");
    // Live traffic continues from there, from either node.
    http(
        a.addr,
        "POST",
        "/api/lobbies/room/broadcast",
        None,
        Some(r#"{"data":"live"}"#),
    )
    .await;
    let live = back.expect("message", "a live message").await;
    assert_eq!(
        (live["offset"].as_u64(), live["data"].as_str()),
        (Some(seen + 101), Some("live"))
    );
}

/// The next `message` frame's offset and data (other frames skipped).
async fn next_message(client: &mut Client, what: &str) -> (u64, Value) {
    loop {
        let f = client.next_json(what).await;
        if f["type"] == "message" {
            return (f["offset"].as_u64().unwrap(), f["data"].clone());
        }
    }
}

/// Issue 13: xena is node A's only member of the lobby, so A unsubscribes from the lobby's
/// channel when she leaves and subscribes again when she comes back; meanwhile `missed`
/// broadcasts go out (from bob on B and the API of either node). Back on A with
/// `since`/`epoch`, she gets exactly those, in the cluster's order, then `recovered` ok:true,
/// then live traffic without a gap or a duplicate.
async fn recover_on_the_node_whose_last_member_left(missed: usize) {
    let redis = Redis::start();
    let a = node(&redis, "sa", &[]);
    let b = node(&redis, "sb", &[]);
    let mut bob = connect(b.addr, "solo", "bob").await;
    let mut xena = connect(a.addr, "solo", "xena").await;
    bob.expect("member_joined", "xena's join").await;
    let epoch = xena.welcome["epoch"].as_str().unwrap().to_owned();
    // While she is connected: broadcasts from B, which A keeps in its ring.
    for i in 0..3 {
        bob.send(broadcast(json!({ "before": i }))).await;
    }
    let mut seen = 0;
    for i in 0..3 {
        let (offset, data) = next_message(&mut xena, "a broadcast while connected").await;
        assert_eq!(data, json!({ "before": i }));
        seen = offset;
    }
    for _ in 0..3 {
        next_message(&mut bob, "bob's own broadcasts").await;
    }
    drop(xena); // abrupt
    // B announces her leave after A has unsubscribed from the lobby (release).
    let left = bob.expect("member_left", "xena's leave").await;
    assert_eq!(left["user_id"], "xena");
    let apis = [a.addr, b.addr];
    for i in 0..missed {
        let data = json!({ "missed": i });
        if i % 3 == 0 {
            bob.send(broadcast(data)).await;
        } else {
            let body = json!({ "data": data }).to_string();
            let at = apis[i % 2];
            let r = http(at, "POST", "/api/lobbies/solo/broadcast", None, Some(&body)).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    // Publishing is asynchronous: wait until the cluster numbered every one (bob has them),
    // so they are all history when she comes back. Bob's order is the cluster's.
    let mut numbered = Vec::new();
    while numbered.len() < missed {
        numbered.push(next_message(&mut bob, "the missed broadcasts, at bob").await);
    }
    // Back on node A, with since/epoch.
    let path = format!("/ws/solo?token=xena&since={seen}&epoch={epoch}");
    let ws = raw_connect(a.addr, &path, ip(1)).await;
    let mut back = Client {
        ws,
        welcome: Value::Null,
    };
    let welcome = back.expect("welcome", "welcome back on node A").await;
    assert_eq!(welcome["epoch"], json!(epoch), "the same epoch");
    assert_eq!(welcome["offset"], json!(seen + missed as u64));
    let mut replayed = Vec::new();
    let ok = loop {
        let f = back.next_json("the replay").await;
        match f["type"].as_str() {
            Some("recovered") => break f["ok"].clone(),
            Some("message") => replayed.push((f["offset"].as_u64().unwrap(), f["data"].clone())),
            _ => {}
        }
    };
    assert_eq!(ok, json!(true), "Redis holds every missed broadcast");
    assert_eq!(
        replayed, numbered,
        "exactly the missed broadcasts, in order"
    );
    let offsets: Vec<u64> = replayed.iter().map(|(o, _)| *o).collect();
    let expected: Vec<u64> = (seen + 1..=seen + missed as u64).collect();
    assert_eq!(offsets, expected, "contiguous from since + 1");
    // Live traffic continues right after, from either node.
    bob.send(broadcast(json!("live"))).await;
    assert_eq!(
        next_message(&mut back, "a live message").await,
        (seen + missed as u64 + 1, json!("live"))
    );
}

#[tokio::test]
async fn recovery_on_the_node_whose_last_member_left() {
    recover_on_the_node_whose_last_member_left(12).await;
}

#[tokio::test]
async fn recovery_on_the_node_whose_last_member_left_with_nothing_missed() {
    recover_on_the_node_whose_last_member_left(0).await;
}

/// The value of an unlabelled counter or gauge in Prometheus text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Item 6: 100 clients sending `direct` frames to users who do not exist, each at its rate
/// limit, on node A, while a member of A broadcasts: node B receives every broadcast, in
/// order and promptly (a direct frame no longer costs a Redis round trip of its own ahead of
/// the broadcasts), and nothing is refused or dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_floods_to_absent_users_do_not_stall_broadcasts() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const SENDERS: usize = 100;
    const RATE: u64 = 100; // per sender per second: 10,000 directs/s in all
    const BROADCASTS: u64 = 100;
    let redis = Redis::start();
    let rate = RATE.to_string();
    let env = [
        ("SWITCHBOARD_RATE__MESSAGES_PER_SEC", rate.as_str()),
        ("SWITCHBOARD_RATE__BURST", rate.as_str()),
        ("SWITCHBOARD_LIMITS__MAX_PER_IP", "1000"),
        ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "1000"),
        ("SWITCHBOARD_PRESENCE__EVENTS", "false"),
    ];
    let a = node(&redis, "fa", &env);
    let b = node(&redis, "fb", &env);
    let mut listener = connect(b.addr, "room", "listener").await;
    let mut speaker = connect(a.addr, "room", "speaker").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut spammers = Vec::new();
    for i in 0..SENDERS {
        let c = connect(a.addr, "spam", &format!("spammer{i}")).await;
        let (mut tx, mut rx) = c.ws.split();
        let (stop, refused) = (stop.clone(), refused.clone());
        spammers.push(tokio::spawn(async move {
            let reader = tokio::spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    if let Message::Text(t) = m
                        && t.contains("\"error\"")
                    {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let frame = json!({
                    "type": "direct",
                    "to": format!("absent{i}-{sent}"),
                    "data": {"pad": "x".repeat(200), "n": sent},
                });
                if tx.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            let _ = tx.close().await;
            reader.abort();
            sent
        }));
    }
    // Let the flood build up before the broadcasts start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for n in 0..BROADCASTS {
        let sent_at = Instant::now();
        speaker.send(json!({"type": "broadcast", "data": n})).await;
        let m = listener
            .expect("message", "every broadcast on the other node, in order")
            .await;
        assert_eq!(m["data"], n);
        worst = worst.max(sent_at.elapsed());
        let own = speaker
            .expect("message", "the speaker's own broadcast")
            .await;
        assert_eq!(own["data"], n, "no error frame for the speaker");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut directs = 0;
    for s in spammers {
        directs += s.await.unwrap();
    }
    eprintln!(
        "{directs} directs sent; {BROADCASTS} broadcasts in {elapsed:?}, worst cross-node \
         latency {worst:?}; {} errors to the senders",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        worst < Duration::from_millis(1_000),
        "a broadcast waited {worst:?} behind the direct frames"
    );
    let metrics = http(a.addr, "GET", "/metrics", None, None).await.body;
    assert_eq!(metric(&metrics, "switchboard_redis_overloaded_total"), 0.0);
    assert_eq!(
        metric(&metrics, "switchboard_redis_publish_dropped_total"),
        0.0
    );
    // `direct` is rate-limited like any client frame: a burst past the bucket is refused.
    let mut eager = connect(a.addr, "spam", "eager").await;
    for n in 0..(RATE + 20) {
        eager
            .send(json!({"type": "direct", "to": "absent", "data": n, "id": n}))
            .await;
    }
    let e = eager.expect("error", "the frames past the burst").await;
    assert_eq!(e["code"], "rate_limited");
}

/// Item 6: with the outbound queue full (a bound smaller than any frame), a client's
/// broadcast and direct get `error` `overloaded`, the API's 503 with `Retry-After`, nothing
/// is delivered anywhere, and `/metrics` counts every refusal.
#[tokio::test]
async fn a_full_outbound_queue_is_reported_never_lost_silently() {
    let redis = Redis::start();
    let a = node(
        &redis,
        "qa",
        &[("SWITCHBOARD_REDIS__OUTBOUND_MAX_BYTES", "64")],
    );
    let b = node(&redis, "qb", &[]);
    let mut far = connect(b.addr, "room", "far").await;
    let mut near = connect(a.addr, "room", "near").await;
    near.send(json!({"type": "broadcast", "data": "lost?", "id": 1}))
        .await;
    let e = near.expect("error", "the broadcast refused").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("overloaded"), Some(1))
    );
    near.send(json!({"type": "direct", "to": "far", "data": "psst", "id": "d"}))
        .await;
    let e = near.expect("error", "the direct refused").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("overloaded"), Some("d"))
    );
    let r = http(
        a.addr,
        "POST",
        "/api/lobbies/room/broadcast",
        None,
        Some(r#"{"data":"api"}"#),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "overloaded");
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "retry-after" && v == "1"),
        "{r:?}"
    );
    let r = http(
        a.addr,
        "POST",
        "/api/users/far/send",
        None,
        Some(r#"{"data":1}"#),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    // An SSE post for a connection on node B, posted to node A: A cannot forward it.
    let mut sse = common::sse::Sse::open(b.addr, "/sse/room?token=sam", &[]).await;
    let id = sse.expect("welcome", "sam's welcome").await.data["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    near.expect("member_joined", "sam").await;
    far.expect("member_joined", "sam").await;
    let r = common::sse::sse_post(
        a.addr,
        "room",
        "sam",
        &id,
        json!({"type": "broadcast", "data": "via A"}),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "overloaded");
    // Nothing reached anyone: the next frame each sees answers its presence request.
    for c in [&mut near, &mut far] {
        c.send(json!({"type": "presence"})).await;
        c.expect("presence", "no message, no direct").await;
    }
    let metrics = http(a.addr, "GET", "/metrics", None, None).await.body;
    assert_eq!(metric(&metrics, "switchboard_redis_overloaded_total"), 5.0);
    // Node B's queue is not bounded that tightly: its traffic flows.
    let r = http(
        b.addr,
        "POST",
        "/api/lobbies/room/broadcast",
        None,
        Some(r#"{"data":"fine"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        near.expect("message", "B's broadcast").await["data"],
        "fine"
    );
}

/// Item 11: liveness runs on Redis's clock. Of three nodes, one's wall clock is 10 s ahead
/// and one's 10 s behind (the test-only offset): over several node TTLs nobody frees anybody
/// (no `member_left`, every node and connection counted throughout), and a node that really
/// dies is still freed within the TTL.
#[tokio::test]
async fn liveness_does_not_depend_on_the_nodes_clocks() {
    let redis = Redis::start();
    let n = node(&redis, "cn", &[]);
    let ahead = node(
        &redis,
        "cf",
        &[("SWITCHBOARD_TEST_CLOCK_OFFSET_MS", "10000")],
    );
    let mut behind = node(
        &redis,
        "cs",
        &[("SWITCHBOARD_TEST_CLOCK_OFFSET_MS", "-10000")],
    );
    let mut watcher = connect(n.addr, "room", "watcher").await;
    let _f = connect(ahead.addr, "room", "fiona").await;
    watcher.expect("member_joined", "fiona's join").await;
    let _s = connect(behind.addr, "room", "sid").await;
    watcher.expect("member_joined", "sid's join").await;
    // Watch for three node TTLs: a node whose clock is off would be freed (or free the others)
    // at the first sweep after its heartbeat, within one TTL.
    let until = Instant::now() + Duration::from_millis(3 * NODE_TTL_MS);
    while Instant::now() < until {
        for addr in [n.addr, ahead.addr, behind.addr] {
            let stats = api(addr, "GET", "/api/stats").await;
            assert_eq!(
                (
                    stats["cluster"]["nodes"].as_u64(),
                    stats["cluster"]["total_connections"].as_u64()
                ),
                (Some(3), Some(3)),
                "every node and connection stays: {stats}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.send(json!({"type": "presence"})).await;
    let p = watcher
        .expect("presence", "no member_left before the presence answer")
        .await;
    assert_eq!(p["users"], json!(["fiona", "sid", "watcher"]));
    // A real death is still noticed, by Redis's clock.
    behind.signal("KILL");
    behind.wait(WAIT).await;
    let left = watcher
        .expect("member_left", "sid gone with his node")
        .await;
    assert_eq!(left["user_id"], "sid");
}

/// Opens every `(node, path, from)` at once; the first frame of each (welcome or goodbye), with
/// its client, in order.
async fn burst(attempts: Vec<(SocketAddr, String, std::net::IpAddr)>) -> Vec<(Value, Client)> {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(attempts.len()));
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(addr, path, from)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let ws = raw_connect(addr, &path, from).await;
                let mut c = Client {
                    ws,
                    welcome: Value::Null,
                };
                let first = c.next_json("welcome or goodbye").await;
                (first, c)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// How many of a burst were welcomed; asserts every other one was refused for `reason`.
fn welcomed(results: &[(Value, Client)], reason: &str) -> usize {
    results
        .iter()
        .filter(|(first, _)| {
            if first["type"] == "welcome" {
                return true;
            }
            assert_eq!(first["reason"], reason, "{first}");
            false
        })
        .count()
}

/// Item 14: `limits.max_per_ip` holds across three nodes under a concurrent burst from one
/// address, without touching another address's share, and a freed slot is free everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_ip_limit_holds_cluster_wide_under_a_burst() {
    let redis = Redis::start();
    let env = [
        ("SWITCHBOARD_LIMITS__MAX_PER_IP", "5"),
        ("SWITCHBOARD_USER_POLICY", "multi"),
    ];
    let nodes = [
        node(&redis, "ia", &env),
        node(&redis, "ib", &env),
        node(&redis, "ic", &env),
    ];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut attempts = Vec::new();
    for i in 0..30usize {
        attempts.push((addrs[i % 3], format!("/ws/l{}?token=u{i}", i % 4), ip(7)));
    }
    for i in 0..5usize {
        attempts.push((addrs[i % 3], format!("/ws/other?token=v{i}"), ip(8)));
    }
    let mut results = burst(attempts).await;
    let from_8 = results.split_off(30);
    assert_eq!(welcomed(&results, "ip_limit"), 5, "5 from 127.0.0.7 in all");
    assert_eq!(welcomed(&from_8, "ip_limit"), 5, "127.0.0.8 has its own 5");
    let stats = api(addrs[0], "GET", "/api/stats").await;
    assert_eq!(stats["cluster"]["total_connections"], 10);
    // One of 127.0.0.7's connections goes (the others stay open); its slot is free on any
    // node.
    let i = results
        .iter()
        .position(|(first, _)| first["type"] == "welcome")
        .unwrap();
    let (_, c) = results.swap_remove(i);
    c.close().await;
    let other = addrs[(i + 1) % 3];
    eventually_json("the slot is freed", other, "/api/stats", |v| {
        v["cluster"]["total_connections"] == 9
    })
    .await;
    let _late = connect_from(other, "l0", "late", ip(7)).await;
    let refused = connect_refused(addrs[i % 3], "l0", "later", ip(7)).await;
    refused.assert(4002, "ip_limit", true);
}

/// Item 14: policy `multi` with `limits.max_per_user` holds across three nodes under a
/// concurrent burst of one user's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_per_user_cap_holds_cluster_wide_under_a_burst() {
    let redis = Redis::start();
    let env = [
        ("SWITCHBOARD_USER_POLICY", "multi"),
        ("SWITCHBOARD_LIMITS__MAX_PER_USER", "3"),
    ];
    let nodes = [
        node(&redis, "ua", &env),
        node(&redis, "ub", &env),
        node(&redis, "uc", &env),
    ];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let attempts = (0..24usize)
        .map(|i| {
            (
                addrs[i % 3],
                format!("/ws/tab{}?token=ursula", i % 5),
                ip(1),
            )
        })
        .collect();
    let results = burst(attempts).await;
    assert_eq!(welcomed(&results, "user_limit"), 3, "3 tabs in all");
    let stats = api(addrs[2], "GET", "/api/stats").await;
    assert_eq!(
        (
            stats["cluster"]["total_connections"].as_u64(),
            stats["cluster"]["users"].as_u64()
        ),
        (Some(3), Some(1))
    );
    // Every welcomed tab is live: a direct to ursula reaches each exactly once.
    let r = http(
        addrs[0],
        "POST",
        "/api/users/ursula/send",
        None,
        Some(r#"{"data":"all tabs"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    for (first, mut c) in results {
        if first["type"] == "welcome" {
            assert_eq!(
                c.expect("direct", "the direct on every tab").await["data"],
                "all tabs"
            );
        }
    }
}

/// Item 14: policy `reject` holds across three nodes under a concurrent burst: exactly one of
/// a user's connections is admitted; once it is gone, the next is, on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reject_policy_holds_cluster_wide_under_a_burst() {
    let redis = Redis::start();
    let env = [("SWITCHBOARD_USER_POLICY", "reject")];
    let nodes = [
        node(&redis, "ja", &env),
        node(&redis, "jb", &env),
        node(&redis, "jc", &env),
    ];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let attempts = (0..21usize)
        .map(|i| (addrs[i % 3], format!("/ws/l{}?token=rex", i % 2), ip(1)))
        .collect();
    let results = burst(attempts).await;
    assert_eq!(
        welcomed(&results, "user_limit"),
        1,
        "one connection for rex"
    );
    let (i, (_, only)) = results
        .into_iter()
        .enumerate()
        .find(|(_, (first, _))| first["type"] == "welcome")
        .unwrap();
    let other = addrs[(i + 1) % 3];
    connect_refused(other, "l0", "rex", ip(1))
        .await
        .assert(4002, "user_limit", true);
    only.close().await;
    eventually_json("rex is released", other, "/api/stats", |v| {
        v["cluster"]["total_connections"] == 0
    })
    .await;
    let _rex = connect(other, "l1", "rex").await;
}

/// Item 15: `rediss://` works against a TLS-only `redis-server` (Debian's build has TLS) that
/// also asks for client certificates: two nodes trusting the private CA (`redis.ca_file`) with a
/// client certificate form a cluster; a node without the client certificate, or trusting only
/// the system's roots, cannot join; `#insecure` is refused at start-up.
#[tokio::test]
async fn rediss_urls_work_with_a_private_ca_and_client_certificates() {
    let dir = tls_files();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let _redis = Redis::spawn(
        port,
        &[
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "yes".into(),
        ],
    );
    let url = format!("rediss://127.0.0.1:{port}");
    let hb = HEARTBEAT_MS.to_string();
    let ttl = NODE_TTL_MS.to_string();
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let tls_node = |id: &str, tls: &[(&str, &str)]| {
        let mut env = vec![
            ("SWITCHBOARD_REDIS__URL", url.as_str()),
            ("SWITCHBOARD_REDIS__NODE_ID", id),
            ("SWITCHBOARD_REDIS__HEARTBEAT_MS", &hb),
            ("SWITCHBOARD_REDIS__NODE_TTL_MS", &ttl),
            ("SWITCHBOARD_RATE__CONNECTS_PER_IP_PER_SEC", "0"),
        ];
        env.extend_from_slice(tls);
        Process::start(&env, None)
    };
    let full = [
        ("SWITCHBOARD_REDIS__CA_FILE", ca.as_str()),
        ("SWITCHBOARD_REDIS__CLIENT_CERT_FILE", cert.as_str()),
        ("SWITCHBOARD_REDIS__CLIENT_KEY_FILE", key.as_str()),
    ];
    let a = tls_node("ta", &full);
    let b = tls_node("tb", &full);
    for n in [&a, &b] {
        let ready = api(n.addr, "GET", "/readyz").await;
        assert_eq!(ready["redis"], "up", "{}", n.logs());
    }
    let mut alice = connect(a.addr, "room", "alice").await;
    let mut bob = connect(b.addr, "room", "bob").await;
    alice.expect("member_joined", "bob's join over TLS").await;
    bob.send(json!({"type": "broadcast", "data": "over tls"}))
        .await;
    assert_eq!(
        alice.expect("message", "bob's broadcast").await["data"],
        "over tls"
    );
    // Without a client certificate Redis refuses the handshake; trusting only the system's
    // roots, the node refuses Redis's certificate. Either way: serving alone, saying so.
    let no_client_cert = tls_node("tc", &full[..1]);
    let system_roots = tls_node("td", &full[1..]);
    for n in [&no_client_cert, &system_roots] {
        let ready = api(n.addr, "GET", "/readyz").await;
        assert_eq!(ready["redis"], "down", "{ready}");
        assert!(
            n.logs().contains("redis unreachable at start"),
            "{}",
            n.logs()
        );
    }
    let stats = api(a.addr, "GET", "/api/stats").await;
    assert_eq!(
        stats["cluster"]["nodes"], 2,
        "only the two trusted nodes joined"
    );
    // Verification cannot be switched off.
    let refused = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--dev")
        .env("SWITCHBOARD_BIND", "127.0.0.1:0")
        .env("SWITCHBOARD_REDIS__URL", format!("{url}/#insecure"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("#insecure"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node re-registers its connections (`resync`) whenever Redis forgot it; connects and
/// disconnects meanwhile must stay counted exactly. Here Redis forgets the node every 10 ms
/// (its entry in the node set removed, so every heartbeat resyncs) while eight clients open
/// connections one after another for 2 s, each keeping its last 50: afterwards the cluster
/// counts exactly the connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connects_during_a_resync_all_stay_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = Redis::spawn(
        port,
        &[
            "--port".into(),
            port.to_string(),
            "--enable-debug-command".into(),
            "yes".into(),
        ],
    );
    let env = [
        ("SWITCHBOARD_LIMITS__MAX_PER_IP", "100000"),
        ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "100000"),
        ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "100000"),
        ("SWITCHBOARD_PRESENCE__EVENTS", "false"),
    ];
    let a = node(&redis, "ra", &env);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = redis.port.to_string();
    let forgetter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Forgotten, then Redis stalls for 20 ms: the heartbeat and the connects in
                // flight are answered together, and the resync follows at once.
                for cmd in [
                    &["ZREM", "switchboard:nodes", "ra"][..],
                    &["DEBUG", "SLEEP", "0.02"],
                ] {
                    Command::new("redis-cli")
                        .args(["-p", &port])
                        .args(cmd)
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    let until = Instant::now() + Duration::from_secs(2);
    let connectors: Vec<_> = (0..8)
        .map(|c| {
            let addr = a.addr;
            tokio::spawn(async move {
                let mut kept = std::collections::VecDeque::new();
                let mut n = 0;
                while Instant::now() < until {
                    kept.push_back(connect(addr, "room", &format!("c{c}n{n}")).await);
                    n += 1;
                    if kept.len() > 50 {
                        kept.pop_front();
                    }
                }
                (n, kept)
            })
        })
        .collect();
    let (mut opened, mut kept) = (0, Vec::new());
    for c in connectors {
        let (n, conns) = c.await.unwrap();
        opened += n;
        kept.extend(conns);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let forgotten = forgetter.join().unwrap();
    eprintln!("{opened} connections opened; forgotten {forgotten} times meanwhile");
    let live = kept.len();
    let stats = eventually_json(
        "the cluster counts what is open",
        a.addr,
        "/api/stats",
        // The forgetter's last ZREM may land after the counts match: the next heartbeat
        // brings the node back (and resyncs), so wait for that too.
        |v| {
            v["total_connections"] == live
                && v["cluster"]["total_connections"] == live
                && v["cluster"]["nodes"] == 1
        },
    )
    .await;
    assert_eq!(stats["cluster"]["nodes"], 1);
}

// ---------------------------------------------------------------------------------------------
// Protocol v2 in a cluster: memberships live in Redis like connections do.

/// Joins from both nodes at once never put more than `max_per_lobby` connections in a lobby,
/// cluster-wide; a lobby-less v2 connect works in cluster mode.
#[tokio::test]
async fn v2_the_lobby_cap_holds_cluster_wide_under_a_burst_of_joins() {
    let redis = Redis::start();
    let env = [
        ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "5"),
        ("SWITCHBOARD_USER_POLICY", "multi"),
    ];
    let a = node(&redis, "ja", &env);
    let b = node(&redis, "jb", &env);
    let mut clients = Vec::new();
    for i in 0..16 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        clients.push(connect_v2(addr, &format!("/ws?token=u{i}")).await);
    }
    for client in &mut clients {
        client
            .send(json!({"type": "join", "lobby": "hot", "id": 1}))
            .await;
    }
    let mut joined = 0;
    for client in &mut clients {
        let answer = client.next_json("answer to join").await;
        match answer["type"].as_str() {
            Some("joined") => joined += 1,
            Some("error") => assert_eq!(answer["code"], "lobby_full"),
            _ => panic!("unexpected {answer}"),
        }
    }
    assert_eq!(joined, 5, "exactly the cap, cluster-wide");
    let lobbies = api(a.addr, "GET", "/api/lobbies").await;
    assert_eq!(lobbies[0]["connections"], 5);
}

/// Presence per lobby across nodes: a v2 user joining and leaving lobbies on one node is seen
/// once on the other; a killed node's memberships all leave, one `member_left` per lobby.
#[tokio::test]
async fn v2_presence_crosses_nodes_and_a_dead_nodes_memberships_leave() {
    let redis = Redis::start();
    let a = node(&redis, "pa", &[]);
    let mut b = node(&redis, "pb", &[]);
    let mut watcher = connect_v2(a.addr, "/ws?token=watcher").await;
    watcher.join("x", 1).await;
    watcher.join("y", 2).await;
    let mut hank = connect_v2(b.addr, "/ws?token=hank").await;
    for (lobby, id) in [("x", 1), ("y", 2), ("z", 3)] {
        hank.join(lobby, id).await;
    }
    for lobby in ["x", "y"] {
        let joined = watcher.expect("member_joined", lobby).await;
        assert_eq!(
            (joined["lobby"].as_str(), joined["user_id"].as_str()),
            (Some(lobby), Some("hank"))
        );
    }
    watcher
        .send(json!({"type": "presence", "lobby": "x", "id": 3}))
        .await;
    let presence = watcher.expect("presence", "x across nodes").await;
    assert_eq!(presence["users"], json!(["hank", "watcher"]));
    hank.send(json!({"type": "leave", "lobby": "y", "id": 4}))
        .await;
    assert_eq!(hank.expect("left", "y").await["id"], 4);
    let left = watcher.expect("member_left", "hank leaves y").await;
    assert_eq!(left["lobby"], "y");

    b.signal("KILL");
    b.wait(WAIT).await;
    let left = watcher
        .expect("member_left", "hank gone with his node")
        .await;
    assert_eq!(
        (left["lobby"].as_str(), left["user_id"].as_str()),
        (Some("x"), Some("hank"))
    );
    let lobbies = eventually_json(
        "only the watcher's lobbies remain",
        a.addr,
        "/api/lobbies",
        |v| v.as_array().is_some_and(|l| l.len() == 2),
    )
    .await;
    assert_eq!(
        lobbies,
        json!([
            {"lobby": "x", "connections": 1, "users": 1},
            {"lobby": "y", "connections": 1, "users": 1},
        ])
    );
    // Nothing more: no second `member_left` for x, none for y or z.
    watcher
        .send(json!({"type": "presence", "lobby": "y", "id": 5}))
        .await;
    let presence = watcher.expect("presence", "y after the death").await;
    assert_eq!(presence["users"], json!(["watcher"]));
}

/// A client in two lobbies on one node reconnects to the other node and rejoins both with
/// their own `since`/`epoch`: every broadcast it missed, in each lobby, exactly once.
#[tokio::test]
async fn v2_recovery_of_several_lobbies_across_nodes() {
    let redis = Redis::start();
    let quiet = [("SWITCHBOARD_PRESENCE__EVENTS", "false")];
    let a = node(&redis, "ra2", &quiet);
    let b = node(&redis, "rb2", &quiet);
    let mut alice = connect_v2(a.addr, "/ws?token=alice").await;
    let mut epochs = Vec::new();
    for (lobby, id) in [("one", 1), ("two", 2)] {
        epochs.push(
            alice.join(lobby, id).await["epoch"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut bob = connect_v2(b.addr, "/ws?token=bob").await;
    bob.join("one", 1).await;
    bob.join("two", 2).await;
    for (lobby, n) in [("one", 1), ("two", 1)] {
        bob.send(json!({"type": "broadcast", "lobby": lobby, "data": n}))
            .await;
        let seen = alice.expect("message", lobby).await;
        assert_eq!(
            (seen["lobby"].as_str(), seen["offset"].as_u64()),
            (Some(lobby), Some(1))
        );
    }
    alice.close().await;
    for i in 2..=4 {
        for lobby in ["one", "two"] {
            bob.send(json!({"type": "broadcast", "lobby": lobby, "data": i, "id": i}))
                .await;
        }
    }
    // Bob sees his own six broadcasts and their acks, each with the offset Redis gave it:
    // then all are numbered and kept.
    let mut offsets = Vec::new();
    while offsets.len() < 6 {
        let frame = bob.next_json("bob's traffic").await;
        if frame["type"] == "ack" {
            offsets.push(frame["offset"].as_u64().expect("the cluster's offset"));
        }
    }
    offsets.sort_unstable();
    assert_eq!(offsets, [2, 2, 3, 3, 4, 4]);
    let mut again = connect_v2(b.addr, "/ws?token=alice").await;
    for (i, lobby) in ["one", "two"].into_iter().enumerate() {
        again
            .send(json!({"type": "join", "lobby": lobby, "id": i, "since": 1, "epoch": epochs[i]}))
            .await;
        let joined = again.expect("joined", lobby).await;
        assert_eq!(joined["epoch"], epochs[i].as_str());
        for offset in 2..=4 {
            let message = again.expect("message", "replayed").await;
            assert_eq!(
                (message["lobby"].as_str(), message["offset"].as_u64()),
                (Some(lobby), Some(offset))
            );
        }
        let recovered = again.expect("recovered", lobby).await;
        assert_eq!(
            recovered,
            json!({"type": "recovered", "lobby": lobby, "ok": true})
        );
    }
}

/// The backend's join and removal through the HTTP API of one node reach the user's v2
/// connections on another.
#[tokio::test]
async fn v2_a_server_side_join_reaches_every_node() {
    let redis = Redis::start();
    let a = node(&redis, "sa2", &[]);
    let b = node(&redis, "sb2", &[]);
    let mut alice = connect_v2(b.addr, "/ws?token=alice").await;
    let joined = api(a.addr, "POST", "/api/users/alice/lobbies/news").await;
    assert_eq!(
        joined,
        json!({"joined": 0}),
        "none on the node that was asked"
    );
    let frame = alice.expect("joined", "joined through node a").await;
    assert_eq!(
        (frame["lobby"].as_str(), frame.get("id")),
        (Some("news"), None)
    );
    let lobbies = api(a.addr, "GET", "/api/lobbies").await;
    assert_eq!(
        lobbies,
        json!([{"lobby": "news", "connections": 1, "users": 1}])
    );
    api(a.addr, "DELETE", "/api/users/alice/lobbies/news").await;
    let left = alice.expect("left", "removed through node a").await;
    assert_eq!(
        left,
        json!({"type": "left", "lobby": "news", "reason": "removed"})
    );
    eventually_json("news is empty", a.addr, "/api/lobbies", |v| v == &json!([])).await;
}

/// Presence and disconnect webhooks across nodes: each change is posted once, by the node
/// whose change made it true; a killed node's connections disconnect once and its users leave
/// once, posted by whichever of the two survivors sweeps it.
#[tokio::test]
async fn presence_webhooks_are_posted_once_across_nodes() {
    let (tx, mut posted) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let batch: Value = serde_json::from_slice(&body).unwrap();
                for event in batch["events"].as_array().unwrap() {
                    let _ = tx.send(event.clone());
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let redis = Redis::start();
    let env = [
        ("SWITCHBOARD_USER_POLICY", "multi"),
        ("SWITCHBOARD_WEBHOOK__URL", hook.as_str()),
        ("SWITCHBOARD_WEBHOOK__SECRET", "s"),
        (
            "SWITCHBOARD_WEBHOOK__EVENTS",
            "disconnect,member_joined,member_left",
        ),
        ("SWITCHBOARD_WEBHOOK__BATCH_MS", "5"),
    ];
    let a = node(&redis, "wa", &env);
    let mut b = node(&redis, "wb", &env);
    // A third node: two survivors race to sweep the dead one, and only one may post.
    let _c = node(&redis, "wc", &env);
    let next = |posted: &mut tokio::sync::mpsc::UnboundedReceiver<Value>| {
        let event = posted.try_recv();
        event.ok()
    };
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut collect = async |events: &mut Vec<Value>, n: usize| {
        while events.len() < n && Instant::now() < deadline {
            match next(&mut posted) {
                Some(event) => events.push(event),
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let on_a = connect(a.addr, "room", "alice").await;
    let on_b = connect(b.addr, "room", "alice").await;
    let hank = connect(b.addr, "den", "hank").await;
    let ivy = connect(b.addr, "room", "ivy").await;
    // The joins posted (a killed node loses what it had not posted yet).
    collect(&mut events, 3).await;
    let hank_id = hank.id().to_owned();
    on_a.close().await;
    on_b.close().await;
    // Two disconnects (one per node) and alice's one leave.
    collect(&mut events, 6).await;
    b.signal("KILL");
    b.wait(WAIT).await;
    collect(&mut events, 10).await;
    let mut seen: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["lobby"].as_str().unwrap_or("-").to_owned(),
                e["user_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("disconnect".into(), "-".into(), "alice".into()),
            ("disconnect".into(), "-".into(), "alice".into()),
            ("disconnect".into(), "-".into(), "hank".into()),
            ("disconnect".into(), "-".into(), "ivy".into()),
            ("member_joined".into(), "den".into(), "hank".into()),
            ("member_joined".into(), "room".into(), "alice".into()),
            ("member_joined".into(), "room".into(), "ivy".into()),
            ("member_left".into(), "den".into(), "hank".into()),
            ("member_left".into(), "room".into(), "alice".into()),
            ("member_left".into(), "room".into(), "ivy".into()),
        ]
    );
    let ivy_lost = events
        .iter()
        .find(|e| e["type"] == "disconnect" && e["user_id"] == "ivy")
        .unwrap();
    assert_eq!(ivy_lost["connection_id"], ivy.id());
    assert_eq!(ivy_lost["reason"], "node_lost");
    // The dead node's connection and its user's leave: posted once, by the node that swept
    // it, the disconnect first.
    let lost = events
        .iter()
        .position(|e| e["type"] == "disconnect" && e["user_id"] == "hank")
        .unwrap();
    let left = events
        .iter()
        .position(|e| e["type"] == "member_left" && e["user_id"] == "hank")
        .unwrap();
    assert_eq!(events[lost]["reason"], "node_lost");
    assert_eq!(events[lost]["connection_id"], hank_id.as_str());
    assert_eq!(events[lost]["lost_node"], "wb");
    assert_eq!(events[lost]["node"], events[left]["node"]);
    assert_ne!(events[lost]["node"], "wb");
    assert!(lost < left, "the disconnect before the leave");
    // Nothing twice: after a pause, no further event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(next(&mut posted).is_none(), "an event was posted twice");
}

/// The connections `GET /api/users/{user}` lists, by id.
fn listed(answer: &Value) -> std::collections::BTreeMap<String, Value> {
    answer["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c.clone()))
        .collect()
}

#[tokio::test]
async fn find_lists_a_users_connections_on_every_node_with_live_details() {
    let redis = Redis::start();
    let multi = [("SWITCHBOARD_USER_POLICY", "multi")];
    let a = node(&redis, "fa", &multi);
    let b = node(&redis, "fb", &multi);
    let here = connect(a.addr, "room1", "zoe").await;
    let mut there = connect(b.addr, "room2", "zoe").await;
    let _other = connect(b.addr, "room3", "yann").await;
    for (from, whose) in [(a.addr, "fa"), (b.addr, "fb")] {
        let answer = api(from, "GET", "/api/users/zoe").await;
        assert_eq!(answer["node_id"], whose);
        assert_eq!(answer["redis"], "up");
        let conns = listed(&answer);
        assert_eq!(conns.len(), 2, "zoe's two tabs, from {whose}: {answer}");
        for (client, node, lobby) in [(&here, "fa", "room1"), (&there, "fb", "room2")] {
            let c = &conns[client.id()];
            assert_eq!(c["node_id"], node, "{c}");
            // Live details come from the owner's memory only: the other node asked it.
            assert_eq!(c["live"], true, "{c}");
            assert_eq!(c["lobbies"], json!([lobby]));
            assert_eq!(c["transport"], "websocket");
            assert_eq!(c["protocol"], 1);
            assert_eq!(c["user_id"], "zoe");
            assert_eq!(c["ip"], "127.0.0.1");
            assert!(c["queued"].is_u64() && c["connected_at"].is_u64(), "{c}");
            assert!(c.get("rtt_ms").is_some(), "{c}");
        }
    }
    // One connection by id, from the node that does not hold it.
    let one = api(a.addr, "GET", &format!("/api/connections/{}", there.id())).await;
    assert_eq!(
        (&one["node_id"], &one["live"], &one["lobbies"]),
        (&json!("fb"), &json!(true), &json!(["room2"]))
    );
    let missing = http(a.addr, "GET", "/api/connections/fb-999999", None, None).await;
    assert_eq!(missing.status, 404);
    // Act on what was found: a kick from node A closes node B's connection with 4009.
    let r = api(
        a.addr,
        "DELETE",
        &format!("/api/connections/{}", there.id()),
    )
    .await;
    assert_eq!(r, json!({"closed": 1}));
    there
        .ending("kicked from the other node")
        .await
        .assert(4009, "kicked", false);
    eventually_json("the kicked tab is gone", a.addr, "/api/users/zoe", |v| {
        v["connections"].as_array().unwrap().len() == 1
    })
    .await;
}

#[tokio::test]
async fn find_marks_a_frozen_or_dead_nodes_entries_without_hanging() {
    let redis = Redis::start();
    // A long TTL: the frozen node's entries stay in Redis while it does not answer.
    let slow_sweep = [
        ("SWITCHBOARD_USER_POLICY", "multi"),
        ("SWITCHBOARD_REDIS__NODE_TTL_MS", "60000"),
    ];
    let a = node(&redis, "za", &slow_sweep);
    let mut b = node(&redis, "zb", &slow_sweep);
    let here = connect(a.addr, "room1", "zoe").await;
    let there = connect(b.addr, "room2", "zoe").await;
    let live = api(a.addr, "GET", "/api/users/zoe").await;
    assert_eq!(listed(&live)[there.id()]["live"], true, "{live}");
    b.signal("STOP");
    let bound = switchboard_redis::ASK_TIMEOUT + Duration::from_millis(1000);
    let asked = Instant::now();
    let answer = api(a.addr, "GET", "/api/users/zoe").await;
    let took = asked.elapsed();
    assert!(took < bound, "a frozen node held the search for {took:?}");
    let conns = listed(&answer);
    assert_eq!(conns[here.id()]["live"], true);
    let frozen = &conns[there.id()];
    assert_eq!(
        (
            &frozen["node_id"],
            &frozen["live"],
            &frozen["unavailable"],
            &frozen["lobbies"],
            &frozen["ip"],
            &frozen["transport"]
        ),
        (
            &json!("zb"),
            &json!(false),
            &json!("timeout"),
            &json!(["room2"]),
            &json!("127.0.0.1"),
            &Value::Null
        ),
        "what Redis knows, marked: {frozen}"
    );
    // Past the bound on questions outstanding: the searches beyond it are answered at once,
    // marked `busy`; none waits past the bound.
    let searches = switchboard_redis::MAX_ASKS * 2;
    let started = Instant::now();
    let tasks: Vec<_> = (0..searches)
        .map(|_| {
            let addr = a.addr;
            tokio::spawn(async move { api(addr, "GET", "/api/users/zoe").await })
        })
        .collect();
    let mut why = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let answer = t.await.unwrap();
        let entry = &listed(&answer)[there.id()];
        *why.entry(entry["unavailable"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let took = started.elapsed();
    assert!(took < bound * 2, "{searches} searches took {took:?}");
    // (Without the bound every one would wait for its own answer: none would be `busy`.)
    assert!(
        why.get("busy").copied().unwrap_or(0) >= 1,
        "at most MAX_ASKS questions outstanding: {why:?}"
    );
    assert!(why.get("timeout").copied().unwrap_or(0) >= 1, "{why:?}");
    assert_eq!(why.values().sum::<usize>(), searches, "{why:?}");
    assert!(why.keys().all(|k| k == "busy" || k == "timeout"), "{why:?}");
    // Every question's slot was given back: the next search asks again.
    let again = api(a.addr, "GET", "/api/users/zoe").await;
    assert_eq!(listed(&again)[there.id()]["unavailable"], "timeout");
    // A dead node: the same, within the same bound.
    b.signal("KILL");
    b.wait(WAIT).await;
    let asked = Instant::now();
    let answer = api(a.addr, "GET", &format!("/api/connections/{}", there.id())).await;
    assert!(asked.elapsed() < bound, "{:?}", asked.elapsed());
    assert_eq!(
        (&answer["live"], &answer["unavailable"]),
        (&json!(false), &json!("timeout"))
    );
}

#[tokio::test]
async fn every_nodes_history_and_redis_health_are_charted_from_any_node() {
    let redis = Redis::start();
    let a = node(&redis, "ha", &[]);
    let b = node(&redis, "hb", &[]);
    let _client = connect(b.addr, "room", "ivy").await;
    let last = |v: &Value, name: &str| v["series"][name].as_array().and_then(|s| s.last().cloned());
    // A node's samples are in Redis from its second sample on (the first is the rates'
    // baseline): until then 404.
    let history_of = |from: SocketAddr, node: &'static str, check: fn(&Value) -> bool| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = http(
                from,
                "GET",
                &format!("/api/history?node={node}"),
                None,
                None,
            )
            .await;
            assert!(r.status == 200 || r.status == 404, "{}", r.body);
            if r.status == 200 && check(&r.json()) {
                return r.json();
            }
            assert!(Instant::now() < deadline, "{node}'s history: {}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for from in [a.addr, b.addr] {
        let h = history_of(from, "hb", |v| {
            v["series"]["connections"].as_array().and_then(|s| s.last()) == Some(&json!(1.0))
        })
        .await;
        assert_eq!(h["node_id"], "hb");
        assert_eq!(h["nodes"], json!(["ha", "hb"]), "{}", h["nodes"]);
        let n = h["t"].as_array().unwrap().len();
        for name in [
            "connections",
            "messages_in_per_s",
            "redis_up",
            "redis_errors_per_s",
            "redis_rtt_ms",
        ] {
            assert_eq!(
                h["series"][name].as_array().map(Vec::len),
                Some(n),
                "{name}"
            );
        }
        assert_eq!(last(&h, "redis_up"), Some(json!(1.0)));
        assert_eq!(last(&h, "redis_errors_per_s"), Some(json!(0.0)));
        assert!(last(&h, "redis_rtt_ms").unwrap().as_f64().unwrap() > 0.0);
        let own = history_of(from, "ha", |v| !v["t"].as_array().unwrap().is_empty()).await;
        assert_eq!(own["node_id"], "ha");
    }
    // This node's own, without a query, says which node it is.
    let own = api(a.addr, "GET", "/api/history").await;
    assert_eq!(
        (&own["node_id"], &own["nodes"]),
        (&json!("ha"), &json!(["ha", "hb"]))
    );
    for (path, status) in [
        ("/api/history?node=nosuch", 404),
        ("/api/history?node=bad-id", 400),
        (&format!("/api/history?node={}", "x".repeat(65)), 400),
    ] {
        assert_eq!(
            http(a.addr, "GET", path, None, None).await.status,
            status,
            "{path}"
        );
    }
    // In Redis: one capped list per node, expiring with the window.
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let ttl: u64 = cli(&["PTTL", "switchboard:timeline:hb"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 900_000, "{ttl}");
    let len: usize = cli(&["LLEN", "switchboard:timeline:hb"]).parse().unwrap();
    assert!((1..=900).contains(&len), "{len}");
}

/// The per-node list in Redis keeps the window and no more, and refuses an oversized sample.
#[tokio::test]
async fn the_samples_in_redis_stay_within_their_bounds() {
    let redis = Redis::start();
    let mut config = switchboard::Config::default();
    config.node_id = "bounds".into();
    let manager = switchboard::Manager::new(config.clone()).unwrap();
    let mut settings = switchboard_redis::RedisConfig::new(redis.url(), &config);
    settings.heartbeat = Duration::from_millis(HEARTBEAT_MS);
    let cluster = switchboard_redis::RedisCluster::start(settings, manager.local_node()).unwrap();
    assert!(cluster.wait_up(WAIT).await);
    for i in 0..20 {
        let sample = json!({"t": i, "v": {}}).to_string();
        assert!(
            cluster
                .push_sample(&sample, 5, Duration::from_secs(60))
                .await
        );
    }
    let kept = cluster.samples("bounds", 900).await.unwrap();
    let t: Vec<Value> = kept
        .iter()
        .map(|s| serde_json::from_str::<Value>(s).unwrap()["t"].clone())
        .collect();
    assert_eq!(
        t,
        json!([15, 16, 17, 18, 19]).as_array().unwrap().clone(),
        "the newest 5, oldest first"
    );
    let huge = "x".repeat(switchboard_redis::MAX_SAMPLE_BYTES + 1);
    assert!(!cluster.push_sample(&huge, 5, Duration::from_secs(60)).await);
    assert_eq!(cluster.samples("bounds", 900).await.unwrap().len(), 5);
    assert_eq!(
        cluster.timeline_nodes().await.unwrap(),
        vec!["bounds".to_owned()]
    );
    cluster.leave().await;
}
