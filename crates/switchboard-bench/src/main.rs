//! `switchboard-bench`: the project's load generator. It speaks Switchboard's protocol v1
//! (dev-mode tokens, or HS256 JWTs with `--jwt-secret`) to Switchboard or to a peer server (and
//! protocol v2, many lobbies per connection, to Switchboard in `lobbies`), runs one scenario, prints progress lines on stderr and one JSON summary line on stdout.
//!
//! ```text
//! switchboard-bench idle   --conns N --lobbies L --hold SECS           [common]
//! switchboard-bench fanout --members M --rate R --duration SECS        [common]
//! switchboard-bench fanout --members M --sweep --rate-start R          [common]
//! switchboard-bench churn  --cycles N --secs SECS --workers W          [common]
//! switchboard-bench stale  --healthy H --frozen K --window SECS        [common]
//! switchboard-bench lobbies --conns C --lobbies L --per-conn K          [common]
//! switchboard-bench webhook --clients C --rates R1,R2 --secs T --receiver ADDR [common]
//! common: --addr 127.0.0.1:8080 --server-pid PID --label NAME --ip-base B --per-ip 10000
//!         --concurrency 256 --connect-timeout 10 --jwt-secret S --user-prefix u --max-secs 600
//! ```
//!
//! Layout: `client` (a minimal WebSocket client), `pool` (many connects at once), `procfs`
//! (the server's RSS, CPU and open files), `common` (source addresses, tokens, progress),
//! one module per scenario (`webhook` also holds the HTTP receiver its events are posted to).
//! Everything runs on one thread: pin it with `taskset`.
//!
//! One process opens at most about 19,900 sockets (20,000 open files per process here):
//! above that, run several processes with distinct `--ip-base` and `--user-prefix`.

mod args;
mod churn;
mod client;
mod common;
mod fanout;
mod idle;
mod lobbies;
mod pool;
mod procfs;
mod stale;
mod webhook;

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let args = args::Args::parse(std::env::args().skip(1))?;
    let extra = match args.scenario.as_str() {
        "idle" => idle::OPTS,
        "fanout" => fanout::OPTS,
        "churn" => churn::OPTS,
        "stale" => stale::OPTS,
        "lobbies" => lobbies::OPTS,
        "webhook" => webhook::OPTS,
        "" | "help" | "--help" | "-h" => {
            eprintln!("{}", USAGE);
            return Ok(());
        }
        other => bail!("unknown scenario {other:?}\n{USAGE}"),
    };
    let known: Vec<&str> = common::COMMON.iter().chain(extra).copied().collect();
    args.check_known(&known)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let summary = local.block_on(&runtime, async {
        let ctx = common::Ctx::new(&args)?;
        match args.scenario.as_str() {
            "idle" => idle::run(ctx, &args).await,
            "fanout" => fanout::run(ctx, &args).await,
            "churn" => churn::run(ctx, &args).await,
            "lobbies" => lobbies::run(ctx, &args).await,
            "webhook" => webhook::run(ctx, &args).await,
            _ => stale::run(ctx, &args).await,
        }
    })?;
    println!("{summary}");
    Ok(())
}

const USAGE: &str = "usage: switchboard-bench idle|fanout|churn|stale|lobbies|webhook [--option value ...]
  idle   --conns 1000 --lobbies 10 --hold 30 --settle 3
  fanout --members 1000 --payload 100 (--rate 10 --duration 5 | --sweep --rate-start 10
         --rate-factor 2 --refine 2 --max-steps 14 --step-secs 5) --drain-secs 3 --max-p99-ms 1000
         [--receiver 127.0.0.1:PORT --secret S]  (a webhook receiver beside, counting events)
  churn  --cycles 10000 --secs 120 --workers 32 --warmup 1000 --lobbies 10
  stale  --healthy 100 --frozen 10 --rate 50 --payload 1000 --window 45 --expect-within 31
         [--stats-url http://127.0.0.1:8080/api/stats --stats-key KEY]  (Switchboard's stats API)
  lobbies --conns 10000 --lobbies 1000 --per-conn 10 --settle 3  (protocol v2: joins on live sockets)
  webhook --clients 1000 --lobbies 1 (--rate 1000 | --rates 1000,5000) --secs 5 --drain-secs 3
         --receiver 127.0.0.1:PORT --secret S  (the server's webhook.url: http://PORT/hook)
  common --addr 127.0.0.1:8080 --server-pid PID --label NAME --ip-base 0 --per-ip 10000
         --concurrency 256 --connect-timeout 10 --jwt-secret SECRET --user-prefix u --max-secs 600";
