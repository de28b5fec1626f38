//! `churn`: connect / close cycles (handshake, `welcome`, close 1000, the server's close) by
//! W workers, for a count or a time; then the server's RSS and open files against their
//! values after a warm-up (they should come back: nothing leaks).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::Churn;
use crate::common::{Ctx, Errors, histogram, latency_json, round};

#[derive(Debug)]
struct Phase {
    target: u64,
    started: Cell<u64>,
    ok: Cell<u64>,
    errors: RefCell<Errors>,
    cycle: RefCell<hdrhistogram::Histogram<u64>>,
}

async fn phase(
    ctx: &Rc<Ctx>,
    step: &str,
    target: u64,
    secs: f64,
    workers: usize,
    lobbies: u64,
) -> (Rc<Phase>, f64) {
    let phase = Rc::new(Phase {
        target,
        started: Cell::new(0),
        ok: Cell::new(0),
        errors: RefCell::new(Errors::default()),
        cycle: RefCell::new(histogram()),
    });
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs).min(ctx.time_left());
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (ctx, phase) = (ctx.clone(), phase.clone());
        let step = step.to_owned();
        handles.push(tokio::task::spawn_local(async move {
            loop {
                let n = phase.started.get();
                if n >= phase.target || start.elapsed() >= limit {
                    return;
                }
                phase.started.set(n + 1);
                let t0 = Instant::now();
                let lobby = format!("churn-{}", n % lobbies);
                let user = format!("{}{step}{n}", ctx.user_prefix);
                match ctx.connect(&lobby, &user).await {
                    Ok(ws) => {
                        ws.close(Duration::from_secs(2)).await;
                        phase.ok.set(phase.ok.get() + 1);
                        let us = t0.elapsed().as_micros().max(1) as u64;
                        let _ = phase.cycle.borrow_mut().record(us);
                    }
                    Err(e) => phase.errors.borrow_mut().add(&e),
                }
            }
        }));
    }
    let mut last = Instant::now();
    while !handles.iter().all(|h| h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            ctx.progress(
                step,
                format!(
                    "cycles={}/{} errors={}",
                    phase.ok.get(),
                    target,
                    phase.errors.borrow().total()
                ),
            );
        }
    }
    (phase, start.elapsed().as_secs_f64())
}

pub(crate) async fn run(ctx: Rc<Ctx>, o: &Churn) -> anyhow::Result<Value> {
    let (cycles, secs, workers, warmup) = (o.cycles, o.secs, o.workers, o.warmup);
    let (lobbies, settle) = (o.lobbies, o.settle);
    let server = ctx.server;
    let rss_start = server.rss();
    let (warm, _) = phase(&ctx, "warmup", warmup, secs, workers, lobbies).await;
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let (rss_warm, fds_warm) = (server.rss(), server.fds());
    let cpu0 = server.cpu();
    let (main, wall) = phase(&ctx, "cycles", cycles, secs, workers, lobbies).await;
    let cpu1 = server.cpu();
    ctx.progress(
        "settle",
        format!("cycles={} wall={wall:.1}s", main.ok.get()),
    );
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let (rss_end, fds_end) = (server.rss(), server.fds());
    let ok = main.ok.get();
    let cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let mut m = ctx.summary();
    m.insert("cycles_target".into(), json!(cycles));
    m.insert("workers".into(), json!(workers));
    m.insert("warmup_ok".into(), json!(warm.ok.get()));
    m.insert("cycles_ok".into(), json!(ok));
    m.insert("errors".into(), json!(main.errors.borrow().total()));
    m.insert("error_kinds".into(), main.errors.borrow().json());
    m.insert("secs".into(), json!(round(wall, 2)));
    m.insert(
        "cycles_per_sec".into(),
        json!(round(ok as f64 / wall.max(1e-9), 1)),
    );
    m.insert("cycle_latency".into(), latency_json(&main.cycle.borrow()));
    m.insert(
        "server_cpu_us_per_cycle".into(),
        json!(
            cpu.filter(|_| ok > 0)
                .map(|c| round(c * 1e6 / ok as f64, 1))
        ),
    );
    m.insert("rss_kib_start".into(), json!(rss_start));
    m.insert("rss_kib_after_warmup".into(), json!(rss_warm));
    m.insert("rss_kib_end".into(), json!(rss_end));
    m.insert(
        "rss_end_over_warmup".into(),
        json!(
            rss_end
                .zip(rss_warm)
                .map(|(e, w)| round(e as f64 / w as f64, 3))
        ),
    );
    m.insert("fds_after_warmup".into(), json!(fds_warm));
    m.insert("fds_end".into(), json!(fds_end));
    m.insert("source_addresses".into(), json!(ctx.sources_used()));
    Ok(Value::Object(m))
}
