//! Test helpers: a real server on port 0 and real WebSocket clients.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod deflate;
pub mod redis;
pub mod sse;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_server::{RunningServer, ServerConfig};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// An HS256 secret long enough for the server (32 bytes at least).
pub const TEST_SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

/// Whether a test's settings configure a JWT key: then the server runs without dev mode.
fn configures_jwt(env: &[(&str, &str)]) -> bool {
    env.iter().any(|(k, _)| {
        matches!(
            *k,
            "SWITCHBOARD_AUTH__JWT_SECRET"
                | "SWITCHBOARD_AUTH__JWT_PUBLIC_KEY_FILE"
                | "SWITCHBOARD_DEV_MODE"
        )
    })
}

/// Starts a server on 127.0.0.1:0 in dev mode (unless `tune` sets a JWT key or a connect
/// proxy), with rate
/// limits off (tests connect fast from one IP; `rate_limits.rs` turns them on), after `tune`.
pub async fn server(tune: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        drain: Duration::from_millis(200),
        deadline: Duration::from_secs(3),
        dev_mode: true,
        ..ServerConfig::default()
    };
    config.manager.rate.connects_per_ip_per_sec = 0;
    config.manager.rate.messages_per_sec = 0;
    tune(&mut config);
    let decided_elsewhere = config.jwt_secret.is_some()
        || config.jwt_public_key_file.is_some()
        || config.proxy.connect_url.is_some();
    if decided_elsewhere {
        config.dev_mode = false;
    }
    switchboard_server::spawn(config)
        .await
        .expect("server starts")
}

pub struct Client {
    pub ws: WebSocketStream<TcpStream>,
    pub welcome: Value,
}

/// What a refused or closed connection saw at its end.
#[derive(Debug)]
pub struct Ending {
    pub goodbye: Option<Value>,
    pub code: Option<u16>,
    pub reason: String,
}

pub async fn raw_connect(addr: SocketAddr, path: &str, from: IpAddr) -> WebSocketStream<TcpStream> {
    try_raw_connect(addr, path, from)
        .await
        .expect("upgrade succeeds")
}

pub async fn try_raw_connect(
    addr: SocketAddr,
    path: &str,
    from: IpAddr,
) -> Result<WebSocketStream<TcpStream>, tungstenite::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(addr).await.expect("tcp connect");
    let url = format!("ws://{addr}{path}");
    client_async(url, stream).await.map(|(ws, _)| ws)
}

/// Connects from 127.0.0.1 as `user` (dev mode) and waits for `welcome`.
pub async fn connect(addr: SocketAddr, lobby: &str, user: &str) -> Client {
    connect_from(addr, lobby, user, [127, 0, 0, 1].into()).await
}

pub async fn connect_from(addr: SocketAddr, lobby: &str, user: &str, from: IpAddr) -> Client {
    let ws = raw_connect(addr, &format!("/ws/{lobby}?token={user}"), from).await;
    let mut client = Client {
        ws,
        welcome: Value::Null,
    };
    client.welcome = client
        .expect("welcome", &format!("welcome for {user}"))
        .await;
    client
}

/// Connects and expects to be refused: returns the goodbye and close frame seen.
pub async fn connect_refused(addr: SocketAddr, lobby: &str, user: &str, from: IpAddr) -> Ending {
    let ws = raw_connect(addr, &format!("/ws/{lobby}?token={user}"), from).await;
    let mut client = Client {
        ws,
        welcome: Value::Null,
    };
    client.ending(&format!("refusal of {user}")).await
}

impl Client {
    pub fn id(&self) -> &str {
        self.welcome["connection_id"].as_str().unwrap()
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next JSON frame that is not a `health_ping`.
    pub async fn next_json(&mut self, what: &str) -> Value {
        loop {
            let v = self.next_any(what).await;
            if v["type"] != "health_ping" {
                return v;
            }
        }
    }

    /// The next JSON frame, `health_ping`s included.
    pub async fn next_any(&mut self, what: &str) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("stream ended waiting for {what}"))
                .unwrap_or_else(|e| panic!("error waiting for {what}: {e}"));
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Close(c) => panic!("closed ({c:?}) while waiting for {what}"),
                _ => {}
            }
        }
    }

    /// The next frame, which must have type `ty`.
    pub async fn expect(&mut self, ty: &str, what: &str) -> Value {
        let v = self.next_json(what).await;
        assert_eq!(v["type"], ty, "waiting for {what}, got {v}");
        v
    }

    /// Reads until the close frame; returns it with the goodbye before it, if any. Fails on
    /// any other data frame unless `skip_data`.
    pub async fn ending(&mut self, what: &str) -> Ending {
        self.ending_inner(what, false).await
    }

    pub async fn ending_skipping_data(&mut self, what: &str) -> Ending {
        self.ending_inner(what, true).await
    }

    async fn ending_inner(&mut self, what: &str, skip_data: bool) -> Ending {
        let mut goodbye = None;
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for the close of {what}"));
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["type"].as_str() {
                        Some("goodbye") => goodbye = Some(v),
                        Some("health_ping") => {}
                        _ if skip_data => {}
                        _ => panic!("unexpected frame before the close of {what}: {v}"),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|CloseFrame { code, reason }| {
                            (Some(u16::from(code)), reason.to_string())
                        })
                        .unwrap_or((None, String::new()));
                    return Ending {
                        goodbye,
                        code,
                        reason,
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("error before the close of {what}: {e}"),
                None => panic!("stream ended without a close frame for {what}"),
            }
        }
    }

    /// Closes politely and waits for the server's close reply.
    pub async fn close(mut self) {
        self.ws.close(None).await.expect("close");
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

impl Ending {
    /// Asserts the close code and reason, and that a goodbye came first exactly when expected.
    pub fn assert(&self, code: u16, reason: &str, goodbye: bool) {
        assert_eq!(self.code, Some(code), "close code of {self:?}");
        assert_eq!(self.reason, reason, "close reason of {self:?}");
        match &self.goodbye {
            Some(g) if goodbye => {
                assert_eq!(g["code"], code);
                assert_eq!(g["reason"], reason);
                assert!(
                    g["retry_after_ms"].as_u64().is_some(),
                    "retry_after_ms in {g}"
                );
            }
            None if !goodbye => {}
            other => panic!("goodbye expected: {goodbye}, got {other:?}"),
        }
    }
}

/// Polls `check` until it holds, for at most [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the server holds no connection, lobby or user.
pub async fn all_clean(server: &RunningServer) {
    eventually("stats are back to zero", || {
        let s = server.manager.stats();
        s.total_connections == 0 && s.active_lobbies == 0 && s.users == 0
    })
    .await;
}

pub fn broadcast(data: Value) -> Value {
    json!({"type": "broadcast", "data": data})
}

pub fn ip(last: u8) -> IpAddr {
    [127, 0, 0, last].into()
}

/// What a backend does with a signed request (webhooks, proxy, RPC): recompute the HMAC of
/// "t.body" and accept any matching `v1=`.
pub fn verify_signature(secret: &str, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let Some(header) = headers
        .get("switchboard-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => signatures.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    signatures.contains(&expected)
}

/// An HTTP/1.1 response: status, headers (lower-cased names) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body's bytes as they came (de-chunked, not decoded).
    pub bytes: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The stable error code of a `{"error":{"code":..}}` body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// One HTTP request over a fresh TCP connection (`Connection: close`), with an optional bearer
/// key and JSON body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> HttpResponse {
    http_with(addr, method, path, key, body, &[]).await
}

pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
    extra_headers: &[(&str, &str)],
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect for HTTP");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(key) = key {
        req.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    for (name, value) in extra_headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .await
        .expect("send HTTP request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the answer to {method} {path}"))
        .expect("read HTTP response");
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match head_end {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => (&raw[..], &[][..]),
    };
    let text = String::from_utf8_lossy(head).to_string();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let bytes = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let gzip = headers
        .iter()
        .any(|(n, v)| n == "content-encoding" && v == "gzip");
    let body = if gzip {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .expect("a gzip body");
        text
    } else {
        String::from_utf8_lossy(&bytes).to_string()
    };
    HttpResponse {
        status,
        headers,
        body,
        bytes,
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let rest = &body[end + 2..];
        out.extend_from_slice(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A real `switchboard` process, its stderr (logs) written to a file; killed on drop if still
/// running.
pub struct Process {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub log: std::path::PathBuf,
}

impl Process {
    /// Starts the binary with `env` (and `--config FILE` when given) on 127.0.0.1:0 and waits
    /// for its `listening on` line. It runs with `--dev` unless `env` sets a JWT key or
    /// `SWITCHBOARD_DEV_MODE`.
    pub fn start(env: &[(&str, &str)], config_file: Option<&std::path::Path>) -> Process {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.env("SWITCHBOARD_BIND", "127.0.0.1:0");
        if !configures_jwt(env) {
            cmd.arg("--dev");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(file) = config_file {
            cmd.arg("--config").arg(file);
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("switchboard-test-{}-{n}.log", std::process::id()));
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("binary starts");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line was {line:?}"))
            .parse()
            .unwrap();
        let admin_addr = if env.iter().any(|(k, _)| *k == "SWITCHBOARD_ADMIN_BIND") {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            Some(
                line.trim()
                    .strip_prefix("admin listening on ")
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        } else {
            None
        };
        Process {
            child,
            addr,
            admin_addr,
            log,
        }
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal`; after `STOP`, returns once every thread of the process has stopped.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        if signal == "STOP" {
            self.await_stopped();
        }
    }

    /// A stop is pending on the process, not done, when `kill` returns: one thread takes it
    /// and stops the others, and on a busy machine another thread may still run (and answer
    /// a question) meanwhile. Nothing announces the end, so the threads' states are polled.
    fn await_stopped(&self) {
        let tasks = format!("/proc/{}/task", self.child.id());
        let stopped = |stat: String| {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            state.is_some_and(|s| s.starts_with('T') || s.starts_with('t'))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let all = std::fs::read_dir(&tasks).unwrap().all(|task| {
                let path = task.unwrap().path().join("stat");
                std::fs::read_to_string(path).map_or(true, stopped)
            });
            if all {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the process never stopped"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the process to exit (at most `within`), returning its status.
    pub async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Connects offering protocol v2 (`switchboard.v2`) to `path` (e.g. `/ws?token=alice` or
/// `/ws/room?token=alice`) and waits for `welcome`.
pub async fn connect_v2(addr: SocketAddr, path: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new([127, 0, 0, 1].into(), 0))
        .unwrap();
    let stream = socket.connect(addr).await.expect("tcp connect");
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "switchboard.v2".parse().unwrap());
    let (ws, response) = client_async(request, stream)
        .await
        .expect("upgrade succeeds");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "switchboard.v2",
        "the server speaks v2"
    );
    let mut client = Client {
        ws,
        welcome: Value::Null,
    };
    client.welcome = client.expect("welcome", path).await;
    client
}

impl Client {
    /// Sends a v2 `join` with `id` and returns the `joined` answer (failing on anything else).
    pub async fn join(&mut self, lobby: &str, id: u64) -> Value {
        self.send(json!({"type": "join", "lobby": lobby, "id": id}))
            .await;
        let joined = self.next_json(&format!("joined {lobby}")).await;
        assert_eq!(joined["type"], "joined", "join {lobby}: {joined}");
        assert_eq!(joined["id"], id);
        joined
    }

    /// Sends a frame with `id` and returns the `error` it must be refused with.
    pub async fn refused(&mut self, frame: Value, what: &str) -> Value {
        self.send(frame).await;
        self.expect("error", what).await
    }
}
