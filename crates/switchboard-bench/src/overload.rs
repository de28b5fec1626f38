//! `fanout --sweep --past-saturation`: the overload curve. The rate goes up by
//! `--rate-factor` for every one of `--max-steps` steps, whatever fails, and each step
//! reports what the members and the publisher saw (deliveries, refused broadcasts, members
//! closed and why, broadcasts a member saw lost, latency) and what the server did (its RSS;
//! with `--stats-url`, Switchboard's shed publishes and deliveries, lost catch-ups, lagging
//! members and closes by reason; with `--redis`, Redis's CPU and commands per publication).
//! Members never reconnect: one closed stays closed. A table goes to stderr at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Ctx, http_get_json, latency_json, round};
use crate::lobby_load::{Publisher, Seen};
use crate::procfs::cpu_secs;

/// What is read around each step besides the members: Switchboard's stats API on each node,
/// and Redis's INFO.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    pub(crate) stats_urls: Vec<String>,
    pub(crate) stats_key: Option<String>,
    pub(crate) redis: Option<SocketAddr>,
}

/// One reading of everything [`Probe`] watches.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    stats: Vec<Option<Value>>,
    redis: Option<RedisInfo>,
}

impl Probe {
    pub(crate) fn is_empty(&self) -> bool {
        self.stats_urls.is_empty() && self.redis.is_none()
    }

    pub(crate) async fn snapshot(&self) -> Snapshot {
        let mut stats = Vec::new();
        for url in &self.stats_urls {
            let got = tokio::time::timeout(
                Duration::from_secs(2),
                http_get_json(url, self.stats_key.as_deref()),
            )
            .await;
            stats.push(got.ok().and_then(Result::ok));
        }
        let redis = match self.redis {
            Some(addr) => tokio::time::timeout(Duration::from_secs(2), redis_info(addr))
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        Snapshot { stats, redis }
    }

    /// What changed between two snapshots, as step fields: `stats` (one object per
    /// `--stats-url`) and `redis`; `published` broadcasts share Redis's work.
    pub(crate) fn delta(&self, a: &Snapshot, b: &Snapshot, published: u64) -> Map<String, Value> {
        let mut m = Map::new();
        if !self.stats_urls.is_empty() {
            let nodes: Vec<Value> = a
                .stats
                .iter()
                .zip(&b.stats)
                .map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => stats_delta(a, b),
                    _ => Value::Null,
                })
                .collect();
            m.insert("stats".into(), json!(nodes));
        }
        if self.redis.is_some() {
            let r = match (&a.redis, &b.redis) {
                (Some(a), Some(b)) => a.delta(b, published),
                _ => Value::Null,
            };
            m.insert("redis".into(), r);
        }
        m
    }
}

fn counter(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// One node's `/api/stats` between two readings: counters as differences, gauges as they
/// ended.
fn stats_delta(a: &Value, b: &Value) -> Value {
    let mut closes = BTreeMap::new();
    if let Some(after) = b["closes"].as_object() {
        for (reason, n) in after {
            let d = n.as_u64().unwrap_or(0) - a["closes"][reason].as_u64().unwrap_or(0);
            if d > 0 {
                closes.insert(reason.clone(), d);
            }
        }
    }
    let d = |k: &str| counter(b, k).saturating_sub(counter(a, k));
    json!({
        "shed_publishes": d("shed_publishes"),
        "shed_deliveries": d("shed_deliveries"),
        "catch_ups_lost": d("catch_ups_lost"),
        "lagging_members": b["lagging_members"],
        "total_connections": b["total_connections"],
        "closes": closes,
    })
}

/// What `INFO all` says about Redis's CPU and its commands.
#[derive(Debug, Default, Clone)]
pub(crate) struct RedisInfo {
    /// `used_cpu_sys` + `used_cpu_user`, seconds.
    cpu_s: f64,
    /// `cmdstat_NAME`: calls and microseconds.
    commands: BTreeMap<String, (u64, u64)>,
}

impl RedisInfo {
    pub(crate) fn parse(text: &str) -> Self {
        let mut info = Self::default();
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(v) = line
                .strip_prefix("used_cpu_sys:")
                .or_else(|| line.strip_prefix("used_cpu_user:"))
            {
                info.cpu_s += v.parse::<f64>().unwrap_or(0.0);
            } else if let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|rest| rest.split_once(':'))
            {
                let get = |key: &str| {
                    fields
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(key))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                info.commands
                    .insert(name.to_owned(), (get("calls="), get("usec=")));
            }
        }
        info
    }

    /// CPU and commands from `self` to `later`, and per published broadcast.
    pub(crate) fn delta(&self, later: &Self, published: u64) -> Value {
        let cpu = later.cpu_s - self.cpu_s;
        let mut commands = Map::new();
        let (mut eval_calls, mut eval_usec, mut all_usec) = (0, 0, 0);
        for (name, (calls, usec)) in &later.commands {
            let (c0, u0) = self.commands.get(name).copied().unwrap_or((0, 0));
            let (calls, usec) = (calls.saturating_sub(c0), usec.saturating_sub(u0));
            if calls == 0 {
                continue;
            }
            all_usec += usec;
            if name == "eval" || name == "evalsha" {
                eval_calls += calls;
                eval_usec += usec;
            }
            commands.insert(name.clone(), json!({ "calls": calls, "usec": usec }));
        }
        let per = |v: f64| (published > 0).then(|| round(v / published as f64, 2));
        json!({
            "cpu_s": round(cpu, 3),
            "cpu_us_per_publication": per(cpu * 1e6),
            "eval_calls": eval_calls,
            "eval_usec": eval_usec,
            "eval_us_per_call": (eval_calls > 0).then(|| round(eval_usec as f64 / eval_calls as f64, 2)),
            "eval_us_per_publication": per(eval_usec as f64),
            "command_us_per_publication": per(all_usec as f64),
            "commands": commands,
        })
    }
}

/// `INFO all` over RESP.
async fn redis_info(addr: SocketAddr) -> anyhow::Result<RedisInfo> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n").await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "Redis closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let Some(eol) = crate::client::find(&buf, b"\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..eol])?;
        let len: usize = head
            .strip_prefix('$')
            .with_context(|| format!("unexpected answer to INFO: {head}"))?
            .parse()?;
        if buf.len() >= eol + 2 + len {
            let body = std::str::from_utf8(&buf[eol + 2..eol + 2 + len])?;
            return Ok(RedisInfo::parse(body));
        }
    }
}

/// How a past-saturation step runs.
#[derive(Debug)]
pub(crate) struct StepConfig {
    pub(crate) secs: f64,
    pub(crate) drain: Duration,
    pub(crate) max_p99_us: u64,
    pub(crate) max_rss_kib: u64,
}

/// One step at `rate`: sends for `secs` (no more, whatever the server takes), waits up to the
/// drain for the broadcasts the server accepted, and reports. `members`: connected at the
/// start of the run.
pub(crate) async fn step(
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
    let reasons0 = seen.close_reasons.borrow().clone();
    let (gaps0, repeats0, recovered0) = (
        seen.gap_lost.get(),
        seen.repeats.get(),
        seen.recovered_lost.get(),
    );
    let (errors0, refused0) = (publisher.errors.0.clone(), publisher.errors.refused());
    let live = members - closed0;
    let before = probe.snapshot().await;
    let (server_cpu0, client_cpu0) = (ctx.server.cpu(), cpu_secs(None));
    let rss_start = ctx.server.rss();
    let start = Instant::now();
    let limit = Duration::from_secs_f64(cfg.secs);
    let (sent, send_secs) = publisher.send_within(rate, cfg.secs, Some(limit)).await?;
    let unwritten = publisher.ws.out.len();
    let rss_sent = ctx.server.rss();
    let mut rss_max = rss_start.max(rss_sent);
    let deadline = Instant::now() + cfg.drain;
    let mut over_rss = false;
    loop {
        let refused = publisher.errors.refused() - refused0;
        let expected = (sent - refused.min(sent)) * (members - seen.closed.get());
        if seen.received.get() >= expected || Instant::now() >= deadline {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        publisher
            .idle_for(Duration::from_millis(50).min(left))
            .await;
        rss_max = rss_max.max(ctx.server.rss());
        if rss_max.is_some_and(|r| r > cfg.max_rss_kib) {
            over_rss = true;
            break;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let (server_cpu1, client_cpu1) = (ctx.server.cpu(), cpu_secs(None));
    let rss_end = ctx.server.rss();
    let rss_max = rss_max.max(rss_end);
    let after = probe.snapshot().await;
    let received = seen.received.get();
    let refused = publisher.errors.refused() - refused0;
    // What the server says it shed, where it says so: a flooding publisher is not told of
    // every refusal (its own queue may be full), nor, in a cluster, of a publish shed while
    // it waited for Redis.
    let shed_by_server = probe
        .delta(&before, &after, 0)
        .get("stats")
        .and_then(Value::as_array)
        .cloned()
        .filter(|nodes| !nodes.is_empty() && nodes.iter().all(Value::is_object))
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| counter(n, "shed_publishes"))
                .sum::<u64>()
        });
    let accepted = sent.saturating_sub(shed_by_server.unwrap_or(refused).max(refused));
    let expected = accepted * live;
    let errors: BTreeMap<&String, u64> = publisher
        .errors
        .0
        .iter()
        .map(|(code, n)| (code, n - errors0.get(code).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let closed = seen.closed.get() - closed0;
    let reasons: BTreeMap<String, u64> = seen
        .close_reasons
        .borrow()
        .iter()
        .map(|(r, n)| (r.clone(), n - reasons0.get(r).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let gap_lost = seen.gap_lost.get() - gaps0;
    let recovered_lost = seen.recovered_lost.get() - recovered0;
    let hist = seen.hist.borrow();
    let active = seen
        .last_at
        .get()
        .map_or(wall, |t| t.duration_since(start).as_secs_f64());
    let distinct = seen.distinct_seen();
    let offered = (rate * cfg.secs).round().max(1.0) as u64;
    let server_cpu = server_cpu0.zip(server_cpu1).map(|(a, b)| b - a);
    let client_cpu = client_cpu0.zip(client_cpu1).map(|(a, b)| b - a);
    let pass = refused == 0
        && closed == 0
        && gap_lost == 0
        && recovered_lost == 0
        && sent == offered
        && received >= sent * live
        && hist.value_at_quantile(0.99) < cfg.max_p99_us;
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    put("rate", json!(round(rate, 3)));
    put("offered", json!(offered));
    put("sent", json!(sent));
    put("send_secs", json!(round(send_secs, 3)));
    // Bytes of sent broadcasts the server had not read from the publisher when sending ended.
    put("publisher_unwritten_bytes", json!(unwritten));
    put("refused", json!(refused));
    put("shed_by_server", json!(shed_by_server));
    put("errors", json!(errors));
    put("accepted", json!(accepted));
    put("members", json!(live));
    put("expected", json!(expected));
    put("received", json!(received));
    put("undelivered", json!(expected.saturating_sub(received)));
    put(
        "accepted_never_delivered",
        json!(accepted.saturating_sub(distinct)),
    );
    put("lost", json!(gap_lost));
    put("offset_gaps_lost", json!(gap_lost));
    put("recovered_lost", json!(recovered_lost));
    put("out_of_order", json!(seen.repeats.get() - repeats0));
    put("members_closed", json!(closed));
    put("close_reasons", json!(reasons));
    put("members_open_at_end", json!(members - seen.closed.get()));
    put(
        "deliveries_per_sec",
        json!(round(received as f64 / active.max(1e-9), 0)),
    );
    put(
        "offered_deliveries_per_sec",
        json!(round(rate * live as f64, 0)),
    );
    put("latency", latency_json(&hist));
    put("server_rss_kib_start", json!(rss_start));
    put("server_rss_kib_sent", json!(rss_sent));
    put("server_rss_kib_end", json!(rss_end));
    put("server_rss_kib_max", json!(rss_max));
    put("over_rss_cap", json!(over_rss));
    put("server_cpu_s", json!(server_cpu.map(|c| round(c, 2))));
    put(
        "server_cpu_us_per_delivery",
        json!(
            server_cpu
                .filter(|_| received > 0)
                .map(|c| round(c * 1e6 / received as f64, 3))
        ),
    );
    put("client_cpu_s", json!(client_cpu.map(|c| round(c, 2))));
    put("wall_secs", json!(round(wall, 3)));
    put("pass", json!(pass));
    drop(hist);
    // Redis's work per broadcast it numbered.
    m.extend(probe.delta(&before, &after, accepted));
    Ok(Value::Object(m))
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f >= 1000.0 => {
            let s = format!("{:.0}", f);
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.1}"),
        None => "-".into(),
    }
}

/// The steps as a Markdown table (what goes to stderr at the end of the run).
pub(crate) fn table(steps: &[Value]) -> String {
    let mut out = String::from(
        "| msg/s offered | sent | refused | deliveries/s | lost (gaps / recovered false) | \
         undelivered | members closed (reasons) | p50 / p99 ms | server RSS MiB (max) | \
         server shed publishes / deliveries | server closes | Redis µs per publication |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in steps {
        if let Some(e) = s["error"].as_str() {
            out.push_str(&format!("| {} | {e} |\n", num(&s["rate"])));
            continue;
        }
        let reasons: Vec<String> = s["close_reasons"]
            .as_object()
            .map(|o| o.iter().map(|(r, n)| format!("{n}x {r}")).collect())
            .unwrap_or_default();
        let closed = if reasons.is_empty() {
            num(&s["members_closed"])
        } else {
            format!("{} ({})", num(&s["members_closed"]), reasons.join(", "))
        };
        let shed = s["stats"].as_array().map_or("-".to_owned(), |nodes| {
            nodes
                .iter()
                .map(|n| {
                    format!(
                        "{} / {}",
                        num(&n["shed_publishes"]),
                        num(&n["shed_deliveries"])
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        let server_closes: Vec<String> = s["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["closes"].as_object())
            .flat_map(|o| o.iter().map(|(r, n)| format!("{}x {r}", num(n))))
            .collect();
        let server_closes = if s["stats"].is_array() {
            server_closes.join(", ")
        } else {
            "-".to_owned()
        };
        let rss = s["server_rss_kib_max"]
            .as_f64()
            .map_or("-".to_owned(), |k| format!("{:.0}", k / 1024.0));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} | {} | {closed} | {} / {} | {rss} | {shed} | {server_closes} | {} |\n",
            num(&s["rate"]),
            num(&s["sent"]),
            num(&s["refused"]),
            num(&s["deliveries_per_sec"]),
            num(&s["offset_gaps_lost"]),
            num(&s["recovered_lost"]),
            num(&s["undelivered"]),
            num(&s["latency"]["p50_ms"]),
            num(&s["latency"]["p99_ms"]),
            num(&s["redis"]["cpu_us_per_publication"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_info_per_publication() {
        let a = RedisInfo::parse(
            "# CPU\r\nused_cpu_sys:1.50\r\nused_cpu_user:2.50\r\n# Commandstats\r\n\
             cmdstat_eval:calls=10,usec=100,usec_per_call=10.00,rejected_calls=0\r\n\
             cmdstat_publish:calls=5,usec=5,usec_per_call=1.00\r\n",
        );
        let b = RedisInfo::parse(
            "used_cpu_sys:1.70\r\nused_cpu_user:2.80\r\n\
             cmdstat_eval:calls=110,usec=700,usec_per_call=6.36\r\n\
             cmdstat_evalsha:calls=100,usec=400\r\n\
             cmdstat_publish:calls=5,usec=5\r\n",
        );
        let d = a.delta(&b, 200);
        assert_eq!(d["cpu_s"], 0.5);
        assert_eq!(d["cpu_us_per_publication"], 2500.0);
        assert_eq!(d["eval_calls"], 200);
        assert_eq!(d["eval_usec"], 1000);
        assert_eq!(d["eval_us_per_call"], 5.0);
        assert_eq!(d["eval_us_per_publication"], 5.0);
        // A command that did not run in between is left out.
        assert!(d["commands"].get("publish").is_none(), "{d}");
    }

    #[test]
    fn stats_between_readings() {
        let a = json!({"shed_publishes": 3, "shed_deliveries": 10, "catch_ups_lost": 0,
                       "lagging_members": 4, "closes": {"slow_consumer": 1}});
        let b = json!({"shed_publishes": 8, "shed_deliveries": 30, "catch_ups_lost": 2,
                       "lagging_members": 0, "total_connections": 7,
                       "closes": {"slow_consumer": 3, "client_closed": 1}});
        let d = stats_delta(&a, &b);
        assert_eq!(d["shed_publishes"], 5);
        assert_eq!(d["shed_deliveries"], 20);
        assert_eq!(d["catch_ups_lost"], 2);
        assert_eq!(d["lagging_members"], 0);
        assert_eq!(d["closes"], json!({"slow_consumer": 2, "client_closed": 1}));
    }

    #[test]
    fn a_table_row_per_step() {
        let step = json!({"rate": 1600.0, "sent": 9600, "refused": 120, "deliveries_per_sec": 1_500_000.0,
            "offset_gaps_lost": 0, "recovered_lost": 0, "undelivered": 0, "members_closed": 2,
            "close_reasons": {"4008 slow_consumer": 2}, "latency": {"p50_ms": 3.5, "p99_ms": 120.0},
            "server_rss_kib_max": 20480, "stats": [{"shed_publishes": 120, "shed_deliveries": 5000}]});
        let t = table(&[step, json!({"rate": 3200.0, "error": "publisher closed"})]);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert_eq!(
            rows[2],
            "| 1,600 | 9,600 | 120 | 1,500,000 | 0 / 0 | 0 | 2 (2x 4008 slow_consumer) | 3.5 / 120 | 20 | 120 / 5,000 |  | - |"
        );
        assert!(rows[3].contains("publisher closed"), "{t}");
    }
}
