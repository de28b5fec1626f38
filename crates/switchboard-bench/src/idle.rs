//! `idle`: N connections over L lobbies, answering pings, held for T seconds. Reports the
//! connect rate, errors, the server's RSS per connection and its CPU while idle (the cost of
//! health checking).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::Idle;
use crate::client::{OP_PING, OP_TEXT, Route};
use crate::common::{Ctx, round};
use crate::pool::{Tasks, connect_all};

#[derive(Debug, Default)]
struct Counts {
    texts: Cell<u64>,
    pings: Cell<u64>,
    closed: Cell<u64>,
}

pub(crate) async fn run(ctx: Rc<Ctx>, o: &Idle) -> anyhow::Result<Value> {
    let (n, lobbies, hold, settle) = (o.conns, o.lobbies as usize, o.hold, o.settle);
    let server = ctx.server;
    let rss_before = server.rss();
    let fds_before = server.fds();
    let counts = Rc::new(Counts::default());
    let mut tasks = Tasks::default();
    let prefix = ctx.user_prefix.clone();
    let c = counts.clone();
    let connected = connect_all(
        &ctx,
        &mut tasks,
        "connect",
        n,
        ctx.time_left(),
        |i| {
            let lobby = format!("idle-{}", i % lobbies);
            (Route::Lobby(lobby), format!("{prefix}{i}"))
        },
        move |_, mut ws| {
            let c = c.clone();
            async move {
                loop {
                    let read = ws
                        .read_some(&mut |f| match f.opcode {
                            OP_TEXT => c.texts.set(c.texts.get() + 1),
                            OP_PING => c.pings.set(c.pings.get() + 1),
                            _ => {}
                        })
                        .await;
                    if read.is_err() || ws.flush().await.is_err() || ws.closed.is_some() {
                        c.closed.set(c.closed.get() + 1);
                        return;
                    }
                }
            }
        },
    )
    .await;
    ctx.progress(
        "connected",
        format!("ok={} rate={:.0}/s", connected.ok, connected.rate()),
    );
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let rss_connected = server.rss();
    let (cpu0, texts0, pings0) = (server.cpu(), counts.texts.get(), counts.pings.get());
    let t0 = Instant::now();
    let hold_for = Duration::from_secs_f64(hold).min(ctx.time_left());
    while t0.elapsed() < hold_for {
        tokio::time::sleep(Duration::from_secs(5).min(hold_for - t0.elapsed())).await;
        ctx.progress(
            "hold",
            format!(
                "held={:.0}/{hold:.0}s closed={} pings={}",
                t0.elapsed().as_secs_f64(),
                counts.closed.get(),
                counts.pings.get() - pings0
            ),
        );
    }
    let held = t0.elapsed().as_secs_f64();
    let cpu1 = server.cpu();
    let rss_end = server.rss();
    let fds_connected = server.fds();
    let open = connected.ok - counts.closed.get();
    let per_conn = |rss: Option<u64>| match (rss, rss_before) {
        (Some(after), Some(before)) if connected.ok > 0 => Some(round(
            (after as f64 - before as f64) / connected.ok as f64,
            2,
        )),
        _ => None,
    };
    let idle_cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let mut m = ctx.summary();
    m.insert("conns".into(), json!(n));
    m.insert("lobbies".into(), json!(lobbies));
    m.insert("connect".into(), connected.json());
    m.insert("open_at_end".into(), json!(open));
    m.insert("closed_during_hold".into(), json!(counts.closed.get()));
    m.insert("hold_secs".into(), json!(round(held, 2)));
    m.insert(
        "server_pings_in_hold".into(),
        json!(counts.pings.get() - pings0),
    );
    m.insert(
        "server_texts_in_hold".into(),
        json!(counts.texts.get() - texts0),
    );
    m.insert("rss_kib_before".into(), json!(rss_before));
    m.insert("rss_kib_connected".into(), json!(rss_connected));
    m.insert("rss_kib_end".into(), json!(rss_end));
    m.insert("rss_kib_per_conn".into(), json!(per_conn(rss_connected)));
    m.insert("rss_kib_per_conn_end".into(), json!(per_conn(rss_end)));
    m.insert(
        "fds".into(),
        json!({"before": fds_before, "connected": fds_connected}),
    );
    m.insert(
        "server_cpu_s_hold".into(),
        json!(idle_cpu.map(|c| round(c, 2))),
    );
    m.insert(
        "server_cores_per_100k_idle".into(),
        json!(
            idle_cpu
                .filter(|_| open > 0)
                .map(|c| round(c / held.max(1e-9) * 100_000.0 / open as f64, 4))
        ),
    );
    drop(tasks);
    Ok(Value::Object(m))
}
