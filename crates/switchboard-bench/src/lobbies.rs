//! `lobbies`: C connections in protocol v2, opened in no lobby, then each joins K of L lobbies
//! on its live socket (one `join` at a time, each waiting for its `joined`). Reports the
//! connect rate, the join rate over the join phase, the join round trip, the server's CPU per
//! join (steadier than the rate on a busy machine), and the server's RSS: per connection in no
//! lobby, and per extra membership.
//!
//! Connection i joins lobbies `(i*K + j) % L` for j in 0..K: K distinct lobbies, and every
//! lobby gets C*K/L members when L divides C*K. With K=1 the RSS per connection after the joins
//! is comparable to `idle`'s (one lobby each).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cli::Lobbies;
use crate::client::{Frame, OP_TEXT, Route, Ws, field_str, field_u64, find, join_frame};
use crate::common::{Ctx, histogram, latency_json, round};
use crate::pool::{Tasks, connect_all};

/// The join phase, as the connections' tasks see it.
#[derive(Debug)]
struct Joins {
    ok: Cell<u64>,
    /// Refusals by error code (`lobby_full`, `too_many_lobbies`, ...).
    refused: RefCell<std::collections::BTreeMap<String, u64>>,
    /// Connections whose joins are over (all answered, or the connection closed).
    done: Cell<u64>,
    closed: Cell<u64>,
    last: Cell<Option<Instant>>,
    latency: RefCell<hdrhistogram::Histogram<u64>>,
}

impl Joins {
    fn refused_total(&self) -> u64 {
        self.refused.borrow().values().sum()
    }
}

/// The answer to the `join` with `id`, if `payload` is it: `Ok` for `joined`, the error code
/// for an `error`.
fn answer(payload: &[u8], id: u64) -> Option<Result<(), String>> {
    if field_u64(payload, b"\"id\":") != Some(id) {
        return None;
    }
    if find(payload, b"\"type\":\"joined\"").is_some() {
        Some(Ok(()))
    } else if find(payload, b"\"type\":\"error\"").is_some() {
        Some(Err(field_str(payload, b"\"code\":")
            .unwrap_or("unknown")
            .to_owned()))
    } else {
        None
    }
}

/// Reads (answering pings) until it sees the answer to `id`; `None` if the connection ended.
async fn await_answer(ws: &mut Ws, id: u64) -> Option<Result<(), String>> {
    let mut got = None;
    while got.is_none() {
        let read = ws
            .read_some(&mut |f| {
                if f.opcode == OP_TEXT && got.is_none() {
                    got = answer(f.payload, id);
                }
            })
            .await;
        if read.is_err() || ws.flush().await.is_err() || (got.is_none() && ws.closed.is_some()) {
            return None;
        }
    }
    got
}

/// One connection: answers pings until `go`, joins `lobbies` one after another, then answers
/// pings until it is dropped.
async fn member(mut ws: Ws, lobbies: Vec<String>, mut go: watch::Receiver<bool>, j: Rc<Joins>) {
    let alive = |ws: &Ws| ws.closed.is_none();
    let mut ignore = |_: Frame<'_>| {};
    loop {
        tokio::select! {
            started = go.wait_for(|go| *go) => {
                if started.is_err() {
                    return;
                }
                break;
            }
            read = ws.read_some(&mut ignore) => {
                if read.is_err() || ws.flush().await.is_err() || !alive(&ws) {
                    j.closed.set(j.closed.get() + 1);
                    j.done.set(j.done.get() + 1);
                    return;
                }
            }
        }
    }
    for (id, lobby) in (1..).zip(&lobbies) {
        ws.text(join_frame(lobby, id).as_bytes());
        let t0 = Instant::now();
        if ws.flush().await.is_err() {
            break;
        }
        match await_answer(&mut ws, id).await {
            Some(Ok(())) => {
                j.ok.set(j.ok.get() + 1);
                let _ = j
                    .latency
                    .borrow_mut()
                    .record(t0.elapsed().as_micros().max(1) as u64);
            }
            Some(Err(code)) => *j.refused.borrow_mut().entry(code).or_default() += 1,
            None => break,
        }
        j.last.set(Some(Instant::now()));
    }
    j.done.set(j.done.get() + 1);
    while alive(&ws) {
        if ws.read_some(&mut |_| {}).await.is_err() || ws.flush().await.is_err() {
            break;
        }
    }
    j.closed.set(j.closed.get() + 1);
}

pub(crate) async fn run(ctx: Rc<Ctx>, o: &Lobbies) -> anyhow::Result<Value> {
    let (n, lobbies, per_conn, settle) = (o.conns, o.lobbies as usize, o.per_conn, o.settle);
    if per_conn > lobbies {
        bail!("--per-conn {per_conn} exceeds --lobbies {lobbies}: joins would repeat lobbies");
    }
    let server = ctx.server;
    let rss_before = server.rss();
    let joins = Rc::new(Joins {
        ok: Cell::new(0),
        refused: RefCell::default(),
        done: Cell::new(0),
        closed: Cell::new(0),
        last: Cell::new(None),
        latency: RefCell::new(histogram()),
    });
    let (go, go_rx) = watch::channel(false);
    let mut tasks = Tasks::default();
    let prefix = ctx.user_prefix.clone();
    let j = joins.clone();
    let connected = connect_all(
        &ctx,
        &mut tasks,
        "connect",
        n,
        ctx.time_left(),
        |i| (Route::V2, format!("{prefix}{i}")),
        move |i, ws| {
            let picked = (0..per_conn)
                .map(|k| format!("lobbies-{}", (i * per_conn + k) % lobbies))
                .collect();
            member(ws, picked, go_rx.clone(), j.clone())
        },
    )
    .await;
    ctx.progress(
        "connected",
        format!("ok={} rate={:.0}/s", connected.ok, connected.rate()),
    );
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let rss_connected = server.rss();

    let target = connected.ok * per_conn as u64;
    let cpu0 = server.cpu();
    let t0 = Instant::now();
    go.send_replace(true);
    let mut last_print = Instant::now();
    loop {
        let finished = joins.done.get() >= connected.ok;
        if finished || ctx.time_left().is_zero() || last_print.elapsed() >= Duration::from_secs(1) {
            ctx.progress(
                "join",
                format!(
                    "joined={}/{target} refused={} closed={}",
                    joins.ok.get(),
                    joins.refused_total(),
                    joins.closed.get()
                ),
            );
            last_print = Instant::now();
        }
        if finished || ctx.time_left().is_zero() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu0.zip(server.cpu()).map(|(a, b)| b - a);
    let join_secs = joins
        .last
        .get()
        .map_or(0.0, |t| t.duration_since(t0).as_secs_f64());
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let rss_joined = server.rss();

    let joined = joins.ok.get();
    let per_conn_kib = |rss: Option<u64>| match (rss, rss_before) {
        (Some(after), Some(before)) if connected.ok > 0 => Some(round(
            (after as f64 - before as f64) / connected.ok as f64,
            2,
        )),
        _ => None,
    };
    let bytes_per_membership = match (rss_joined, rss_connected) {
        (Some(after), Some(before)) if joined > 0 => Some(round(
            (after as f64 - before as f64) * 1024.0 / joined as f64,
            0,
        )),
        _ => None,
    };
    let mut m = ctx.summary();
    m.insert("conns".into(), json!(n));
    m.insert("lobbies".into(), json!(lobbies));
    m.insert("per_conn".into(), json!(per_conn));
    m.insert(
        "members_per_lobby".into(),
        json!(round((n * per_conn) as f64 / lobbies as f64, 2)),
    );
    m.insert("connect".into(), connected.json());
    m.insert(
        "joins".into(),
        json!({
            "target": target,
            "ok": joined,
            "refused": joins.refused_total(),
            "refused_kinds": *joins.refused.borrow(),
            "secs": round(join_secs, 3),
            "per_sec": round(joined as f64 / join_secs.max(1e-9), 1),
            "latency": latency_json(&joins.latency.borrow()),
            "server_cpu_us_per_join": cpu
                .filter(|_| joined > 0)
                .map(|c| round(c * 1e6 / joined as f64, 2)),
        }),
    );
    m.insert("closed".into(), json!(joins.closed.get()));
    m.insert("rss_kib_before".into(), json!(rss_before));
    m.insert("rss_kib_connected".into(), json!(rss_connected));
    m.insert("rss_kib_joined".into(), json!(rss_joined));
    m.insert(
        "rss_kib_per_conn".into(),
        json!(per_conn_kib(rss_connected)),
    );
    m.insert(
        "rss_kib_per_conn_joined".into(),
        json!(per_conn_kib(rss_joined)),
    );
    m.insert("bytes_per_membership".into(), json!(bytes_per_membership));
    m.insert("source_addresses".into(), json!(ctx.sources_used()));
    drop(tasks);
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_answer_to_its_own_join() {
        let joined = br#"{"type":"joined","lobby":"lobbies-3","offset":0,"epoch":"e","presence_events":false,"id":2}"#;
        assert_eq!(answer(joined, 2), Some(Ok(())));
        assert_eq!(answer(joined, 3), None, "another join's answer");
        let refused = br#"{"type":"error","code":"lobby_full","message":"full","id":4}"#;
        assert_eq!(answer(refused, 4), Some(Err("lobby_full".to_owned())));
        let event = br#"{"type":"member_joined","lobby":"lobbies-3","user_id":"u1"}"#;
        assert_eq!(answer(event, 2), None);
    }
}
