//! `switchboard-bench`: the project's load generator. It speaks Switchboard's protocol v1
//! (dev-mode tokens, or HS256 JWTs with `--jwt-secret`) to Switchboard or to a peer server (and
//! protocol v2, many lobbies per connection, to Switchboard in `lobbies`), runs one scenario, prints progress lines on stderr and one JSON summary line on stdout.
//!
//! ```text
//! switchboard-bench --help                   (and `switchboard-bench SCENARIO --help`)
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
//! Layout: `cli` (the options, clap), `client` (a minimal WebSocket client), `pool` (many connects at once), `procfs`
//! (the server's RSS, CPU and open files), `common` (source addresses, tokens, progress),
//! one module per scenario (`webhook` also holds the HTTP receiver its events are posted to).
//! Everything runs on one thread: pin it with `taskset`.
//!
//! One process opens at most about 19,900 sockets (20,000 open files per process here):
//! above that, run several processes with distinct `--ip-base` and `--user-prefix`.

mod churn;
mod cli;
mod client;
mod common;
mod fanout;
mod idle;
mod lobbies;
mod lobby_load;
mod overload;
mod pool;
mod procfs;
mod stale;
mod webhook;

use clap::Parser;

use crate::cli::{Cli, Scenario};

fn main() -> anyhow::Result<()> {
    // `--help` (per scenario too), `--version` and a bad option (with a suggestion) end here.
    let cli = Cli::parse();
    let (name, common) = cli.scenario.common();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let summary = local.block_on(&runtime, async {
        let ctx = common::Ctx::new(name, common);
        match &cli.scenario {
            Scenario::Idle(o) => idle::run(ctx, o).await,
            Scenario::Fanout(o) => fanout::run(ctx, o).await,
            Scenario::Churn(o) => churn::run(ctx, o).await,
            Scenario::Stale(o) => stale::run(ctx, o).await,
            Scenario::Lobbies(o) => lobbies::run(ctx, o).await,
            Scenario::Webhook(o) => webhook::run(ctx, o).await,
        }
    })?;
    println!("{summary}");
    Ok(())
}
