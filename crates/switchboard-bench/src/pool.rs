//! Opening many connections at once (at most `--concurrency` handshakes in flight), each
//! then living in its own task on the one thread.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::client::{Route, Ws};
use crate::common::{Ctx, Errors, histogram, latency_json, round};

/// Tasks that are aborted (their sockets dropped) when this is dropped.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    pub(crate) fn push(&mut self, h: JoinHandle<()>) {
        self.0.push(h);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// What a connect phase achieved.
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) ok: u64,
    pub(crate) errors: Errors,
    pub(crate) secs: f64,
    pub(crate) handshake: Histogram<u64>,
}

impl Connected {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
    pub(crate) fn json(&self) -> Value {
        json!({
            "ok": self.ok,
            "errors": self.errors.total(),
            "error_kinds": self.errors.json(),
            "secs": round(self.secs, 3),
            "per_sec": round(self.rate(), 1),
            "handshake": latency_json(&self.handshake),
        })
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    last: Option<Instant>,
    errors: Errors,
    handshake: Option<Histogram<u64>>,
}

/// Opens `n` connections; `place(i)` names connection i's route (a lobby in v1, or v2 in none)
/// and user, `life(i, ws)` runs once it is open. Returns when every attempt has ended or `limit` passed.
pub(crate) async fn connect_all<P, L, F>(
    ctx: &Rc<Ctx>,
    tasks: &mut Tasks,
    step: &str,
    n: usize,
    limit: Duration,
    place: P,
    life: L,
) -> Connected
where
    P: Fn(usize) -> (Route, String),
    L: Fn(usize, Ws) -> F + 'static,
    F: Future<Output = ()> + 'static,
{
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(ctx.concurrency.max(1)));
    let tally = Rc::new(RefCell::new(Tally {
        handshake: Some(histogram()),
        ..Tally::default()
    }));
    let life = Rc::new(life);
    for i in 0..n {
        let (route, user) = place(i);
        let (ctx, sem, tally) = (ctx.clone(), sem.clone(), tally.clone());
        let life = life.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let Ok(permit) = sem.acquire_owned().await else {
                return;
            };
            let t0 = Instant::now();
            let result = ctx.connect_to(&route, &user).await;
            drop(permit);
            match result {
                Ok(ws) => {
                    {
                        let mut t = tally.borrow_mut();
                        t.ok += 1;
                        t.last = Some(Instant::now());
                        if let Some(h) = t.handshake.as_mut() {
                            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                        }
                    }
                    let fut = life(i, ws);
                    fut.await;
                }
                Err(e) => {
                    let mut t = tally.borrow_mut();
                    t.failed += 1;
                    t.last = Some(Instant::now());
                    t.errors.add(&e);
                }
            }
        }));
    }
    let mut last_print = Instant::now();
    loop {
        let (ok, failed) = {
            let t = tally.borrow();
            (t.ok, t.failed)
        };
        if ok + failed >= n as u64 || started.elapsed() >= limit {
            ctx.progress(step, format!("done={ok}/{n} failed={failed}"));
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            ctx.progress(step, format!("done={ok}/{n} failed={failed}"));
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut t = tally.borrow_mut();
    let secs = t
        .last
        .unwrap_or_else(Instant::now)
        .duration_since(started)
        .as_secs_f64();
    Connected {
        ok: t.ok,
        errors: std::mem::take(&mut t.errors),
        secs,
        handshake: t.handshake.take().unwrap_or_else(histogram),
    }
}
