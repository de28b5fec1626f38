//! `stale`: K frozen clients (they stop reading after `welcome` and never send FIN: the
//! socket stays open and is never polled) among H healthy members, while a publisher floods
//! the lobby. Measures when the server has removed the frozen ones and whether the healthy
//! ones lost anything.
//!
//! How removal is observed: by default the load generator counts the server's open files
//! (/proc/PID/fd), which works for any server (the peers have no stats API): each removed
//! connection closes one socket. With `--stats-url http://HOST:PORT/api/stats` it polls
//! `total_connections` instead (and `--stats-key` is sent as a bearer key).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cli::Stale;
use crate::client::Route;
use crate::common::{Ctx, latency_json, round};
use crate::lobby_load::{Publisher, Seen, member};
use crate::pool::{Tasks, connect_all};

/// `total_connections` from the server's stats API (`GET /api/stats`).
async fn stats_connections(url: &str, key: Option<&str>) -> anyhow::Result<u64> {
    let v = crate::common::http_get_json(url, key).await?;
    v["total_connections"]
        .as_u64()
        .context("no total_connections in stats")
}

pub(crate) async fn run(ctx: Rc<Ctx>, o: &Stale) -> anyhow::Result<Value> {
    let (healthy, frozen, rate, payload) = (o.healthy, o.frozen, o.rate, o.payload);
    let (window, expect_within) = (o.window, o.expect_within);
    let (stats_url, stats_key) = (o.stats_url.clone(), o.stats_key.clone());
    let server = ctx.server;
    if stats_url.is_none() && server.pid.is_none() {
        bail!("stale needs --server-pid (open files) or --stats-url (GET /api/stats)");
    }
    let lobby = "stale".to_owned();
    let seen = Seen::new();
    let mut tasks = Tasks::default();
    let prefix = ctx.user_prefix.clone();
    let s = seen.clone();
    let l = lobby.clone();
    let ok_healthy = connect_all(
        &ctx,
        &mut tasks,
        "connect-healthy",
        healthy,
        ctx.time_left(),
        |i| (Route::Lobby(l.clone()), format!("{prefix}h{i}")),
        move |_, ws| member(ws, s.clone()),
    )
    .await;
    let l = lobby.clone();
    let prefix = ctx.user_prefix.clone();
    let ok_frozen = connect_all(
        &ctx,
        &mut tasks,
        "connect-frozen",
        frozen,
        ctx.time_left(),
        |i| (Route::Lobby(l.clone()), format!("{prefix}f{i}")),
        // Holds the socket and never polls it: no read, no pong, no FIN.
        |_, ws| async move {
            std::future::pending::<()>().await;
            drop(ws);
        },
    )
    .await;
    let frozen_at = Instant::now();
    let publisher_ws = match ctx
        .connect(&lobby, &format!("{}pub", ctx.user_prefix))
        .await
    {
        Ok(ws) => ws,
        Err(e) => bail!("publisher could not connect: {}", e.label()),
    };
    let mut publisher = Publisher::new(publisher_ws, payload, crate::cli::PayloadKind::Padding);
    publisher.idle_for(Duration::from_millis(500)).await;
    let count = || async {
        match &stats_url {
            Some(url) => stats_connections(url, stats_key.as_deref()).await.ok(),
            None => server.fds(),
        }
    };
    let baseline = count()
        .await
        .context("cannot read the server's connection count")?;
    let rss0 = server.rss();
    let mut rss_max = rss0;
    seen.reset(publisher.next_seq);
    let flood_start = Instant::now();
    let (mut sent, mut publisher_blocked) = (0u64, false);
    let (mut first_removed, mut all_removed): (Option<f64>, Option<f64>) = (None, None);
    let mut removed_max = 0u64;
    let window = Duration::from_secs_f64(window).min(ctx.time_left());
    let mut last_print = Instant::now();
    while flood_start.elapsed() < window {
        if publisher_blocked {
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            match tokio::time::timeout(Duration::from_secs(2), publisher.send_for(rate, 0.2)).await
            {
                Ok(Ok((n, _))) => sent += n,
                Ok(Err(_)) | Err(_) => {
                    // The server stopped reading the publisher (its broadcast is stuck).
                    publisher_blocked = true;
                    ctx.progress("flood", "publisher blocked: the server stopped reading it");
                }
            }
        }
        let since_freeze = frozen_at.elapsed().as_secs_f64();
        let now = count().await.unwrap_or(baseline);
        let gone = baseline.saturating_sub(now);
        let removed = gone.saturating_sub(seen.closed.get());
        removed_max = removed_max.max(removed);
        if removed > 0 && first_removed.is_none() {
            first_removed = Some(since_freeze);
        }
        if removed >= ok_frozen.ok && all_removed.is_none() {
            all_removed = Some(since_freeze);
            ctx.progress(
                "flood",
                format!("all {removed} frozen removed after {since_freeze:.1}s"),
            );
        }
        rss_max = rss_max.max(server.rss());
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            ctx.progress(
                "flood",
                format!(
                    "since_freeze={since_freeze:.0}s removed={removed}/{} healthy_closed={} sent={sent}",
                    ok_frozen.ok,
                    seen.closed.get()
                ),
            );
        }
        if all_removed.is_some_and(|t| since_freeze > t + 2.0) {
            break;
        }
    }
    let live = ok_healthy.ok - seen.closed.get();
    let expected = sent * live;
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.received.get() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = seen.received.get();
    let mut m = ctx.summary();
    m.insert("healthy".into(), json!(ok_healthy.ok));
    m.insert("frozen".into(), json!(ok_frozen.ok));
    m.insert(
        "connect_errors".into(),
        json!(ok_healthy.errors.total() + ok_frozen.errors.total()),
    );
    m.insert("rate".into(), json!(rate));
    m.insert("payload_bytes".into(), json!(payload));
    m.insert(
        "observed_by".into(),
        json!(if stats_url.is_some() {
            "stats_api"
        } else {
            "server_open_files"
        }),
    );
    m.insert("frozen_removed".into(), json!(removed_max));
    m.insert(
        "first_removed_secs".into(),
        json!(first_removed.map(|t| round(t, 2))),
    );
    m.insert(
        "all_removed_secs".into(),
        json!(all_removed.map(|t| round(t, 2))),
    );
    m.insert("expect_within_secs".into(), json!(expect_within));
    m.insert(
        "within_expectation".into(),
        json!(expect_within.map(|e| all_removed.is_some_and(|t| t <= e))),
    );
    m.insert("healthy_dropped".into(), json!(seen.closed.get()));
    m.insert("messages_sent".into(), json!(sent));
    m.insert("publisher_blocked".into(), json!(publisher_blocked));
    m.insert("healthy_expected".into(), json!(expected));
    m.insert("healthy_received".into(), json!(received));
    m.insert(
        "healthy_lost".into(),
        json!(expected.saturating_sub(received)),
    );
    m.insert("healthy_latency".into(), latency_json(&seen.hist.borrow()));
    m.insert("rss_kib_before_flood".into(), json!(rss0));
    m.insert("rss_kib_max".into(), json!(rss_max));
    m.insert("rss_kib_end".into(), json!(server.rss()));
    m.insert(
        "flood_secs".into(),
        json!(round(flood_start.elapsed().as_secs_f64(), 2)),
    );
    drop(tasks);
    Ok(Value::Object(m))
}
