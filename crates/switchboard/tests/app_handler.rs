//! The library embedded in a tiny axum app, driven by real WebSocket clients: application
//! messages and connection events reach the app's `Handler`, refusals become `error` frames,
//! the handler answers, reaches others and closes through its `Client` (at once or from a
//! spawned task, which graceful shutdown waits for; over SSE too), and the backend methods
//! (`ping`, `send_to_connection`, `broadcast`) do what they say.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::Skip;
use switchboard::axum::WsConnect;
use switchboard::{
    AppMessage, ClientError, Config, ConnectRequest, ConnectionInfo, DisconnectReason, ErrorCode,
    Handler, Manager, UserId, UserPolicy,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The app: `GET /ws/{lobby}?token=USER`, the token being the user id.

async fn ws(State(manager): State<Manager>, connect: WsConnect) -> Response {
    match connect.token.as_deref().map(UserId::parse) {
        Some(Ok(user)) => {
            let request = ConnectRequest::new(connect.lobby, user, connect.peer.ip());
            manager.accept(connect.upgrade, request)
        }
        _ => manager.refuse(connect.upgrade, DisconnectReason::Unauthorized),
    }
}

/// Serves `manager` on 127.0.0.1:0; the server task ends with the test's runtime.
async fn serve(manager: &Manager) -> SocketAddr {
    let app = Router::new()
        .route("/ws/{lobby}", get(ws))
        .with_state(manager.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    addr
}

/// Defaults, except that presence events are off: no `member_joined` frames to skip.
fn config() -> Config {
    let mut config = Config::default();
    config.presence.events = false;
    config.user_policy = UserPolicy::Multi;
    config
}

// ---------------------------------------------------------------------------------------------
// A handler that reports everything it hears, and refuses `forbidden` messages.

#[derive(Debug)]
enum Seen {
    Connect(ConnectionInfo),
    Message {
        conn: ConnectionInfo,
        kind: String,
        text: String,
    },
    Disconnect(ConnectionInfo, DisconnectReason),
}

struct Recorder {
    seen: mpsc::UnboundedSender<Seen>,
}

impl Handler for Recorder {
    fn on_connect(&self, client: &switchboard::Client) {
        let _ = self.seen.send(Seen::Connect(client.info().clone()));
    }

    fn on_message(
        &self,
        client: &switchboard::Client,
        message: AppMessage<'_>,
    ) -> Result<(), ClientError> {
        if message.kind == "forbidden" {
            return Err(ClientError::new(
                ErrorCode::NotAllowed,
                "no forbidden things here",
            ));
        }
        let _ = self.seen.send(Seen::Message {
            conn: client.info().clone(),
            kind: message.kind.to_owned(),
            text: message.text.to_owned(),
        });
        Ok(())
    }

    fn on_disconnect(&self, conn: &ConnectionInfo, reason: DisconnectReason) {
        let _ = self.seen.send(Seen::Disconnect(conn.clone(), reason));
    }
}

struct Recorded {
    manager: Manager,
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

async fn recorded_app() -> Recorded {
    let (tx, seen) = mpsc::unbounded_channel();
    let manager = Manager::with_handler(config(), Recorder { seen: tx }).expect("valid config");
    let addr = serve(&manager).await;
    Recorded {
        manager,
        addr,
        seen,
    }
}

impl Recorded {
    async fn next(&mut self, what: &str) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the handler to see {what}"))
            .expect("handler channel open")
    }
}

// ---------------------------------------------------------------------------------------------
// A client: a task reads every frame (so protocol pings are answered) and forwards the rest.

#[derive(Debug)]
enum Frame {
    Json(Value),
    Close(Option<(u16, String)>),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Client {
    sink: SplitSink<Socket, Message>,
    frames: mpsc::UnboundedReceiver<Frame>,
    welcome: Value,
}

impl Client {
    async fn connect(addr: SocketAddr, lobby: &str, user: &str) -> Self {
        let url = format!("ws://{addr}/ws/{lobby}?token={user}");
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the upgrade of {user}"))
            .expect("upgrade succeeds");
        let (sink, mut stream) = socket.split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Reading also flushes the automatic pong and close replies.
            while let Some(Ok(message)) = stream.next().await {
                let frame = match message {
                    Message::Text(text) => Frame::Json(
                        serde_json::from_str(text.as_str()).expect("server frames are JSON"),
                    ),
                    Message::Close(close) => {
                        Frame::Close(close.map(|c| (u16::from(c.code), c.reason.to_string())))
                    }
                    _ => continue,
                };
                let _ = tx.send(frame);
            }
        });
        let mut client = Self {
            sink,
            frames,
            welcome: Value::Null,
        };
        client.welcome = client.json(&format!("welcome for {user}")).await;
        assert_eq!(client.welcome["type"], "welcome", "first frame");
        client
    }

    fn id(&self) -> &str {
        self.welcome["connection_id"]
            .as_str()
            .expect("welcome has a connection_id")
    }

    async fn send(&mut self, frame: Value) {
        self.sink
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("client send");
    }

    async fn next(&mut self, what: &str) -> Frame {
        tokio::time::timeout(WAIT, self.frames.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("socket ended while waiting for {what}"))
    }

    async fn json(&mut self, what: &str) -> Value {
        match self.next(what).await {
            Frame::Json(value) => value,
            other => panic!("expected {what}, got {other:?}"),
        }
    }

    /// Proves the connection is open and its queue drained up to now: a `presence` round trip.
    async fn still_open(&mut self) {
        self.send(json!({"type": "presence"})).await;
        let answer = self.json("presence answer").await;
        assert_eq!(answer["type"], "presence", "{answer}");
    }
}

// ---------------------------------------------------------------------------------------------
// (a) the handler hears connects, application messages and disconnects with their reasons.

#[tokio::test]
async fn handler_sees_app_messages_and_every_connection_event() {
    let mut app = recorded_app().await;
    let mut alice = Client::connect(app.addr, "room-1", "alice").await;

    let Seen::Connect(info) = app.next("alice's connect").await else {
        panic!("expected a connect first");
    };
    assert_eq!(info.id.as_str(), alice.id());
    assert_eq!(info.user_id.as_str(), "alice");
    let lobbies = app.manager.lobbies_of(info.id.as_str()).expect("connected");
    assert_eq!(lobbies.len(), 1);
    assert_eq!(lobbies[0].as_str(), "room-1");
    assert_eq!(info.ip, std::net::IpAddr::from([127, 0, 0, 1]));

    // A type the protocol does not define goes to the handler, byte for byte.
    let text = r#"{"type":"game_move","id":7,"x":1,"y":[2,3]}"#;
    alice
        .sink
        .send(Message::Text(text.into()))
        .await
        .expect("client send");
    match app.next("alice's game_move").await {
        Seen::Message {
            conn,
            kind,
            text: got,
        } => {
            assert_eq!(kind, "game_move");
            assert_eq!(got, text);
            assert_eq!(conn.id.as_str(), alice.id());
            assert_eq!(conn.user_id.as_str(), "alice");
        }
        other => panic!("expected alice's message, got {other:?}"),
    }
    // Accepted: no error frame; the next frame is the presence answer.
    alice.still_open().await;

    // A client close.
    alice.sink.close().await.expect("client close");
    match app.next("alice's disconnect").await {
        Seen::Disconnect(conn, reason) => {
            assert_eq!(conn.id.as_str(), alice.id());
            assert_eq!(reason, DisconnectReason::ClientClosed);
        }
        other => panic!("expected alice's disconnect, got {other:?}"),
    }
    // `on_disconnect` runs after the connection left every index.
    assert_eq!(app.manager.stats().total_connections, 0);
    assert!(app.manager.connection(alice.id()).is_none());

    // A kick by the backend: 4009 to the client, `Kicked` to the handler.
    let mut bob = Client::connect(app.addr, "room-1", "bob").await;
    assert!(
        matches!(app.next("bob's connect").await, Seen::Connect(c) if c.user_id.as_str() == "bob")
    );
    assert_eq!(
        app.manager
            .disconnect_user("bob", DisconnectReason::Kicked)
            .await,
        1
    );
    match bob.next("bob's close frame").await {
        Frame::Close(close) => assert_eq!(close, Some((4009, "kicked".to_owned()))),
        other => panic!("expected a close frame, got {other:?}"),
    }
    match app.next("bob's disconnect").await {
        Seen::Disconnect(conn, reason) => {
            assert_eq!(conn.id.as_str(), bob.id());
            assert_eq!(reason, DisconnectReason::Kicked);
        }
        other => panic!("expected bob's disconnect, got {other:?}"),
    }
    let stats = app.manager.stats();
    assert_eq!(
        (stats.total_connections, stats.users, stats.active_lobbies),
        (0, 0, 0)
    );
    assert_eq!(stats.closes.get("kicked"), Some(&1));
    assert_eq!(stats.closes.get("client_closed"), Some(&1));
}

// (b) a handler's refusal is an `error` frame echoing the frame's id; the connection stays open.

#[tokio::test]
async fn handler_refusal_is_an_error_frame_and_the_connection_stays_open() {
    let mut app = recorded_app().await;
    let mut alice = Client::connect(app.addr, "room-1", "alice").await;
    assert!(matches!(
        app.next("alice's connect").await,
        Seen::Connect(_)
    ));

    alice
        .send(json!({"type": "forbidden", "id": "req-1"}))
        .await;
    let error = alice.json("error for req-1").await;
    assert_eq!(
        error,
        json!({"type": "error", "code": "not_allowed", "message": "no forbidden things here", "id": "req-1"})
    );

    alice.send(json!({"type": "forbidden", "id": 42})).await;
    let error = alice.json("error for id 42").await;
    assert_eq!(error["code"], "not_allowed");
    assert_eq!(error["id"], 42);

    alice.send(json!({"type": "forbidden"})).await;
    let error = alice.json("error without id").await;
    assert_eq!(error["code"], "not_allowed");
    assert!(error.get("id").is_none(), "no id to echo: {error}");

    // Still open, and still handled.
    alice.still_open().await;
    alice.send(json!({"type": "chat"})).await;
    assert!(matches!(app.next("alice's chat").await, Seen::Message { kind, .. } if kind == "chat"));
    assert_eq!(app.manager.stats().total_connections, 1);
}

// (c) without a handler, application messages are refused with `unknown_type`.

#[tokio::test]
async fn default_handler_answers_unknown_type() {
    let manager = Manager::new(config()).expect("valid config");
    let addr = serve(&manager).await;
    let mut alice = Client::connect(addr, "room-1", "alice").await;

    alice.send(json!({"type": "game_move", "id": 3})).await;
    let error = alice.json("unknown_type error").await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unknown_type");
    assert_eq!(error["id"], 3);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("game_move")),
        "{error}"
    );
    alice.still_open().await;
}

// (d) a protocol ping measures the round trip, and the latency is then known.

#[tokio::test]
async fn ping_measures_round_trip_and_latency() {
    let manager = Manager::new(config()).expect("valid config");
    let addr = serve(&manager).await;
    let alice = Client::connect(addr, "room-1", "alice").await;
    assert_eq!(manager.latency(alice.id()), None, "no pong yet");

    let rtt = manager
        .ping(alice.id(), WAIT)
        .await
        .expect("pong within WAIT");
    assert!(rtt < WAIT, "{rtt:?}");
    let latency = manager.latency(alice.id()).expect("latency after a pong");
    assert!(latency < WAIT, "{latency:?}");

    assert!(matches!(
        manager.ping("no-such-connection", WAIT).await,
        Err(switchboard::Error::NoSuchConnection)
    ));
}

// (e) the backend sends to one connection: a `direct` frame from nobody, to that tab only.

#[tokio::test]
async fn send_to_connection_delivers_direct_from_null() {
    let manager = Manager::new(config()).expect("valid config");
    let addr = serve(&manager).await;
    let mut tab1 = Client::connect(addr, "room-1", "alice").await;
    let mut tab2 = Client::connect(addr, "room-1", "alice").await;

    manager
        .send_to_connection(tab1.id(), &json!({"k": [1, 2]}))
        .await
        .expect("tab1 is connected");
    let direct = tab1.json("direct to tab1").await;
    assert_eq!(
        direct,
        json!({"type": "direct", "from": null, "data": {"k": [1, 2]}})
    );

    // tab2 did not get it: the next thing it receives is what was sent to it afterwards.
    manager
        .send_to_connection(tab2.id(), &"second")
        .await
        .expect("tab2 is connected");
    let direct = tab2.json("direct to tab2").await;
    assert_eq!(
        direct,
        json!({"type": "direct", "from": null, "data": "second"})
    );

    assert!(matches!(
        manager.send_to_connection("nope-1", &1).await,
        Err(switchboard::Error::NoSuchConnection)
    ));
}

// (f) a backend broadcast can skip every connection of one user.

#[tokio::test]
async fn broadcast_skips_the_excluded_users_connections() {
    let manager = Manager::new(config()).expect("valid config");
    let addr = serve(&manager).await;
    let mut alice1 = Client::connect(addr, "room-1", "alice").await;
    let mut alice2 = Client::connect(addr, "room-1", "alice").await;
    let mut bob = Client::connect(addr, "room-1", "bob").await;
    // Each `welcome` is queued at registration: all four are registered now.
    let mut carol = Client::connect(addr, "room-2", "carol").await;

    let reached = manager
        .broadcast("room-1", &json!({"n": 1}), Skip::User("alice"))
        .expect("valid lobby");
    assert_eq!(reached, 1, "only bob");
    let message = bob.json("first broadcast at bob").await;
    assert_eq!(
        message,
        json!({"type": "message", "lobby": "room-1", "from": null, "data": {"n": 1}, "offset": 1})
    );

    let reached = manager
        .broadcast("room-1", &json!({"n": 2}), Skip::Nobody)
        .expect("valid lobby");
    assert_eq!(reached, 3, "both of alice's tabs and bob");
    // Alice's tabs see the second broadcast first: the first one skipped them.
    for (tab, name) in [
        (&mut alice1, "alice's tab 1"),
        (&mut alice2, "alice's tab 2"),
    ] {
        let message = tab.json(&format!("second broadcast at {name}")).await;
        assert_eq!(message["data"], json!({"n": 2}), "{name}: {message}");
    }
    assert_eq!(
        bob.json("second broadcast at bob").await["data"],
        json!({"n": 2})
    );
    // Another lobby hears nothing.
    carol.still_open().await;
}

// ---------------------------------------------------------------------------------------------
// A handler that answers through the `Client` it is handed:
// - on connect, `{"hello": USER}` (when `greet`);
// - `echo`: `{"echo": data}` at once;
// - `later` / `fail_later`: after `after_ms`, from a spawned task, `{"id": id, "echo": data}`
//   or an `error` frame echoing the frame's id;
// - `poke`: `{"poke": USER}` to every connection of user `to`, then `{"poked": n}` back;
// - `shout`: broadcasts `data` to the lobby (`exclude_self`), then `{"reached": n}` back;
// - `quit`: closes the connection as kicked;
// - `work`: `{"working": true}` at once; a spawned task reports `work done` after `ms`, and
//   spawns another that reports `follow-up done` 100 ms later.
// Disconnects are reported as `disconnect USER REASON`.

struct Answering {
    greet: bool,
    events: mpsc::UnboundedSender<String>,
}

impl Handler for Answering {
    fn on_connect(&self, client: &switchboard::Client) {
        if self.greet {
            let user = client.info().user_id.as_str();
            client.reply(&json!({ "hello": user })).expect("queued");
        }
    }

    fn on_message(
        &self,
        client: &switchboard::Client,
        message: AppMessage<'_>,
    ) -> Result<(), ClientError> {
        let frame: Value = serde_json::from_str(message.text).expect("frames are JSON");
        let data = frame["data"].clone();
        let user = client.info().user_id.as_str();
        match message.kind {
            "echo" => client.reply(&json!({ "echo": data })).expect("queued"),
            "later" | "fail_later" => {
                let after = Duration::from_millis(frame["after_ms"].as_u64().unwrap_or(0));
                let fail = message.kind == "fail_later";
                let id = message.id.map(ToOwned::to_owned);
                let answer = client.clone();
                client.spawn(async move {
                    tokio::time::sleep(after).await;
                    let sent = if fail {
                        let error = ClientError::new(ErrorCode::NotAllowed, "refused later");
                        answer.reply_error(&error, id.as_deref())
                    } else {
                        answer.reply(&json!({ "id": id, "echo": data }))
                    };
                    sent.expect("still connected");
                });
            }
            "poke" => {
                let to = frame["to"].as_str().unwrap_or_default();
                let poked = client
                    .send_to_user(to, &json!({ "poke": user }))
                    .expect("sent");
                client.reply(&json!({ "poked": poked })).expect("queued");
            }
            "shout" => {
                let exclude_self = frame["exclude_self"] == true;
                let lobby = client.lobbies().pop().expect("in its lobby");
                let reached = client
                    .broadcast(lobby.as_str(), &data, exclude_self)
                    .expect("published");
                client
                    .reply(&json!({ "reached": reached }))
                    .expect("queued");
            }
            "quit" => {
                assert!(client.close(DisconnectReason::Kicked), "first close");
                assert!(
                    !client.close(DisconnectReason::Stale),
                    "the first reason wins"
                );
            }
            "work" => {
                let ms = Duration::from_millis(frame["ms"].as_u64().unwrap_or(0));
                let (worker, events) = (client.clone(), self.events.clone());
                client.spawn(async move {
                    tokio::time::sleep(ms).await;
                    let _ = events.send("work done".to_owned());
                    // Spawned while shutdown waits: waited for too.
                    worker.spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = events.send("follow-up done".to_owned());
                    });
                });
                client.reply(&json!({ "working": true })).expect("queued");
            }
            other => {
                return Err(ClientError::new(
                    ErrorCode::UnknownType,
                    format!("unknown `{other}`"),
                ));
            }
        }
        Ok(())
    }

    fn on_disconnect(&self, conn: &ConnectionInfo, reason: DisconnectReason) {
        let _ = self
            .events
            .send(format!("disconnect {} {reason}", conn.user_id));
    }
}

struct Answered {
    manager: Manager,
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<String>,
}

async fn answering_app(greet: bool) -> Answered {
    let (tx, events) = mpsc::unbounded_channel();
    let handler = Answering { greet, events: tx };
    let manager = Manager::with_handler(config(), handler).expect("valid config");
    let addr = serve(&manager).await;
    Answered {
        manager,
        addr,
        events,
    }
}

impl Answered {
    async fn event(&mut self, what: &str) -> String {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("event channel open")
    }
}

// (g) a handler answers through its client: a greeting after `welcome`, a reply to this
// connection only, a `direct` to every connection of another user.

#[tokio::test]
async fn handler_replies_through_its_client() {
    let app = answering_app(true).await;
    let mut tab1 = Client::connect(app.addr, "room-1", "alice").await;
    let mut tab2 = Client::connect(app.addr, "room-1", "alice").await;
    for (tab, name) in [(&mut tab1, "tab 1"), (&mut tab2, "tab 2")] {
        let hello = tab.json(&format!("greeting at {name}")).await;
        assert_eq!(
            hello,
            json!({"type": "direct", "from": null, "data": {"hello": "alice"}})
        );
    }

    // A reply goes to the asking connection only, from the backend.
    tab1.send(json!({"type": "echo", "data": [1, "two"]})).await;
    let echo = tab1.json("echo at tab 1").await;
    assert_eq!(
        echo,
        json!({"type": "direct", "from": null, "data": {"echo": [1, "two"]}})
    );
    tab2.still_open().await;

    // `send_to_user` reaches every connection of the user, wherever it is.
    let mut bob1 = Client::connect(app.addr, "room-1", "bob").await;
    let mut bob2 = Client::connect(app.addr, "room-9", "bob").await;
    for bob in [&mut bob1, &mut bob2] {
        assert_eq!(bob.json("bob's greeting").await["data"]["hello"], "bob");
    }
    tab2.send(json!({"type": "poke", "to": "bob"})).await;
    assert_eq!(tab2.json("poke count").await["data"], json!({"poked": 2}));
    for bob in [&mut bob1, &mut bob2] {
        let poke = bob.json("poke at bob").await;
        assert_eq!(
            poke,
            json!({"type": "direct", "from": null, "data": {"poke": "alice"}})
        );
    }
    tab1.still_open().await;
}

// (h) a spawned task answers later, with the frame's id; the connection is served meanwhile.

#[tokio::test]
async fn spawned_task_answers_later_with_the_frames_id() {
    let app = answering_app(false).await;
    let mut alice = Client::connect(app.addr, "room-1", "alice").await;

    alice
        .send(json!({"type": "later", "id": "q-1", "after_ms": 300, "data": "slow"}))
        .await;
    alice
        .send(json!({"type": "fail_later", "id": 7, "after_ms": 150}))
        .await;
    // Not blocked by the work under way: answered at once.
    alice.send(json!({"type": "echo", "data": "fast"})).await;
    let echo = alice.json("the immediate echo").await;
    assert_eq!(echo["data"], json!({"echo": "fast"}));

    let error = alice.json("the late error").await;
    assert_eq!(
        error,
        json!({"type": "error", "code": "not_allowed", "message": "refused later", "id": 7})
    );
    let answer = alice.json("the late answer").await;
    assert_eq!(
        answer,
        json!({"type": "direct", "from": null, "data": {"id": "q-1", "echo": "slow"}})
    );

    // Without an id, nothing to echo.
    alice.send(json!({"type": "fail_later"})).await;
    let error = alice.json("a late error without id").await;
    assert_eq!(error["code"], "not_allowed");
    assert!(error.get("id").is_none(), "{error}");
    alice.still_open().await;
}

// (i) a handler closes its client: the close code reaches the client, nothing sent after
// the closing frame is handled, and the handler hears why.

#[tokio::test]
async fn handler_closes_its_client() {
    let mut app = answering_app(false).await;
    let mut alice = Client::connect(app.addr, "room-1", "alice").await;

    // In one write: the echo is read with the quit, or not at all.
    for frame in [json!({"type": "quit"}), json!({"type": "echo", "data": 1})] {
        alice
            .sink
            .feed(Message::Text(frame.to_string().into()))
            .await
            .expect("client send");
    }
    alice.sink.flush().await.expect("client flush");
    match alice.next("alice's close frame").await {
        Frame::Close(close) => assert_eq!(close, Some((4009, "kicked".to_owned()))),
        other => panic!("expected the close frame, got {other:?}"),
    }
    assert_eq!(
        app.event("alice's disconnect").await,
        "disconnect alice kicked"
    );
    assert_eq!(app.manager.stats().closes.get("kicked"), Some(&1));
}

// (j) a handler's broadcast reaches the lobby (from the backend), skipping the asking
// connection if it says so, and no other lobby.

#[tokio::test]
async fn handler_broadcast_reaches_the_lobby() {
    let app = answering_app(false).await;
    let mut alice = Client::connect(app.addr, "room-1", "alice").await;
    let mut alice2 = Client::connect(app.addr, "room-1", "alice").await;
    let mut bob = Client::connect(app.addr, "room-1", "bob").await;
    let mut carol = Client::connect(app.addr, "room-2", "carol").await;

    alice
        .send(json!({"type": "shout", "data": {"n": 1}, "exclude_self": true}))
        .await;
    assert_eq!(
        alice.json("reach of the first shout").await["data"],
        json!({"reached": 2}),
        "alice's other tab and bob"
    );
    for (tab, name) in [(&mut alice2, "alice's tab 2"), (&mut bob, "bob")] {
        let message = tab.json(&format!("first shout at {name}")).await;
        assert_eq!(
            message,
            json!({"type": "message", "lobby": "room-1", "from": null, "data": {"n": 1}, "offset": 1}),
            "{name}"
        );
    }

    alice.send(json!({"type": "shout", "data": {"n": 2}})).await;
    let message = alice.json("second shout at alice").await;
    assert_eq!(message["data"], json!({"n": 2}), "{message}");
    assert_eq!(message["offset"], 2, "{message}");
    assert_eq!(
        alice.json("reach of the second shout").await["data"],
        json!({"reached": 3})
    );
    for (tab, name) in [(&mut alice2, "alice's tab 2"), (&mut bob, "bob")] {
        let message = tab.json(&format!("second shout at {name}")).await;
        assert_eq!(message["data"], json!({"n": 2}), "{name}: {message}");
    }
    // Another lobby hears nothing.
    carol.still_open().await;
}

// (k) graceful shutdown waits for the tasks handlers spawned, those spawned while it waits
// included.

#[tokio::test]
async fn shutdown_waits_for_spawned_tasks() {
    let mut app = answering_app(false).await;
    let mut alice = Client::connect(app.addr, "room-1", "alice").await;

    alice.send(json!({"type": "work", "ms": 300})).await;
    assert_eq!(
        alice.json("work started").await["data"],
        json!({"working": true})
    );
    let started = std::time::Instant::now();
    assert!(
        app.manager.shutdown(Duration::ZERO, WAIT).await,
        "everything ended in time"
    );
    let waited = started.elapsed();
    assert_eq!(alice.json("alice's goodbye").await["code"], 1001);
    match alice.next("alice's close frame").await {
        Frame::Close(close) => assert_eq!(close.map(|c| c.0), Some(1001)),
        other => panic!("expected the close frame, got {other:?}"),
    }
    // Everything happened before `shutdown` returned: the events are all queued.
    let mut events = Vec::new();
    while let Ok(event) = app.events.try_recv() {
        events.push(event);
    }
    events.sort();
    assert_eq!(
        events,
        [
            "disconnect alice server_shutdown",
            "follow-up done",
            "work done"
        ],
    );
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
}

// (l) the same over Server-Sent Events: frames posted for the connection reach the handler,
// its answers arrive as events, and its close ends the stream.

/// The next SSE event of `body` (comments skipped): its name and its JSON data.
async fn next_event(body: &mut axum::body::BodyDataStream, what: &str) -> (String, Value) {
    loop {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
            .expect("body chunk");
        let text = std::str::from_utf8(&chunk).expect("UTF-8 events");
        let mut kind = None;
        let mut data = String::new();
        for line in text.lines() {
            if let Some(k) = line.strip_prefix("event: ") {
                kind = Some(k.to_owned());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if let Some(kind) = kind {
            let data = serde_json::from_str(&data).expect("event data is JSON");
            return (kind, data);
        }
    }
}

#[tokio::test]
async fn sse_client_is_answered_and_closed_by_its_handler() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let handler = Answering {
        greet: true,
        events: tx,
    };
    let manager = Manager::with_handler(config(), handler).expect("valid config");
    let request = ConnectRequest::new(
        switchboard::LobbyCode::parse("room-1").expect("valid lobby"),
        UserId::parse("alice").expect("valid user"),
        std::net::IpAddr::from([127, 0, 0, 1]),
    );
    let response = manager.accept_sse(request).await;
    assert!(response.status().is_success(), "{}", response.status());
    let mut body = response.into_body().into_data_stream();

    let (kind, welcome) = next_event(&mut body, "welcome").await;
    assert_eq!(kind, "welcome");
    let id = welcome["connection_id"].as_str().expect("an id").to_owned();
    let (kind, hello) = next_event(&mut body, "the greeting").await;
    assert_eq!(
        (kind.as_str(), &hello["data"]),
        ("direct", &json!({"hello": "alice"}))
    );

    let post = |frame: Value| {
        let (manager, id) = (manager.clone(), id.clone());
        async move {
            manager
                .sse_post(&id, "alice", "room-1", &frame.to_string())
                .await
                .expect("posted");
        }
    };
    post(json!({"type": "later", "id": "s-1", "after_ms": 100, "data": "b"})).await;
    post(json!({"type": "echo", "data": "a"})).await;
    let (_, echo) = next_event(&mut body, "the echo").await;
    assert_eq!(echo["data"], json!({"echo": "a"}));
    let (_, later) = next_event(&mut body, "the late answer").await;
    assert_eq!(later["data"], json!({"id": "s-1", "echo": "b"}));

    post(json!({"type": "quit"})).await;
    let (kind, close) = next_event(&mut body, "the close event").await;
    assert_eq!(
        (kind.as_str(), close),
        ("close", json!({"code": 4009, "reason": "kicked"}))
    );
    let event = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("the disconnect in time");
    assert_eq!(event.as_deref(), Some("disconnect alice kicked"));
}
