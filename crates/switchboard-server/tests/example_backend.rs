//! The complete example backend of docs/backends.md (`examples/backend/receiver.mjs`, Node's
//! standard library only) runs as written against the real server: it admits by session
//! cookie, decides joins, answers RPC, receives verified webhook events, and rejects a forged
//! call.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "example-secret";

/// The example backend on a free port, and the JSON lines it prints.
struct Backend {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Lines read while looking for another.
    pending: Vec<Value>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    fn start() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/backend/receiver.mjs"
        );
        let mut child = Command::new("node")
            .arg(script)
            .env("SECRET", SECRET)
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs (scripts/test.sh installs it)");
        let (tx, mut lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
            }
        });
        let first = lines.blocking_recv().expect("the backend starts");
        let port = first["listening"].as_u64().unwrap() as u16;
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            lines,
            pending: Vec::new(),
        }
    }

    /// The next line the backend prints that has `key`; lines about other things wait for
    /// their own turn (webhook batches and proxy calls arrive in any order between them).
    async fn heard(&mut self, key: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|l| l.get(key).is_some()) {
            return self.pending.remove(i);
        }
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("the backend hears {key}"))
                .unwrap();
            if line.get(key).is_some() {
                return line;
            }
            self.pending.push(line);
        }
    }
}

/// Opens a v2 WebSocket with a session cookie.
async fn open(addr: SocketAddr, session: &str) -> Client {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", format!("session={session}").parse().unwrap());
    headers.insert("sec-websocket-protocol", "switchboard.v2".parse().unwrap());
    let (ws, _) = client_async(request, stream).await.expect("upgrade");
    Client {
        ws,
        welcome: Value::Null,
    }
}

#[tokio::test]
async fn the_example_backend_runs_as_written() {
    let mut backend = tokio::task::spawn_blocking(Backend::start).await.unwrap();
    let at = backend.addr;
    let server = server(|c| {
        c.set("webhook.secret", SECRET).unwrap();
        c.set("webhook.url", &format!("http://{at}/webhook"))
            .unwrap();
        c.set("webhook.events", "connect,join,disconnect").unwrap();
        c.set("webhook.batch_ms", "5").unwrap();
        c.set("auth.connect_url", &format!("http://{at}/connect"))
            .unwrap();
        c.set("auth.join_url", &format!("http://{at}/join"))
            .unwrap();
        c.set("webhook.rpc_url", &format!("http://{at}/rpc"))
            .unwrap();
    })
    .await;

    let mut alice = open(server.addr, "s-alice").await;
    let welcome = alice.expect("welcome", "alice").await;
    assert_eq!(welcome["user_id"], "alice");
    assert_eq!(
        backend.heard("connect").await,
        json!({"connect": "websocket", "admitted": true})
    );
    alice.join("vip-1", 1).await;
    assert_eq!(backend.heard("join").await["allowed"], true);
    let mut bob = open(server.addr, "s-bob").await;
    bob.expect("welcome", "bob").await;
    let refused = bob
        .refused(json!({"type": "join", "lobby": "vip-1", "id": 1}), "vip")
        .await;
    assert_eq!(refused["code"], "not_allowed");
    // RPC: a method the backend knows, and one it does not.
    alice
        .send(json!({"type": "rpc", "method": "add", "data": {"a": 2, "b": 3}, "id": 2}))
        .await;
    let result = alice.expect("rpc_result", "add").await;
    assert_eq!(
        (result["id"].clone(), result["data"].clone()),
        (json!(2), json!({"sum": 5}))
    );
    assert_eq!(
        backend.heard("rpc").await,
        json!({"rpc": "add", "user_id": "alice"})
    );
    let failed = alice
        .refused(json!({"type": "rpc", "method": "nope", "id": 3}), "nope")
        .await;
    assert_eq!(failed["code"], "rpc_failed");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("no method nope")
    );
    let mut stranger = open(server.addr, "nobody").await;
    stranger
        .ending("an unknown session")
        .await
        .assert(4001, "unauthorized", false);

    // Webhook events arrive verified and once each: alice's connect and join.
    let mut events = Vec::new();
    while events.len() < 2 {
        let event = backend.heard("event").await["event"].clone();
        if event["user_id"] == "alice" {
            events.push((event["type"].clone(), event["lobby"].clone()));
        }
    }
    assert_eq!(
        events,
        [
            (json!("connect"), Value::Null),
            (json!("join"), json!("vip-1"))
        ]
    );

    // A forged call is rejected.
    let forged = http_with(
        at,
        "POST",
        "/webhook",
        None,
        Some(r#"{"events":[]}"#),
        &[("switchboard-signature", "t=1,v1=00")],
    )
    .await;
    assert_eq!(forged.status, 401);
    assert_eq!(backend.heard("rejected").await["rejected"], "/webhook");
    alice.close().await;
    bob.close().await;
}
