//! `fanout`: M members in one lobby and a publisher sending `broadcast` frames (a sequence
//! number and a send time in `data`) at a fixed rate; `--sweep` raises the rate step by step
//! (doubling, then bisecting) to find the highest rate sustained with nothing lost and
//! p99 < `--max-p99-ms`. Each step reports deliveries/s, losses, latency and the server's
//! CPU-seconds per delivery. `--receiver ADDR` also serves a webhook receiver there (bound
//! before the members connect), so that a server with webhooks on has a backend that answers
//! 200: fan-out with and without webhooks is one flag apart.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::cli::Fanout;
use crate::client::Route;
use crate::common::{Ctx, latency_json, round};
use crate::lobby_load::{Publisher, Seen, member};
use crate::overload::{self, Probe};
use crate::pool::{Tasks, connect_all};
use crate::procfs::cpu_secs;
use crate::webhook::Receiver;

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
    let bytes_read = seen.bytes_read.get();
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
        "member_bytes_read": bytes_read,
        "wire_bytes_per_delivery": (received > 0)
            .then(|| round(bytes_read as f64 / received as f64, 1)),
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
                deflate: ctx.target.deflate,
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
    let mut publisher = Publisher::new(publisher_ws, payload, o.payload_kind);
    publisher.per_write = o.per_write;
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
    m.insert(
        "payload_kind".into(),
        json!(format!("{:?}", o.payload_kind).to_lowercase()),
    );
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
