//! `fanout`: M members in one lobby and a publisher sending `broadcast` frames (a sequence
//! number and a send time in `data`) at a fixed rate; `--sweep` raises the rate step by step
//! (doubling, then bisecting) to find the highest rate sustained with nothing lost and
//! p99 < `--max-p99-ms`. Each step reports deliveries/s, losses, latency and the server's
//! CPU-seconds per delivery. `--receiver ADDR` also serves a webhook receiver there (bound
//! before the members connect), so that a server with webhooks on has a backend that answers
//! 200: fan-out with and without webhooks is one flag apart.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::cli::Fanout;
use crate::client::{OP_CLOSE, OP_TEXT, Route, Ws, field_str, field_u64};
use crate::common::{Ctx, histogram, latency_json, now_us, round};
use crate::overload::{self, Probe};
use crate::pool::{Tasks, connect_all};
use crate::procfs::cpu_secs;
use crate::webhook::Receiver;

/// What the members have seen; shared by every member task on the one thread.
#[derive(Debug)]
pub(crate) struct Seen {
    /// Messages with a smaller sequence number belong to an earlier step and are ignored.
    pub(crate) first_seq: Cell<u64>,
    pub(crate) received: Cell<u64>,
    pub(crate) any: Cell<u64>,
    pub(crate) last_at: Cell<Option<Instant>>,
    pub(crate) hist: RefCell<Histogram<u64>>,
    pub(crate) closed: Cell<u64>,
    pub(crate) close_codes: RefCell<BTreeMap<String, u64>>,
    /// Close frames as the members saw them: `CODE reason` (or how the connection ended).
    pub(crate) close_reasons: RefCell<BTreeMap<String, u64>>,
    /// `--past-saturation`: follow each member's offsets and which broadcasts arrived.
    pub(crate) track: Cell<bool>,
    /// Broadcasts a member never got: the gaps between consecutive offsets it saw.
    pub(crate) gap_lost: Cell<u64>,
    /// Offsets seen again or out of order.
    pub(crate) repeats: Cell<u64>,
    /// `recovered` frames with `ok: false` (fell behind further than the history reaches).
    pub(crate) recovered_lost: Cell<u64>,
    /// Which of this step's broadcasts (by sequence number) reached at least one member.
    pub(crate) distinct: RefCell<Vec<bool>>,
}

impl Seen {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Self {
            first_seq: Cell::new(u64::MAX),
            received: Cell::new(0),
            any: Cell::new(0),
            last_at: Cell::new(None),
            hist: RefCell::new(histogram()),
            closed: Cell::new(0),
            close_codes: RefCell::new(BTreeMap::new()),
            close_reasons: RefCell::new(BTreeMap::new()),
            track: Cell::new(false),
            gap_lost: Cell::new(0),
            repeats: Cell::new(0),
            recovered_lost: Cell::new(0),
            distinct: RefCell::new(Vec::new()),
        })
    }

    /// A member's text frame; `last` is the offset of the member's last broadcast (tracked
    /// with `--past-saturation` only).
    fn on_text(&self, payload: &[u8], last: &mut Option<u64>) {
        if self.track.get() {
            self.follow(payload, last);
        }
        let Some(seq) = field_u64(payload, b"\"s\":") else {
            return;
        };
        self.any.set(self.any.get() + 1);
        if seq < self.first_seq.get() {
            return;
        }
        if self.track.get() {
            let i = (seq - self.first_seq.get()) as usize;
            let mut distinct = self.distinct.borrow_mut();
            if i < MAX_DISTINCT {
                if distinct.len() <= i {
                    distinct.resize(i + 1, false);
                }
                distinct[i] = true;
            }
        }
        if let Some(sent) = field_u64(payload, b"\"t\":") {
            let now = now_us();
            self.received.set(self.received.get() + 1);
            self.last_at.set(Some(Instant::now()));
            let _ = self
                .hist
                .borrow_mut()
                .record(now.saturating_sub(sent).max(1));
        }
    }

    /// Offsets (Switchboard's broadcasts end with `"offset":N}`) and `recovered` ok:false.
    fn follow(&self, payload: &[u8], last: &mut Option<u64>) {
        if let Some(offset) = tail_offset(payload) {
            match *last {
                Some(prev) if offset > prev + 1 => {
                    self.gap_lost.set(self.gap_lost.get() + (offset - prev - 1));
                }
                Some(prev) if offset <= prev => self.repeats.set(self.repeats.get() + 1),
                _ => {}
            }
            *last = Some(offset);
        } else if payload.starts_with(br#"{"type":"recovered""#)
            && crate::client::find(payload, b"false").is_some()
        {
            self.recovered_lost.set(self.recovered_lost.get() + 1);
        }
    }

    /// Starts counting from sequence number `seq`.
    pub(crate) fn reset(&self, seq: u64) {
        self.first_seq.set(seq);
        self.received.set(0);
        self.last_at.set(None);
        self.hist.borrow_mut().reset();
        self.distinct.borrow_mut().clear();
    }

    /// How many of this step's broadcasts reached at least one member.
    pub(crate) fn distinct_seen(&self) -> u64 {
        self.distinct.borrow().iter().filter(|b| **b).count() as u64
    }

    /// Waits until no message has arrived for `quiet` (at most `limit`).
    pub(crate) async fn settle(&self, quiet: Duration, limit: Duration) {
        let start = Instant::now();
        let mut last = (self.any.get(), Instant::now());
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let any = self.any.get();
            if any != last.0 {
                last = (any, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
        }
    }
}

/// Sequence numbers of one step followed for `distinct` (a bound on its memory).
const MAX_DISTINCT: usize = 16 << 20;

/// The `N` of a frame ending with `"offset":N}` (how Switchboard numbers a broadcast).
pub(crate) fn tail_offset(payload: &[u8]) -> Option<u64> {
    let body = payload.strip_suffix(b"}")?;
    let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (head, number) = body.split_at(body.len() - digits);
    if digits == 0 || !head.ends_with(br#""offset":"#) {
        return None;
    }
    std::str::from_utf8(number).ok()?.parse().ok()
}

/// A close frame's `CODE reason`, as the member saw it.
pub(crate) fn close_label(payload: &[u8]) -> String {
    match payload {
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let reason = String::from_utf8_lossy(reason);
            if reason.is_empty() {
                code.to_string()
            } else {
                format!("{code} {reason}")
            }
        }
        _ => "close without a code".into(),
    }
}

/// A member's life: read, measure, answer pings, until closed.
pub(crate) async fn member(mut ws: Ws, seen: Rc<Seen>) {
    let mut last = None;
    let mut close_reason = None;
    loop {
        let read = ws
            .read_some(&mut |f| {
                if f.opcode == OP_TEXT {
                    seen.on_text(f.payload, &mut last);
                } else if f.opcode == OP_CLOSE {
                    close_reason = Some(close_label(f.payload));
                }
            })
            .await;
        if read.is_err() || ws.flush().await.is_err() || ws.closed.is_some() {
            seen.closed.set(seen.closed.get() + 1);
            let code = match (&read, ws.closed) {
                (Err(e), _) => format!("io:{:?}", e.kind()),
                (_, Some(Some(code))) => code.to_string(),
                _ => "eof".into(),
            };
            let reason = match (&read, close_reason) {
                (Err(e), _) => format!("io:{:?}", e.kind()),
                (_, Some(label)) => label,
                _ => "eof (no close frame)".into(),
            };
            *seen.close_codes.borrow_mut().entry(code).or_default() += 1;
            *seen.close_reasons.borrow_mut().entry(reason).or_default() += 1;
            return;
        }
    }
}

/// The publisher: frames carrying a sequence number, a send time and padding to `payload`
/// bytes of `data`, sent at `rate` per second with `exclude_self`.
#[derive(Debug)]
pub(crate) struct Publisher {
    pub(crate) ws: Ws,
    pub(crate) next_seq: u64,
    pad: String,
    /// `error` frames the server answered with, by code (`rate_limited`: shed, `overloaded`).
    pub(crate) errors: ErrorFrames,
}

/// The `error` frames a publisher got, by code.
#[derive(Debug, Default)]
pub(crate) struct ErrorFrames(pub(crate) BTreeMap<String, u64>);

impl ErrorFrames {
    fn on_frame(&mut self, f: &crate::client::Frame<'_>) {
        if f.opcode == OP_TEXT && f.payload.starts_with(br#"{"type":"error""#) {
            let code = field_str(f.payload, b"\"code\":").unwrap_or("?");
            *self.0.entry(code.to_owned()).or_default() += 1;
        }
    }

    /// Broadcasts refused: `rate_limited` (shed) and `overloaded`.
    pub(crate) fn refused(&self) -> u64 {
        ["rate_limited", "overloaded"]
            .iter()
            .filter_map(|c| self.0.get(*c))
            .sum()
    }
}

impl Publisher {
    pub(crate) fn new(ws: Ws, payload: usize) -> Self {
        // `{"s":SEQ,"t":MICROS,"p":"..."}` with typical widths of SEQ and MICROS.
        let overhead = r#"{"s":1234,"t":12345678,"p":""}"#.len();
        Self {
            ws,
            next_seq: 1,
            pad: "x".repeat(payload.saturating_sub(overhead)),
            errors: ErrorFrames::default(),
        }
    }

    fn queue_one(&mut self) {
        let frame = format!(
            r#"{{"type":"broadcast","exclude_self":true,"data":{{"s":{},"t":{},"p":"{}"}}}}"#,
            self.next_seq,
            now_us(),
            self.pad
        );
        self.next_seq += 1;
        self.ws.text(frame.as_bytes());
    }

    /// Sends at `rate` per second for `secs`; returns messages sent and the time it took.
    /// Keeps reading its own socket (pings) meanwhile.
    pub(crate) async fn send_for(&mut self, rate: f64, secs: f64) -> anyhow::Result<(u64, f64)> {
        self.send_within(rate, secs, None).await
    }

    /// [`send_for`](Self::send_for), but sending nothing more once `limit` has passed (a
    /// server that stops reading the publisher makes it send fewer).
    pub(crate) async fn send_within(
        &mut self,
        rate: f64,
        secs: f64,
        limit: Option<Duration>,
    ) -> anyhow::Result<(u64, f64)> {
        let total = (rate * secs).round().max(1.0) as u64;
        let start = Instant::now();
        let tick = Duration::from_secs_f64((1.0 / rate).clamp(0.001, 0.05));
        let mut sent = 0;
        while sent < total {
            // A tick's grace past the limit, for the frames due just before it.
            if limit.is_some_and(|l| start.elapsed() >= l + Duration::from_millis(100)) {
                break;
            }
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
            while sent < due {
                self.queue_one();
                sent += 1;
            }
            match limit {
                // A server that stops reading the publisher does not stretch the step: what
                // it has not taken by the limit stays in `out` (counted as sent, reported as
                // unwritten bytes) and the step ends.
                Some(l) => {
                    let until =
                        tokio::time::Instant::from_std(start + l + Duration::from_millis(100));
                    match tokio::time::timeout_at(until, self.ws.flush()).await {
                        Ok(flushed) => flushed?,
                        Err(_) => break,
                    }
                }
                None => self.ws.flush().await?,
            }
            if sent >= total {
                break;
            }
            let errors = &mut self.errors;
            let mut on_frame = |f: crate::client::Frame<'_>| errors.on_frame(&f);
            tokio::select! {
                read = self.ws.read_some(&mut on_frame) => read?,
                () = tokio::time::sleep(tick) => {}
            }
            if self.ws.closed.is_some() {
                bail!("publisher closed by the server: {:?}", self.ws.closed);
            }
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    }

    /// Reads (answers pings) for `d`.
    pub(crate) async fn idle_for(&mut self, d: Duration) {
        let _ = tokio::time::timeout(d, async {
            while self.ws.closed.is_none() {
                let errors = &mut self.errors;
                let read = self.ws.read_some(&mut |f| errors.on_frame(&f)).await;
                if read.is_err() || self.ws.flush().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

struct StepConfig {
    secs: f64,
    drain: Duration,
    max_p99_us: u64,
}

async fn step(
    ctx: &Ctx,
    publisher: &mut Publisher,
    seen: &Seen,
    members: u64,
    rate: f64,
    cfg: &StepConfig,
    probe: &Probe,
) -> anyhow::Result<Value> {
    seen.settle(Duration::from_millis(300), Duration::from_secs(10))
        .await;
    seen.reset(publisher.next_seq);
    let closed0 = seen.closed.get();
    let refused0 = publisher.errors.refused();
    let before = if probe.is_empty() {
        None
    } else {
        Some(probe.snapshot().await)
    };
    let live = members - closed0;
    let (server_cpu0, client_cpu0) = (ctx.server.cpu(), cpu_secs(None));
    let start = Instant::now();
    let (sent, send_secs) = publisher.send_for(rate, cfg.secs).await?;
    let expected = sent * live;
    let deadline = Instant::now() + cfg.drain;
    while seen.received.get() < expected && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        publisher
            .idle_for(Duration::from_millis(20).min(left))
            .await;
    }
    let wall = start.elapsed().as_secs_f64();
    let (server_cpu1, client_cpu1) = (ctx.server.cpu(), cpu_secs(None));
    let after = match before {
        Some(_) => Some(probe.snapshot().await),
        None => None,
    };
    let received = seen.received.get();
    let active = seen
        .last_at
        .get()
        .map_or(wall, |t| t.duration_since(start).as_secs_f64());
    let hist = seen.hist.borrow();
    let closed = seen.closed.get() - closed0;
    let lost = expected.saturating_sub(received);
    let pass = lost == 0 && closed == 0 && hist.value_at_quantile(0.99) < cfg.max_p99_us;
    let server_cpu = server_cpu0.zip(server_cpu1).map(|(a, b)| b - a);
    let client_cpu = client_cpu0.zip(client_cpu1).map(|(a, b)| b - a);
    let per_cpu = server_cpu
        .filter(|c| *c > 0.0)
        .map(|c| round(received as f64 / c, 0));
    let refused = publisher.errors.refused() - refused0;
    let mut result = json!({
        "rate": round(rate, 3),
        "sent": sent,
        "send_secs": round(send_secs, 3),
        "members": live,
        "expected": expected,
        "received": received,
        "lost": lost,
        "members_closed": closed,
        "deliveries_per_sec": round(received as f64 / active.max(1e-9), 0),
        "latency": latency_json(&hist),
        "server_cpu_s": server_cpu.map(|c| round(c, 2)),
        "deliveries_per_server_cpu_s": per_cpu,
        "server_cpu_us_per_delivery": server_cpu
            .filter(|_| received > 0)
            .map(|c| round(c * 1e6 / received as f64, 3)),
        "client_cpu_s": client_cpu.map(|c| round(c, 2)),
        "refused": refused,
        "pass": pass,
    });
    if let (Some(before), Some(after), Some(o)) = (before, after, result.as_object_mut()) {
        o.extend(probe.delta(&before, &after, sent.saturating_sub(refused)));
    }
    Ok(result)
}

pub(crate) async fn run(ctx: Rc<Ctx>, o: &Fanout) -> anyhow::Result<Value> {
    let (members, lobby, payload, sweep) = (o.members, o.lobby.clone(), o.payload, o.sweep);
    let cfg = StepConfig {
        secs: o.step_secs.unwrap_or(o.duration),
        drain: Duration::from_secs_f64(o.drain_secs),
        max_p99_us: (o.max_p99_ms * 1000.0) as u64,
    };
    let server_rss0 = ctx.server.rss();
    let seen = Seen::new();
    let mut tasks = Tasks::default();
    let receiver = match o.receiver {
        Some(addr) => Some(Receiver::start(addr, o.secret.clone(), &mut tasks).await?),
        None => None,
    };
    let prefix = ctx.user_prefix.clone();
    let s = seen.clone();
    let l = lobby.clone();
    let connected = connect_all(
        &ctx,
        &mut tasks,
        "connect",
        members,
        ctx.time_left(),
        |i| (Route::Lobby(l.clone()), format!("{prefix}{i}")),
        move |_, ws| member(ws, s.clone()),
    )
    .await;
    // `--stuck`: members that never read after their welcome (held until the run ends).
    let mut stuck = Vec::new();
    for i in 0..o.stuck {
        let (route, token) = (
            Route::Lobby(lobby.clone()),
            ctx.token(&format!("{}stuck{i}", ctx.user_prefix)),
        );
        let connecting = ctx
            .target
            .connect_with(ctx.next_source(), &route, &token, Some(4096));
        match connecting.await {
            Ok(ws) => stuck.push(ws),
            Err(e) => bail!("stuck member {i} could not connect: {}", e.label()),
        }
    }
    // `--publish-addr`: the publisher on another node of a cluster (cross-node latency).
    let publisher_user = format!("{}pub", ctx.user_prefix);
    let publisher_ws = match o.publish_addr {
        Some(addr) => {
            let target = crate::client::Target {
                server: addr,
                timeout: ctx.target.timeout,
            };
            target
                .connect(
                    ctx.next_source(),
                    &Route::Lobby(lobby.clone()),
                    &ctx.token(&publisher_user),
                )
                .await
        }
        None => ctx.connect(&lobby, &publisher_user).await,
    };
    let publisher_ws = match publisher_ws {
        Ok(ws) => ws,
        Err(e) => bail!("publisher could not connect: {}", e.label()),
    };
    let mut publisher = Publisher::new(publisher_ws, payload);
    // Let every member's welcome (and any join events) pass before measuring.
    publisher.idle_for(Duration::from_secs(1)).await;
    let live = connected.ok;
    let mut steps = Vec::new();
    let mut best: Option<Value> = None;
    let probe = Probe {
        stats_urls: o.stats_url.clone(),
        stats_key: o.stats_key.clone(),
        redis: o.redis,
    };
    if sweep && o.past_saturation {
        seen.track.set(true);
        let cfg = overload::StepConfig {
            secs: cfg.secs,
            drain: cfg.drain,
            max_p99_us: cfg.max_p99_us,
            max_rss_kib: o.max_server_rss_mib * 1024,
        };
        let mut rate = o.rate_start;
        for n in 0..o.max_steps {
            if ctx.time_left() < Duration::from_secs_f64(cfg.secs + 15.0) {
                ctx.progress("overload", "stopping: --max-secs reached");
                break;
            }
            let result =
                match overload::step(&ctx, &mut publisher, &seen, live, rate, &cfg, &probe).await {
                    Ok(r) => r,
                    Err(e) => {
                        // The publisher was closed (or its socket failed): nothing more to send.
                        let error = format!("{e:#}");
                        ctx.progress(&format!("overload-{n}"), format!("stopping: {error}"));
                        steps.push(json!({ "rate": round(rate, 3), "error": error }));
                        break;
                    }
                };
            ctx.progress(
                &format!("overload-{n}"),
                format!(
                    "rate={rate:.2}/s sent={} refused={} deliveries/s={} lost={}+{} closed={} \
                     p99={}ms rss={}KiB",
                    result["sent"],
                    result["refused"],
                    result["deliveries_per_sec"],
                    result["offset_gaps_lost"],
                    result["recovered_lost"],
                    result["members_closed"],
                    result["latency"]["p99_ms"],
                    result["server_rss_kib_max"]
                ),
            );
            if result["pass"].as_bool().unwrap_or(false) {
                best = Some(result.clone());
            }
            let over = result["over_rss_cap"].as_bool().unwrap_or(false);
            steps.push(result);
            if over {
                ctx.progress(
                    "overload",
                    format!(
                        "stopping: the server's RSS passed {} MiB",
                        o.max_server_rss_mib
                    ),
                );
                break;
            }
            rate *= o.rate_factor;
        }
        eprintln!(
            "\n{} fanout past saturation, {live} members, {payload}-byte payloads, {} s steps:\n{}",
            ctx.label,
            cfg.secs,
            overload::table(&steps)
        );
    } else if sweep {
        let (factor, mut rate) = (o.rate_factor, o.rate_start);
        let (refine, max_steps) = (o.refine, o.max_steps);
        let (mut pass_rate, mut fail_rate): (Option<f64>, Option<f64>) = (None, None);
        let (mut downs, mut refines) = (0, 0);
        for n in 0..max_steps {
            if ctx.time_left() < Duration::from_secs_f64(cfg.secs + 5.0) {
                ctx.progress("sweep", "stopping: --max-secs reached");
                break;
            }
            let result = step(&ctx, &mut publisher, &seen, live, rate, &cfg, &probe).await?;
            let pass = result["pass"].as_bool().unwrap_or(false);
            ctx.progress(
                &format!("sweep-{n}"),
                format!(
                    "rate={rate:.2}/s deliveries/s={} lost={} p99={}ms pass={pass}",
                    result["deliveries_per_sec"], result["lost"], result["latency"]["p99_ms"]
                ),
            );
            let closed = result["members_closed"].as_u64().unwrap_or(0);
            if pass {
                pass_rate = Some(rate);
                best = Some(result.clone());
            } else {
                fail_rate = Some(rate);
            }
            steps.push(result);
            if closed > 0 {
                ctx.progress("sweep", "stopping: members were disconnected");
                break;
            }
            rate = match (pass_rate, fail_rate) {
                (Some(_), None) => rate * factor,
                (None, Some(f)) if downs < 3 => {
                    downs += 1;
                    f / factor
                }
                (Some(p), Some(f)) if refines < refine && f / p > 1.05 => {
                    refines += 1;
                    (p * f).sqrt()
                }
                _ => break,
            };
        }
    } else {
        let rate = o.rate;
        let result = step(&ctx, &mut publisher, &seen, live, rate, &cfg, &probe).await?;
        ctx.progress(
            "fixed",
            format!(
                "rate={rate:.2}/s deliveries/s={} lost={} p99={}ms",
                result["deliveries_per_sec"], result["lost"], result["latency"]["p99_ms"]
            ),
        );
        if result["pass"].as_bool().unwrap_or(false) {
            best = Some(result.clone());
        }
        steps.push(result);
    }
    let mut m = ctx.summary();
    m.insert("members".into(), json!(members));
    m.insert("stuck_members".into(), json!(stuck.len()));
    m.insert("payload_bytes".into(), json!(payload));
    m.insert("connect".into(), connected.json());
    m.insert("sweep".into(), json!(sweep));
    m.insert("past_saturation".into(), json!(sweep && o.past_saturation));
    m.insert("close_reasons".into(), json!(*seen.close_reasons.borrow()));
    m.insert(
        "members_open_at_end".into(),
        json!(live - seen.closed.get()),
    );
    m.insert("best".into(), best.unwrap_or(Value::Null));
    m.insert("steps".into(), json!(steps));
    m.insert("close_codes".into(), json!(*seen.close_codes.borrow()));
    m.insert("rss_kib_before".into(), json!(server_rss0));
    m.insert("rss_kib_end".into(), json!(ctx.server.rss()));
    m.insert(
        "webhooks".into(),
        receiver.map_or(Value::Null, |r| r.tally.json()),
    );
    drop(tasks);
    drop(stuck);
    Ok(Value::Object(m))
}
