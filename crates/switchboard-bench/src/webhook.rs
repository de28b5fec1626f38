//! `webhook`: the server's webhooks under load. The load generator is the backend too: it
//! serves `POST /hook` on `--receiver` (the server is started with `webhook.url` pointing
//! there), and C clients in L lobbies send application messages (`{"type":"chat","n":N,
//! "t":MICROS}`) at an aggregate rate R for T seconds (one step per rate of `--rates`). The
//! server posts each as a `message` event; the receiver counts them by `n` and by `id`.
//!
//! Each step reports messages sent, events received, duplicates (the same `id` twice: delivery
//! is at least once), missing messages (sent, never posted: dropped by a full queue or a
//! failed batch), events/s received, batches and events per batch, the latency from the
//! event's `time` to its arrival (and from the client's send, which includes the frame's trip
//! through the server), and the server's CPU per event: the figure `webhook.batch_max` moves.
//!
//! The receiver answers 200 to every request, even one whose signature is wrong (counted, not
//! refused): a refusal would make the server drop the batch and the run would measure that
//! instead. `fanout --receiver` runs the same receiver beside a fan-out.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::Webhook;
use crate::client::{Frame, OP_TEXT, Route, Ws, field_str, find};
use crate::common::{Ctx, histogram, latency_json, now_us, round};
use crate::pool::{Tasks, connect_all};
use crate::procfs::cpu_secs;

/// A request body larger than this is refused (413) and counted as unreadable: the server's
/// batches are `batch_max` events of a few hundred bytes each.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One posted batch, as far as the receiver reads it.
#[derive(Deserialize)]
struct Batch {
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    /// Milliseconds since the epoch, when the server made the event.
    time: u64,
    /// A `message` event's frame: ours carry `n` and `t`.
    #[serde(default)]
    message: Option<Sent>,
}

#[derive(Deserialize)]
struct Sent {
    n: Option<u64>,
    t: Option<u64>,
}

/// Every event id seen. The server's ids are `<node>-<sequence>`, the sequence counting from 1:
/// one bit per sequence number and node keeps a long run at 20,000 events/s in a few MB (a set
/// of strings would take hundreds); any other id is kept whole.
#[derive(Debug, Default)]
struct Ids {
    by_node: HashMap<String, Vec<u64>>,
    other: HashSet<String>,
}

impl Ids {
    /// Sequence numbers above this are kept whole rather than as bits (a bitmap that size
    /// would be 128 MiB).
    const MAX_BIT: u64 = 1 << 30;

    /// Whether `id` is new (and remembers it).
    fn insert(&mut self, id: String) -> bool {
        let parsed = id
            .rsplit_once('-')
            .and_then(|(node, seq)| Some((node, seq.parse::<u64>().ok()?)))
            .filter(|(_, seq)| *seq < Self::MAX_BIT);
        let Some((node, seq)) = parsed else {
            return self.other.insert(id);
        };
        let bits = match self.by_node.get_mut(node) {
            Some(bits) => bits,
            None => self.by_node.entry(node.to_owned()).or_default(),
        };
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let new = bits[word] & bit == 0;
        bits[word] |= bit;
        new
    }
}

/// What the receiver has counted since the last [`Tally::reset`] (one step). Ids are
/// remembered across steps, so a late duplicate of an earlier step's event is still one.
#[derive(Debug)]
pub(crate) struct Tally {
    secret: Option<Vec<u8>>,
    ids: RefCell<Ids>,
    /// Our message numbers this step: `first_n..first_n + got.len()`; earlier ones are late
    /// arrivals of an earlier step and are not counted again.
    first_n: Cell<u64>,
    got: RefCell<Vec<bool>>,
    window_start: Cell<Instant>,
    events: Cell<u64>,
    by_type: RefCell<BTreeMap<String, u64>>,
    batches: Cell<u64>,
    duplicates: Cell<u64>,
    /// Distinct message numbers of this step that arrived.
    messages: Cell<u64>,
    /// A message number seen again under another id (the server posted one frame twice).
    repeated: Cell<u64>,
    bad_signatures: Cell<u64>,
    /// Requests whose body was not a batch (or too large).
    unreadable: Cell<u64>,
    last_message_at: Cell<Option<Instant>>,
    last_event_at: Cell<Option<Instant>>,
    /// Event `time` to arrival, µs (the `time` is whole milliseconds, truncated: this reads up
    /// to 1 ms high, 0.5 ms on average).
    latency: RefCell<Histogram<u64>>,
    /// The client's send to the event's arrival, µs (one clock: this process's).
    from_send: RefCell<Histogram<u64>>,
}

impl Tally {
    fn new(secret: Option<String>) -> Self {
        Self {
            secret: secret.map(String::into_bytes),
            ids: RefCell::default(),
            first_n: Cell::new(0),
            got: RefCell::default(),
            window_start: Cell::new(Instant::now()),
            events: Cell::new(0),
            by_type: RefCell::default(),
            batches: Cell::new(0),
            duplicates: Cell::new(0),
            messages: Cell::new(0),
            repeated: Cell::new(0),
            bad_signatures: Cell::new(0),
            unreadable: Cell::new(0),
            last_message_at: Cell::new(None),
            last_event_at: Cell::new(None),
            latency: RefCell::new(histogram()),
            from_send: RefCell::new(histogram()),
        }
    }

    /// Starts a step that expects messages `first_n..first_n + expected`.
    fn reset(&self, first_n: u64, expected: u64) {
        self.first_n.set(first_n);
        *self.got.borrow_mut() = vec![false; expected as usize];
        self.window_start.set(Instant::now());
        for c in [
            &self.events,
            &self.batches,
            &self.duplicates,
            &self.messages,
            &self.repeated,
            &self.bad_signatures,
            &self.unreadable,
        ] {
            c.set(0);
        }
        self.by_type.borrow_mut().clear();
        self.last_message_at.set(None);
        self.latency.borrow_mut().reset();
        self.from_send.borrow_mut().reset();
    }

    /// Counts one request: its signature, then each event.
    fn record(&self, signature: Option<&str>, body: &[u8]) {
        let arrived_us = wall_us();
        let now = Instant::now();
        self.batches.set(self.batches.get() + 1);
        if let Some(secret) = &self.secret
            && !verify(secret, signature, body)
        {
            self.bad_signatures.set(self.bad_signatures.get() + 1);
        }
        let Ok(batch) = serde_json::from_slice::<Batch>(body) else {
            self.unreadable.set(self.unreadable.get() + 1);
            return;
        };
        self.last_event_at.set(Some(now));
        let mut ids = self.ids.borrow_mut();
        let mut got = self.got.borrow_mut();
        let mut by_type = self.by_type.borrow_mut();
        for event in batch.events {
            self.events.set(self.events.get() + 1);
            if !ids.insert(event.id) {
                self.duplicates.set(self.duplicates.get() + 1);
                continue;
            }
            match by_type.get_mut(&event.kind) {
                Some(count) => *count += 1,
                None => {
                    by_type.insert(event.kind, 1);
                }
            }
            let _ = self
                .latency
                .borrow_mut()
                .record(arrived_us.saturating_sub(event.time * 1000).max(1));
            let Some(sent) = event.message else { continue };
            let Some(slot) = sent
                .n
                .and_then(|n| n.checked_sub(self.first_n.get()))
                .and_then(|i| got.get_mut(usize::try_from(i).ok()?))
            else {
                continue;
            };
            if *slot {
                self.repeated.set(self.repeated.get() + 1);
                continue;
            }
            *slot = true;
            self.messages.set(self.messages.get() + 1);
            self.last_message_at.set(Some(now));
            if let Some(t) = sent.t {
                let _ = self
                    .from_send
                    .borrow_mut()
                    .record(now_us().saturating_sub(t).max(1));
            }
        }
    }

    /// Waits until no request has arrived for `quiet` (at most `limit`): an earlier step's
    /// stragglers are not counted in the next.
    async fn settle(&self, quiet: Duration, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            let idle = self
                .last_event_at
                .get()
                .is_none_or(|t| t.elapsed() >= quiet);
            if idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What arrived since the last reset; the signature counts are `null` without a secret.
    pub(crate) fn json(&self) -> Value {
        let (events, batches) = (self.events.get(), self.batches.get());
        let checked = self.secret.is_some();
        json!({
            "events": events,
            "events_by_type": *self.by_type.borrow(),
            "duplicates": self.duplicates.get(),
            "batches": batches,
            "events_per_batch": round(events as f64 / batches.max(1) as f64, 2),
            "bad_signatures": checked.then(|| self.bad_signatures.get()),
            "unreadable": self.unreadable.get(),
            "latency": latency_json(&self.latency.borrow()),
        })
    }
}

/// The webhook receiver: `POST` anywhere, HTTP/1.1 with keep-alive (the server's client keeps
/// one connection), on the load generator's one thread.
#[derive(Debug)]
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) tally: Rc<Tally>,
}

impl Receiver {
    /// Binds `addr` and serves until `tasks` is dropped; `secret`: check every signature.
    pub(crate) async fn start(
        addr: SocketAddr,
        secret: Option<String>,
        tasks: &mut Tasks,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--receiver {addr}"))?;
        let addr = listener.local_addr()?;
        let tally = Rc::new(Tally::new(secret));
        tasks.push(tokio::task::spawn_local(accept(listener, tally.clone())));
        Ok(Self { addr, tally })
    }
}

async fn accept(listener: TcpListener, tally: Rc<Tally>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of files, say: try again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tally = tally.clone();
        let service = hyper::service::service_fn(move |req| answer(req, tally.clone()));
        tokio::task::spawn_local(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    tally: Rc<Tally>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let signature = req
        .headers()
        .get("switchboard-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => {
            tally.record(signature.as_deref(), &body.to_bytes());
            StatusCode::OK
        }
        Err(_) => {
            tally.unreadable.set(tally.unreadable.get() + 1);
            StatusCode::PAYLOAD_TOO_LARGE
        }
    };
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    Ok(response)
}

/// `Switchboard-Signature: t=<unix s>,v1=<hex>[,v1=<hex>...]`: valid if any `v1` is the
/// HMAC-SHA256 of `"<t>.<body>"` with `secret` (as docs/backends.md tells receivers to check;
/// the age of `t` is not checked: a run is minutes long).
fn verify(secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some(header) = header else {
        return false;
    };
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let (Some(t), Ok(mut mac)) = (t, Hmac::<Sha256>::new_from_slice(secret)) else {
        return false;
    };
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    signatures
        .iter()
        .filter_map(|hex| unhex(hex))
        .any(|bytes| mac.clone().verify_slice(&bytes).is_ok())
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Microseconds since the epoch: the clock of the event's `time`.
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One step as the clients see it: message `g` in `0..total` (number `first_n + g`) is sent
/// by client `g % clients` at `start + g / rate`, so the aggregate rate is even and each
/// client sends at `rate / clients`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    start: Instant,
    rate: f64,
    total: u64,
    first_n: u64,
    /// Past this a client that fell behind stops: every step is bounded in time.
    stop: Instant,
}

/// What the clients have done, on the one thread.
#[derive(Debug, Default)]
struct Senders {
    sent: Cell<u64>,
    /// Clients that finished their part of a step (counts up across steps).
    done: Cell<u64>,
    closed: Cell<u64>,
    close_codes: RefCell<BTreeMap<String, u64>>,
    /// `error` frames from the server by code (`unknown_type`: webhooks do not take messages).
    errors: RefCell<BTreeMap<String, u64>>,
}

impl Senders {
    fn on_frame(&self, f: &Frame<'_>) {
        if f.opcode == OP_TEXT && find(f.payload, b"\"type\":\"error\"").is_some() {
            let code = field_str(f.payload, b"\"code\":").unwrap_or("unknown");
            *self.errors.borrow_mut().entry(code.to_owned()).or_default() += 1;
        }
    }

    fn close(&self, ws: &Ws, read: &std::io::Result<()>) {
        self.closed.set(self.closed.get() + 1);
        let code = match (read, ws.closed) {
            (Err(e), _) => format!("io:{:?}", e.kind()),
            (_, Some(Some(code))) => code.to_string(),
            _ => "eof".into(),
        };
        *self.close_codes.borrow_mut().entry(code).or_default() += 1;
    }
}

/// After a read: answers pings; false once the connection is over (counted). Not part of the
/// read itself, so that a `select!` cancels only the (cancel-safe) read, never a write.
async fn after_read(ws: &mut Ws, s: &Senders, read: std::io::Result<()>) -> bool {
    let ok = read.is_ok() && ws.closed.is_none() && ws.flush().await.is_ok();
    if !ok {
        s.close(ws, &read);
    }
    ok
}

/// Client `i` of `clients`: answers pings, and sends its share of every plan.
async fn client(
    i: u64,
    clients: u64,
    mut ws: Ws,
    mut plans: watch::Receiver<Option<Plan>>,
    s: Rc<Senders>,
) {
    let mut on_frame = |f: Frame<'_>| s.on_frame(&f);
    loop {
        tokio::select! {
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = ws.read_some(&mut on_frame) => {
                if !after_read(&mut ws, &s, read).await {
                    return;
                }
                continue;
            }
        }
        let Some(plan) = *plans.borrow_and_update() else {
            continue;
        };
        let due = |g: u64| plan.start + Duration::from_secs_f64(g as f64 / plan.rate);
        let mut g = i;
        while g < plan.total && Instant::now() < plan.stop {
            let next = due(g);
            if next > Instant::now() {
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    read = ws.read_some(&mut on_frame) => {
                        if !after_read(&mut ws, &s, read).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            // Everything due by now (more than one if this client fell behind).
            let now = Instant::now();
            let mut queued = 0;
            while g < plan.total && due(g) <= now {
                let frame = format!(
                    r#"{{"type":"chat","n":{},"t":{}}}"#,
                    plan.first_n + g,
                    now_us()
                );
                ws.text(frame.as_bytes());
                queued += 1;
                g += clients;
            }
            if let Err(e) = ws.flush().await {
                s.close(&ws, &Err(e));
                return;
            }
            s.sent.set(s.sent.get() + queued);
        }
        s.done.set(s.done.get() + 1);
    }
}

/// What every step uses.
struct Steps {
    receiver: Receiver,
    plans: watch::Sender<Option<Plan>>,
    senders: Rc<Senders>,
    secs: f64,
    drain: Duration,
}

/// One rate: sends, waits for the events (at most the drain period), reports.
async fn step(ctx: &Ctx, run: &Steps, live: u64, rate: f64, first_n: u64) -> Value {
    let (tally, s, plans) = (&run.receiver.tally, &run.senders, &run.plans);
    tally
        .settle(Duration::from_millis(300), Duration::from_secs(10))
        .await;
    let total = (rate * run.secs).round().max(1.0) as u64;
    tally.reset(first_n, total);
    let (sent0, done0, closed0) = (s.sent.get(), s.done.get(), s.closed.get());
    let (server_cpu0, client_cpu0) = (ctx.server.cpu(), cpu_secs(None));
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(run.secs + 2.0);
    plans.send_replace(Some(Plan {
        start,
        rate,
        total,
        first_n,
        stop,
    }));
    // Every live client finished (or gave up at `stop`).
    while s.done.get() - done0 + s.closed.get() - closed0 < live && Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let sent = s.sent.get() - sent0;
    let deadline = Instant::now() + run.drain;
    while tally.messages.get() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    let (server_cpu1, client_cpu1) = (ctx.server.cpu(), cpu_secs(None));
    let received = tally.messages.get();
    let active = tally
        .last_message_at
        .get()
        .map_or(wall, |t| t.duration_since(start).as_secs_f64());
    let server_cpu = server_cpu0.zip(server_cpu1).map(|(a, b)| b - a);
    let client_cpu = client_cpu0.zip(client_cpu1).map(|(a, b)| b - a);
    let missing = sent.saturating_sub(received);
    let duplicates = tally.duplicates.get() + tally.repeated.get();
    let bad = tally.bad_signatures.get();
    let mut m = json!({
        "rate": round(rate, 3),
        "planned": total,
        "sent": sent,
        "send_secs": round(send_secs, 3),
        "received": received,
        "missing": missing,
        "repeated_messages": tally.repeated.get(),
        "events_per_sec": round(received as f64 / active.max(1e-9), 1),
        "latency_from_send": latency_json(&tally.from_send.borrow()),
        "server_cpu_s": server_cpu.map(|c| round(c, 3)),
        "server_cpu_us_per_event": server_cpu
            .filter(|_| received > 0)
            .map(|c| round(c * 1e6 / received as f64, 2)),
        "client_cpu_s": client_cpu.map(|c| round(c, 3)),
        "clients_closed": s.closed.get() - closed0,
        "pass": missing == 0 && duplicates == 0 && bad == 0 && sent == total,
    });
    if let (Value::Object(m), Value::Object(r)) = (&mut m, tally.json()) {
        m.extend(r);
    }
    m
}

/// `--rates 1000,5000` or `--rate 1000`.
fn rates(o: &Webhook) -> anyhow::Result<Vec<f64>> {
    let list = if o.rates.is_empty() {
        vec![o.rate]
    } else {
        o.rates.clone()
    };
    if list.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        bail!("rates must be positive: {list:?}");
    }
    Ok(list)
}

pub(crate) async fn run(ctx: Rc<Ctx>, o: &Webhook) -> anyhow::Result<Value> {
    let (clients, lobbies) = (o.clients as usize, o.lobbies as usize);
    let rates = rates(o)?;
    let bind = o.receiver;
    let mut tasks = Tasks::default();
    // Bound before any client connects: no event is posted to a closed port.
    let receiver = Receiver::start(bind, o.secret.clone(), &mut tasks).await?;
    ctx.progress("receiver", format!("http://{}/hook", receiver.addr));
    let (plans, plans_rx) = watch::channel(None);
    let run = Steps {
        receiver,
        plans,
        senders: Rc::new(Senders::default()),
        secs: o.secs,
        drain: Duration::from_secs_f64(o.drain_secs),
    };
    let prefix = ctx.user_prefix.clone();
    let s = run.senders.clone();
    let connected = connect_all(
        &ctx,
        &mut tasks,
        "connect",
        clients,
        ctx.time_left(),
        |i| {
            let lobby = format!("webhook-{}", i % lobbies);
            (Route::Lobby(lobby), format!("{prefix}{i}"))
        },
        move |i, ws| client(i as u64, clients as u64, ws, plans_rx.clone(), s.clone()),
    )
    .await;
    // Let the connects' events (with `connect` among the events) pass before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut steps = Vec::new();
    let mut first_n = 0;
    for (k, &rate) in rates.iter().enumerate() {
        if ctx.time_left() < Duration::from_secs_f64(run.secs + 2.0) + run.drain {
            ctx.progress("steps", "stopping: --max-secs reached");
            break;
        }
        let live = connected.ok - run.senders.closed.get();
        let result = step(&ctx, &run, live, rate, first_n).await;
        ctx.progress(
            &format!("step-{k}"),
            format!(
                "rate={rate}/s sent={} received={} missing={} events/s={} batches={} \
                 cpu_us/event={}",
                result["sent"],
                result["received"],
                result["missing"],
                result["events_per_sec"],
                result["batches"],
                result["server_cpu_us_per_event"]
            ),
        );
        first_n += result["planned"].as_u64().unwrap_or(0);
        steps.push(result);
    }
    let mut m = ctx.summary();
    m.insert("clients".into(), json!(clients));
    m.insert("lobbies".into(), json!(lobbies));
    m.insert("secs".into(), json!(run.secs));
    m.insert("receiver".into(), json!(run.receiver.addr.to_string()));
    m.insert("connect".into(), connected.json());
    m.insert(
        "pass".into(),
        json!(!steps.is_empty() && steps.iter().all(|s| s["pass"] == true)),
    );
    m.insert("steps".into(), json!(steps));
    m.insert("server_errors".into(), json!(*run.senders.errors.borrow()));
    m.insert(
        "close_codes".into(),
        json!(*run.senders.close_codes.borrow()),
    );
    drop(tasks);
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], t: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_signature_verifies_if_any_v1_matches() {
        let body = br#"{"events":[]}"#;
        let good = sign(b"s", "17", body);
        let other = sign(b"old", "17", body);
        assert!(verify(b"s", Some(&format!("t=17,v1={good}")), body));
        assert!(verify(
            b"s",
            Some(&format!("t=17,v1={other},v1={good}")),
            body
        ));
        assert!(!verify(b"s", Some(&format!("t=18,v1={good}")), body));
        assert!(!verify(b"s", Some(&format!("t=17,v1={other}")), body));
        assert!(!verify(b"s", Some(&format!("t=17,v1={good}")), b"{}"));
        assert!(!verify(b"s", Some("t=17,v1=zz"), body));
        assert!(!verify(b"s", None, body));
    }

    #[test]
    fn ids_are_new_once() {
        let mut ids = Ids::default();
        assert!(ids.insert("node-a-1".into()));
        assert!(ids.insert("node-a-64".into()));
        assert!(ids.insert("node-b-1".into()), "another node");
        assert!(!ids.insert("node-a-1".into()));
        assert!(!ids.insert("node-a-64".into()));
        assert!(ids.insert("odd".into()));
        assert!(!ids.insert("odd".into()));
        assert!(ids.insert(format!("n-{}", Ids::MAX_BIT)));
        assert!(!ids.insert(format!("n-{}", Ids::MAX_BIT)));
        assert_eq!(ids.by_node.len(), 2);
        assert_eq!(ids.other.len(), 2);
    }

    #[test]
    fn counts_messages_once_and_duplicates_by_id() {
        let tally = Tally::new(None);
        tally.reset(10, 3);
        let body = br#"{"events":[
            {"id":"n-1","type":"message","time":1,"node":"n","message":{"type":"chat","n":10}},
            {"id":"n-2","type":"message","time":1,"node":"n","message":{"type":"chat","n":12}},
            {"id":"n-2","type":"message","time":1,"node":"n","message":{"type":"chat","n":12}},
            {"id":"n-3","type":"message","time":1,"node":"n","message":{"type":"chat","n":12}},
            {"id":"n-4","type":"message","time":1,"node":"n","message":{"type":"chat","n":9}},
            {"id":"n-5","type":"connect","time":1,"node":"n","user_id":"u"}]}"#;
        tally.record(None, body);
        tally.record(None, b"not json");
        assert_eq!(
            tally.messages.get(),
            2,
            "10 and 12 (9 is an earlier step's)"
        );
        assert_eq!(tally.duplicates.get(), 1);
        assert_eq!(tally.repeated.get(), 1);
        assert_eq!(tally.events.get(), 6);
        assert_eq!(tally.batches.get(), 2);
        assert_eq!(tally.unreadable.get(), 1);
        assert_eq!(tally.json()["events_by_type"]["connect"], 1);
        assert_eq!(tally.json()["bad_signatures"], Value::Null);
    }
}
