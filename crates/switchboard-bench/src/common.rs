//! What every scenario shares: options, source addresses, tokens, progress lines, latency.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::cli::Common;
use crate::client::{ConnectError, Route, Target, Ws};
use crate::procfs::Server;

/// The run's shared context.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) scenario: String,
    pub(crate) label: String,
    pub(crate) target: Target,
    pub(crate) server: Server,
    pub(crate) concurrency: usize,
    pub(crate) max_secs: f64,
    pub(crate) user_prefix: String,
    jwt: Option<jsonwebtoken::EncodingKey>,
    ip_base: u8,
    per_ip: u64,
    next_socket: Cell<u64>,
    /// Connections (through [`connect_to`](Self::connect_to)) on which the server accepted
    /// permessage-deflate.
    deflate_negotiated: Cell<u64>,
    pub(crate) started: Instant,
}

impl Ctx {
    pub(crate) fn new(scenario: &str, o: &Common) -> Rc<Self> {
        let jwt = o
            .jwt_secret
            .as_ref()
            .map(|s| jsonwebtoken::EncodingKey::from_secret(s.as_bytes()));
        Rc::new(Self {
            scenario: scenario.to_owned(),
            label: o.label.clone(),
            target: Target {
                server: o.addr,
                timeout: Duration::from_secs_f64(o.connect_timeout),
                deflate: o.deflate,
            },
            server: Server { pid: o.server_pid },
            concurrency: o.concurrency,
            max_secs: o.max_secs,
            user_prefix: o.user_prefix.clone(),
            jwt,
            ip_base: o.ip_base,
            per_ip: o.per_ip,
            next_socket: Cell::new(0),
            deflate_negotiated: Cell::new(0),
            started: Instant::now(),
        })
    }

    /// The source address of the next socket: 127.BASE.X.Y from 127.BASE.0.2 on, a new one
    /// every `per_ip` sockets, so no address runs out of ephemeral ports (even in TIME_WAIT).
    pub(crate) fn next_source(&self) -> IpAddr {
        let n = self.next_socket.get();
        self.next_socket.set(n + 1);
        let k = n / self.per_ip.max(1);
        IpAddr::V4(Ipv4Addr::new(
            127,
            self.ip_base,
            (k / 250) as u8,
            2 + (k % 250) as u8,
        ))
    }

    /// Source addresses used so far.
    pub(crate) fn sources_used(&self) -> u64 {
        self.next_socket.get().div_ceil(self.per_ip.max(1))
    }

    /// A dev-mode token (the user id) or an HS256 JWT for `user`.
    pub(crate) fn token(&self, user: &str) -> String {
        let Some(key) = &self.jwt else {
            return user.to_owned();
        };
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3_600;
        let claims = json!({ "sub": user, "exp": exp });
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key).unwrap_or_default()
    }

    /// Connects `user` to `lobby` (protocol v1) from the next source address.
    pub(crate) async fn connect(&self, lobby: &str, user: &str) -> Result<Ws, ConnectError> {
        self.connect_to(&Route::Lobby(lobby.to_owned()), user).await
    }

    /// Connects `user` by `route` (v1 in a lobby, or v2 in none) from the next source address.
    pub(crate) async fn connect_to(&self, route: &Route, user: &str) -> Result<Ws, ConnectError> {
        let source = self.next_source();
        let ws = self
            .target
            .connect(source, route, &self.token(user))
            .await?;
        if ws.deflate() {
            self.deflate_negotiated
                .set(self.deflate_negotiated.get() + 1);
        }
        Ok(ws)
    }

    /// Prints a progress line on stderr: scenario, step, elapsed.
    pub(crate) fn progress(&self, step: &str, detail: impl std::fmt::Display) {
        eprintln!(
            "progress scenario={} server={} step={step} elapsed={:.1}s {detail}",
            self.scenario,
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Whole-run time left under `--max-secs`.
    pub(crate) fn time_left(&self) -> Duration {
        Duration::from_secs_f64(self.max_secs).saturating_sub(self.started.elapsed())
    }

    /// The summary every scenario starts from.
    pub(crate) fn summary(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(self.scenario));
        m.insert("server".into(), json!(self.label));
        m.insert("server_pid".into(), json!(self.server.pid));
        m.insert("deflate_offered".into(), json!(self.target.deflate));
        m.insert(
            "deflate_negotiated".into(),
            json!(self.deflate_negotiated.get()),
        );
        m
    }
}

/// Microseconds since the process's first call: send and receive times of the same process.
pub(crate) fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// p50 / p99 / p999 / max in milliseconds.
pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Counts of connect failures by kind.
#[derive(Debug, Default)]
pub(crate) struct Errors(std::collections::BTreeMap<String, u64>);

impl Errors {
    pub(crate) fn add(&mut self, e: &ConnectError) {
        *self.0.entry(e.label()).or_default() += 1;
    }
    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }
    pub(crate) fn json(&self) -> Value {
        json!(self.0)
    }
}

/// `GET url` (plain `http://HOST:PORT/PATH`, HTTP/1.0) with an optional bearer key; the body
/// as JSON.
pub(crate) async fn http_get_json(url: &str, key: Option<&str>) -> anyhow::Result<Value> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("the URL must be http://HOST:PORT/PATH")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let path = if path.is_empty() { "/" } else { path };
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    let start = crate::client::find(&body, b"\r\n\r\n").context("no HTTP body")? + 4;
    Ok(serde_json::from_slice(&body[start..])?)
}

/// Rounds for JSON output.
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}
