//! The command line (clap): one subcommand per scenario, each with its own options and
//! `--help`, and the options every scenario takes.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Switchboard's load generator: runs one scenario against a server, prints progress lines on
/// stderr and one JSON summary line on stdout. Pin it with `taskset`.
#[derive(Debug, Parser)]
#[command(name = "switchboard-bench", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// Idle connections: connects/s, then the server's memory per connection while they hold.
    Idle(Idle),
    /// One lobby's fan-out: deliveries/s and latency at a fixed rate, or the highest sustained
    /// rate (`--sweep`).
    Fanout(Fanout),
    /// Connect/close cycles per second.
    Churn(Churn),
    /// Healthy readers beside frozen ones: the frozen are removed, the healthy lose nothing.
    Stale(Stale),
    /// Protocol v2: connections that each join many lobbies; joins/s and bytes per membership.
    Lobbies(Lobbies),
    /// Clients chatting through the server's webhook to this process's receiver.
    Webhook(Webhook),
}

impl Scenario {
    /// The scenario's name (as in the summary) and the options every scenario takes.
    pub(crate) fn common(&self) -> (&'static str, &Common) {
        match self {
            Self::Idle(o) => ("idle", &o.common),
            Self::Fanout(o) => ("fanout", &o.common),
            Self::Churn(o) => ("churn", &o.common),
            Self::Stale(o) => ("stale", &o.common),
            Self::Lobbies(o) => ("lobbies", &o.common),
            Self::Webhook(o) => ("webhook", &o.common),
        }
    }
}

/// Options every scenario takes.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// The server.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) addr: SocketAddr,
    /// The server's process id: its RSS, CPU and open files are read from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// A name for the server in the summary.
    #[arg(long, default_value = "server")]
    pub(crate) label: String,
    /// Source addresses are 127.BASE.X.Y (a distinct BASE per concurrent process).
    #[arg(long, default_value_t = 0)]
    pub(crate) ip_base: u8,
    /// Sockets per source address (a new address after that many).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) per_ip: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) concurrency: usize,
    /// Seconds a connect may take.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) connect_timeout: f64,
    /// Sign HS256 JWTs with this secret (default: dev-mode tokens, the user id).
    #[arg(long)]
    pub(crate) jwt_secret: Option<String>,
    /// User ids are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "u")]
    pub(crate) user_prefix: String,
    /// The whole run stops after this many seconds, whatever it is doing.
    #[arg(long, default_value_t = 600.0)]
    pub(crate) max_secs: f64,
    /// Offer permessage-deflate (as browsers do): compressed frames are inflated before they
    /// are read, so their cost shows on the load generator's side too.
    #[arg(long)]
    pub(crate) deflate: bool,
}

/// What a broadcast's `data` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PayloadKind {
    /// `{"s":SEQ,"t":MICROS,"p":"xxxx..."}`.
    Padding,
    /// A chat message object (JSON), varied per message.
    Chat,
}

/// `idle`.
#[derive(Debug, Args)]
pub(crate) struct Idle {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) conns: usize,
    /// Lobbies they are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) lobbies: u64,
    /// Seconds they are held open.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) hold: f64,
    /// Seconds to wait before measuring the server's memory.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) settle: f64,
}

/// `fanout`.
#[derive(Debug, Args)]
pub(crate) struct Fanout {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Members of the lobby.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) members: usize,
    /// The publisher connects here instead (another node of a cluster: cross-node latency).
    #[arg(long)]
    pub(crate) publish_addr: Option<SocketAddr>,
    /// The lobby.
    #[arg(long, default_value = "fanout")]
    pub(crate) lobby: String,
    /// Payload bytes per broadcast.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// What the broadcasts' `data` holds: `padding` (a sequence number, a send time and
    /// `x`s, which compress unrealistically well) or `chat` (a chat message object: user,
    /// text, timestamps, reactions, ...; its text varies per message and is sized so that the
    /// object is about `--payload` bytes).
    #[arg(long, value_enum, default_value_t = PayloadKind::Padding)]
    pub(crate) payload_kind: PayloadKind,
    /// Broadcasts the publisher sends together, in one socket write (the rate is kept on
    /// average: K at a time, K/rate apart). 1: each when it is due. The input for which a
    /// server's coalescing of one read's broadcasts matters.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) per_write: u64,
    /// Broadcasts per second (without `--sweep`).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Seconds of publishing (without `--sweep`; the step length with it, unless
    /// `--step-secs`).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Raise the rate step by step until a step fails (p99 over `--max-p99-ms`, or losses);
    /// with `--past-saturation`, on through every step.
    #[arg(long)]
    pub(crate) sweep: bool,
    /// The sweep's first rate.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate_start: f64,
    /// The sweep's rate factor between steps.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) rate_factor: f64,
    /// Steps between the last passing and the first failing rate, after the sweep.
    #[arg(long, default_value_t = 2)]
    pub(crate) refine: u32,
    /// The sweep's steps, at most.
    #[arg(long, default_value_t = 14)]
    pub(crate) max_steps: usize,
    /// Seconds per step [default: `--duration`].
    #[arg(long)]
    pub(crate) step_secs: Option<f64>,
    /// Seconds to wait for the last deliveries after each step.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain_secs: f64,
    /// A step passes only with its p99 latency under this (ms).
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) max_p99_ms: f64,
    /// Also serve a webhook receiver here (the server's webhook.url: http://ADDR/hook).
    #[arg(long)]
    pub(crate) receiver: Option<SocketAddr>,
    /// The webhook secret the receiver verifies with.
    #[arg(long)]
    pub(crate) secret: Option<String>,
    /// With `--sweep`: keep raising the rate by `--rate-factor` for all `--max-steps` steps,
    /// whatever fails (no bisecting), to show the overload curve. Members never reconnect: a
    /// closed member stays closed. Each step reports deliveries/s, the broadcasts the server
    /// refused the publisher (`rate_limited` / `overloaded` errors), members closed and their
    /// close codes and reasons, messages members saw lost (`recovered` ok:false, offset gaps),
    /// latency and the server's RSS; a table on stderr at the end [default: off: the sweep
    /// stops at the first failing step].
    #[arg(long, requires = "sweep")]
    pub(crate) past_saturation: bool,
    /// Members besides `--members` that stop reading once connected (a 4 KiB receive
    /// buffer): a server must close them (or buffer for them) while the others read. Not
    /// counted in deliveries; their closes show in `--stats-url`'s closes.
    #[arg(long, default_value_t = 0)]
    pub(crate) stuck: usize,
    /// With `--past-saturation`: stop once the server's RSS passes this many MiB (a peer that
    /// buffers without bound must not take the machine down).
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_server_rss_mib: u64,
    /// Switchboard's stats API (http://HOST:PORT/api/stats), read before and after each step:
    /// shed publishes and deliveries, lost catch-ups, lagging members, closes by reason.
    /// Repeat it for each node of a cluster [default: none].
    #[arg(long)]
    pub(crate) stats_url: Vec<String>,
    /// The API key for `--stats-url` (sent as a bearer key) [default: none].
    #[arg(long)]
    pub(crate) stats_key: Option<String>,
    /// A Redis (HOST:PORT) whose `INFO cpu` and `INFO commandstats` are read before and after
    /// each step: its CPU per publication [default: none].
    #[arg(long)]
    pub(crate) redis: Option<SocketAddr>,
}

/// `churn`.
#[derive(Debug, Args)]
pub(crate) struct Churn {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connect/close cycles, at most.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) cycles: u64,
    /// Seconds, at most.
    #[arg(long, default_value_t = 120.0)]
    pub(crate) secs: f64,
    /// Cycles in flight at once.
    #[arg(long, default_value_t = 32)]
    pub(crate) workers: usize,
    /// Cycles before the measurement starts.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) warmup: u64,
    /// Lobbies the cycles are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) lobbies: u64,
    /// Seconds to wait before reading the server's state at the end.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) settle: f64,
}

/// `stale`.
#[derive(Debug, Args)]
pub(crate) struct Stale {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Members that read.
    #[arg(long, default_value_t = 100)]
    pub(crate) healthy: usize,
    /// Members that stop reading and answering.
    #[arg(long, default_value_t = 10)]
    pub(crate) frozen: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) rate: f64,
    /// Payload bytes per broadcast.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) payload: usize,
    /// Seconds of the run.
    #[arg(long, default_value_t = 45.0)]
    pub(crate) window: f64,
    /// Fail unless every frozen member was removed within this many seconds.
    #[arg(long)]
    pub(crate) expect_within: Option<f64>,
    /// Switchboard's stats API (http://HOST:PORT/api/stats), to count connections.
    #[arg(long)]
    pub(crate) stats_url: Option<String>,
    /// The API key for `--stats-url`.
    #[arg(long)]
    pub(crate) stats_key: Option<String>,
}

/// `lobbies`.
#[derive(Debug, Args)]
pub(crate) struct Lobbies {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections (protocol v2).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) conns: usize,
    /// Lobbies the joins are spread over.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) lobbies: u64,
    /// Lobbies each connection joins.
    #[arg(long, default_value_t = 10)]
    pub(crate) per_conn: usize,
    /// Seconds to wait before measuring the server's memory.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) settle: f64,
}

/// `webhook`.
#[derive(Debug, Args)]
pub(crate) struct Webhook {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Chatting clients.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) clients: u64,
    /// Lobbies they are spread over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) lobbies: u64,
    /// Messages per second over all clients (one step), unless `--rates`.
    #[arg(long, default_value_t = 1_000.0)]
    pub(crate) rate: f64,
    /// Several steps: messages per second, comma-separated (e.g. 1000,5000,20000).
    #[arg(long, value_delimiter = ',')]
    pub(crate) rates: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) secs: f64,
    /// Seconds to wait for the last events after each step.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain_secs: f64,
    /// Where the receiver listens (the server's webhook.url is http://ADDR/hook).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) receiver: SocketAddr,
    /// The webhook secret the receiver verifies signatures with.
    #[arg(long)]
    pub(crate) secret: Option<String>,
}
