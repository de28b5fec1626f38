//! Server configuration: a TOML file, then `SWITCHBOARD_*` environment variables (the
//! environment wins), validated at start-up.
//!
//! Names are dotted paths: `limits.max_per_lobby` in the file is
//! `SWITCHBOARD_LIMITS__MAX_PER_LOBBY` in the environment. Both go through one setter, so they
//! accept the same values. Unknown names are refused, so a typo never silently leaves a
//! default in place. `config/switchboard.example.toml` documents every field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use switchboard::Config as ManagerConfig;

mod print;
pub use print::SECRETS;
mod set;

const PREFIX: &str = "SWITCHBOARD_";

/// The largest `api.max_body_bytes`: an API body is read whole into memory.
pub const MAX_API_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Every name [`ServerConfig::set`] accepts, in the order `--print-config` shows them: the one
/// list of names (the getter behind `--print-config`, the example file and the suggestions
/// for a misspelt name are all checked or built against it).
pub const KNOWN: &[&str] = &[
    "bind",
    "dev_mode",
    "auth.jwt_secret",
    "auth.jwt_public_key_file",
    "auth.issuer",
    "auth.audience",
    "auth.connect_url",
    "auth.join_url",
    "auth.forward_headers",
    "auth.proxy_timeout_ms",
    "auth.proxy_concurrency",
    "api.key",
    "allowed_origins",
    "trusted_proxies",
    "admin_bind",
    "handshake_timeout_ms",
    "http.body_timeout_ms",
    "http.max_pending",
    "api.max_body_bytes",
    "limits.max_connections",
    "limits.max_per_lobby",
    "limits.max_per_user",
    "limits.max_per_ip",
    "limits.max_lobbies_per_connection",
    "limits.ipv6_prefix",
    "user_policy",
    "health.ping_interval_ms",
    "health.pong_timeout_ms",
    "queue.capacity",
    "queue.on_full",
    "queue.slow_grace_ms",
    "queue.write_delay_ms",
    "max_message_bytes",
    "compression.enabled",
    "compression.min_bytes",
    "rate.messages_per_sec",
    "rate.burst",
    "rate.max_violations",
    "rate.connects_per_ip_per_sec",
    "client.allow_broadcast",
    "client.allow_direct",
    "presence.events",
    "presence.leave_grace_ms",
    "presence.events_max_members",
    "presence.events_batch_ms",
    "capacity_warn_percent",
    "webhook.url",
    "webhook.secret",
    "webhook.events",
    "webhook.message_types",
    "webhook.batch_max",
    "webhook.batch_ms",
    "webhook.max_retry_ms",
    "webhook.timeout_ms",
    "webhook.queue_bytes",
    "webhook.rpc_url",
    "webhook.ca_file",
    "webhook.rpc_concurrency",
    "webhook.rpc_max_in_flight",
    "redis.node_id",
    "redis.url",
    "redis.heartbeat_ms",
    "redis.node_ttl_ms",
    "redis.key_prefix",
    "redis.outbound_max_bytes",
    "redis.ca_file",
    "redis.client_cert_file",
    "redis.client_key_file",
    "test_clock_offset_ms",
    "shutdown.drain_ms",
    "shutdown.deadline_ms",
    "log.format",
    "log.level",
    "log.summary_interval_ms",
    "pages.enabled",
    "history.size",
    "history.ttl_ms",
    "history.max_bytes",
];

/// A secret (JWT secret, API key): its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Log output format (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event (`"text"`; `"human"` is accepted as its old name), without
    /// colour codes unless stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the server binary needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// Dev mode (tokens are user ids): only when asked for (`dev_mode = true` or `--dev`),
    /// never inferred from missing auth, so a lost secret stops the server instead of opening it.
    pub dev_mode: bool,
    /// HS256 secret.
    pub jwt_secret: Option<Secret>,
    /// RS256 public key (PEM file).
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, a token's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// `Origin` allowlist; empty means same host and loopback origins only.
    pub allowed_origins: Vec<String>,
    /// Bearer key of the HTTP API; without one the API is off (except in dev mode).
    pub api_key: Option<Secret>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// A separate listener for `/api` and `/metrics`.
    pub admin_bind: Option<SocketAddr>,
    /// A TCP connection must finish its HTTP request head (the upgrade) within this.
    pub handshake_timeout: Duration,
    /// A request body (an SSE post, an API call) must arrive whole within this.
    pub body_timeout: Duration,
    /// HTTP connections not (yet) upgraded, at most; more are refused at once with 503, so a
    /// crowd of slow requests cannot use up the process's file descriptors.
    pub max_pending: usize,
    /// The largest body the HTTP API reads; larger ones get 413.
    pub api_max_body_bytes: usize,
    /// Close spread at shutdown.
    pub drain: Duration,
    /// Hard limit for the whole shutdown.
    pub deadline: Duration,
    /// Cluster mode: the Redis URL (`None`: a single node).
    pub redis_url: Option<Secret>,
    /// Heartbeat period of this node in the cluster.
    pub redis_heartbeat: Duration,
    /// A node silent for longer than this is dead; its state is freed.
    pub redis_node_ttl: Duration,
    /// Namespace of every Redis key and channel.
    pub redis_key_prefix: String,
    /// Bound of the node's queue of frames waiting to be published to Redis, in bytes.
    pub redis_outbound_max_bytes: usize,
    /// `rediss://` only: trust, and client identity (PEM files).
    pub redis_tls: switchboard_redis::TlsFiles,
    /// Test only (`SWITCHBOARD_TEST_CLOCK_OFFSET_MS`): shifts the node's wall clock as the
    /// Redis adapter reads it, to show that cluster liveness does not depend on it.
    pub test_clock_offset_ms: i64,
    /// Demo page and dashboard: `Some` when asked for explicitly; `None` means in dev mode only.
    pub pages_enabled: Option<bool>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level filter (an `EnvFilter` directive).
    pub log_level: String,
    /// Period of the one-line summary logged at info level (`log.summary_interval_ms`);
    /// zero: none.
    pub log_summary_interval: Duration,
    /// The connect and join proxy (`auth.connect_url`, `auth.join_url`).
    pub proxy: ProxyConfig,
    /// Webhooks and RPC to the backend (`[webhook]`).
    pub webhook: WebhookConfig,
    /// The manager's own settings.
    pub manager: ManagerConfig,
}

/// The events a receiver may ask for.
pub const WEBHOOK_EVENTS: [&str; 7] = [
    "connect",
    "disconnect",
    "join",
    "leave",
    "member_joined",
    "member_left",
    "message",
];

/// Webhook settings (`[webhook]`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where batches are POSTed (`http://`); `None`: webhooks are off.
    pub url: Option<hyper::Uri>,
    /// Signing secrets: every one signs each batch (one `v1=` entry each), so a receiver can
    /// rotate its secret without missing a batch.
    pub secrets: Vec<Secret>,
    /// The event types posted.
    pub events: BTreeSet<String>,
    /// Application message types posted (with `message` among the events); empty: every one.
    pub message_types: BTreeSet<String>,
    /// Events per batch, at most.
    pub batch_max: usize,
    /// How long the first event of a batch waits for others.
    pub batch_wait: Duration,
    /// How long a batch is retried before it is dropped (and counted).
    pub max_retry: Duration,
    /// One attempt's deadline.
    pub timeout: Duration,
    /// Bytes of events waiting to be sent, at most.
    pub queue_bytes: usize,
    /// Where a client's `rpc` frames are POSTed; `None`: `rpc` is an unknown type. (The calls
    /// one connection may have waiting, `webhook.rpc_concurrency`, are the library's
    /// `limits.max_rpc_in_flight`, which bounds them.)
    pub rpc_url: Option<hyper::Uri>,
    /// RPC calls the server has waiting, at most, over all its connections.
    pub rpc_max_in_flight: usize,
    /// `https://` backends: trust only the CAs in this PEM file instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// The connect and join proxy: the backend decides who connects and who joins what.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Every connect attempt is POSTed here; the answer says who the client is.
    pub connect_url: Option<hyper::Uri>,
    /// Every protocol-v2 `join` is POSTed here; a 2xx allows it.
    pub join_url: Option<hyper::Uri>,
    /// Request headers sent along with a connect attempt (lower case; `cookie` by default).
    pub forward_headers: Vec<String>,
    /// One call's deadline (answer included).
    pub timeout: Duration,
    /// Calls waiting for the backend, at most; more are refused as if it were down.
    pub concurrency: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_url: None,
            join_url: None,
            forward_headers: vec!["cookie".into()],
            timeout: Duration::from_millis(3_000),
            concurrency: 256,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            secrets: Vec::new(),
            events: WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
            message_types: BTreeSet::new(),
            batch_max: 100,
            batch_wait: Duration::from_millis(50),
            max_retry: Duration::from_millis(60_000),
            timeout: Duration::from_millis(5_000),
            queue_bytes: 8 << 20,
            rpc_url: None,
            rpc_max_in_flight: 1024,
            ca_file: None,
        }
    }
}

/// A setting that cannot work: names the variable and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The setting, in dotted form (`limits.max_per_lobby`) or as the variable's name.
    pub field: String,
    /// Why the value cannot work.
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            dev_mode: false,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            allowed_origins: Vec::new(),
            api_key: None,
            trusted_proxies: Vec::new(),
            admin_bind: None,
            handshake_timeout: Duration::from_millis(10_000),
            body_timeout: Duration::from_millis(10_000),
            max_pending: 1024,
            api_max_body_bytes: 1024 * 1024,
            drain: Duration::from_millis(5_000),
            deadline: Duration::from_millis(10_000),
            redis_url: None,
            redis_heartbeat: Duration::from_millis(2_000),
            redis_node_ttl: Duration::from_millis(6_000),
            redis_key_prefix: "switchboard:".into(),
            redis_outbound_max_bytes: switchboard_redis::DEFAULT_OUTBOUND_MAX_BYTES,
            redis_tls: switchboard_redis::TlsFiles::default(),
            test_clock_offset_ms: 0,
            pages_enabled: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            log_summary_interval: Duration::from_millis(60_000),
            proxy: ProxyConfig::default(),
            webhook: WebhookConfig::default(),
            manager: ManagerConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The configuration of these arguments (as after the program's name) and variables: the
    /// file named by `--config FILE` (or `SWITCHBOARD_CONFIG`), then every `SWITCHBOARD_*`
    /// variable, then `--dev`. A bad argument is a [`ConfigError`] with clap's explanation
    /// (which suggests the right option).
    pub fn from_args(
        args: impl IntoIterator<Item = String>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        use clap::Parser;
        let argv = std::iter::once("switchboard".to_owned()).chain(args);
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| ConfigError {
            field: "arguments".into(),
            reason: e.render().to_string().trim().to_owned(),
        })?;
        Self::from_cli(&cli, vars)
    }

    /// The configuration the parsed command line asks for, with `vars` over the file.
    pub fn from_cli(
        cli: &crate::cli::Cli,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let explained = Self::explain_cli(cli, vars)?;
        explained.validate()?;
        Ok(explained.config)
    }

    /// What [`from_cli`](Self::from_cli) reads, before validation, with where each setting
    /// came from: the file named by `--check-config FILE`, `--config FILE` or
    /// `SWITCHBOARD_CONFIG`, then every `SWITCHBOARD_*` variable, then `--dev`.
    pub fn explain_cli(
        cli: &crate::cli::Cli,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Explained, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let file = cli.check_config.clone().or(cli.config.clone()).or_else(|| {
            vars.iter()
                .find(|(k, _)| k == "SWITCHBOARD_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(err("--config", "expects a file path"));
        }
        let mut explained = Explained::read(file.as_deref(), vars)?;
        if cli.dev {
            explained.apply("dev_mode", "true", Source::CommandLine("--dev"), |reason| {
                err("dev_mode", reason)
            })?;
        }
        Ok(explained)
    }

    /// Reads `file` (if any), then applies `vars` over it, then validates.
    pub fn load(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let explained = Explained::read(file, vars)?;
        explained.validate()?;
        Ok(explained.config)
    }

    /// Builds a config from `(NAME, value)` pairs alone; names without the prefix are ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load(None, vars)
    }

    /// Applies a TOML document: tables are sections, so `[limits] max_per_lobby = 10` is
    /// `limits.max_per_lobby`.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        for (field, value) in toml_settings(text)? {
            self.set(&field, &value)
                .map_err(|reason| err(&field, reason))?;
        }
        Ok(())
    }

    /// Checks the combination of settings; the error names the field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.manager.validate().map_err(|e| {
            // The library's bound on a connection's calls is this server's RPC setting.
            let field = match e.field {
                "limits.max_rpc_in_flight" => "webhook.rpc_concurrency",
                other => other,
            };
            err(field, e.reason)
        })?;
        self.validate_webhook()?;
        if self.deadline < self.drain {
            return Err(err(
                "shutdown.deadline_ms",
                "must be at least shutdown.drain_ms",
            ));
        }
        if self
            .admin_bind
            .is_some_and(|a| a == self.bind && a.port() != 0)
        {
            return Err(err("admin_bind", "must differ from bind"));
        }
        self.validate_redis_tls()?;
        if self.redis_url.is_some() {
            if self.redis_heartbeat < Duration::from_millis(50) {
                return Err(err("redis.heartbeat_ms", "must be at least 50 ms"));
            }
            if self.redis_node_ttl < self.redis_heartbeat * 2 {
                return Err(err(
                    "redis.node_ttl_ms",
                    "must be at least twice redis.heartbeat_ms, or live nodes look dead",
                ));
            }
            if !self.manager.presence.leave_grace.is_zero() {
                return Err(err(
                    "presence.leave_grace_ms",
                    "is not supported in cluster mode yet (set it to 0 with redis.url)",
                ));
            }
        }
        if self.handshake_timeout < Duration::from_millis(100) {
            return Err(err("handshake_timeout_ms", "must be at least 100 ms"));
        }
        if self.body_timeout < Duration::from_millis(100) {
            return Err(err("http.body_timeout_ms", "must be at least 100 ms"));
        }
        if self.max_pending == 0 {
            return Err(err("http.max_pending", "must be at least 1"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(err("log.level", format!("not a tracing filter: {e}")));
        }
        let summary = self.log_summary_interval;
        if !summary.is_zero() && summary < Duration::from_secs(1) {
            return Err(err(
                "log.summary_interval_ms",
                "must be 0 (off) or at least 1000: the summary is made of the server's samples, one a second",
            ));
        }
        if !(1024..=MAX_API_BODY_BYTES).contains(&self.api_max_body_bytes) {
            return Err(err(
                "api.max_body_bytes",
                format!("must be 1024-{MAX_API_BODY_BYTES} (64 MiB)"),
            ));
        }
        self.validate_auth()
    }

    /// Every backend URL is `http://` and comes with a signing secret; known events; bounds of
    /// at least 1.
    fn validate_webhook(&self) -> Result<(), ConfigError> {
        let w = &self.webhook;
        for (field, url) in self.backend_urls() {
            if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                return Err(err(field, "must be an http:// or https:// URL"));
            }
            if w.secrets.is_empty() {
                return Err(err(
                    "webhook.secret",
                    format!("is required with {field}: every call to the backend is signed"),
                ));
            }
        }
        if self.proxy.timeout.is_zero() || self.proxy.concurrency == 0 {
            return Err(err(
                "auth",
                "proxy_timeout_ms and proxy_concurrency must be at least 1",
            ));
        }
        if w.rpc_max_in_flight == 0 {
            return Err(err("webhook.rpc_max_in_flight", "must be at least 1"));
        }
        if let Some(unknown) = w
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err(err("webhook.events", format!("unknown event `{unknown}`")));
        }
        if w.batch_max == 0 || w.queue_bytes == 0 || w.timeout.is_zero() {
            return Err(err(
                "webhook",
                "batch_max, queue_bytes and timeout_ms must be at least 1",
            ));
        }
        Ok(())
    }

    /// TLS files only with a `rediss://` URL, a client certificate only with its key, and no
    /// `#insecure` (verification off is not built in: trust a private CA with `redis.ca_file`).
    fn validate_redis_tls(&self) -> Result<(), ConfigError> {
        let url = self.redis_url.as_ref().map_or("", |u| u.0.as_str());
        let tls = &self.redis_tls;
        if url.contains("#insecure") {
            return Err(err(
                "redis.url",
                "#insecure (no certificate verification) is not supported; trust the server's \
                 CA with redis.ca_file instead",
            ));
        }
        let files = [
            ("redis.ca_file", tls.ca_file.is_some()),
            ("redis.client_cert_file", tls.client_cert_file.is_some()),
            ("redis.client_key_file", tls.client_key_file.is_some()),
        ];
        if let Some((name, _)) = files.iter().find(|(_, set)| *set)
            && !url.starts_with("rediss://")
        {
            return Err(err(name, "needs a rediss:// (TLS) redis.url"));
        }
        if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
            return Err(err(
                "redis.client_cert_file",
                "set both redis.client_cert_file and redis.client_key_file, or neither",
            ));
        }
        Ok(())
    }

    /// Dev mode only when asked for, never together with a key, never off loopback; without
    /// dev mode a JWT key is required; an API without a key only on a loopback listener.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.is_some() && self.jwt_public_key_file.is_some() {
            return Err(err(
                "auth.jwt_secret",
                "set either auth.jwt_secret (HS256) or auth.jwt_public_key_file (RS256), not both",
            ));
        }
        if let Some(secret) = &self.jwt_secret
            && secret.0.len() < MIN_HS256_SECRET_BYTES
        {
            return Err(err(
                "auth.jwt_secret",
                format!(
                    "is {} bytes; an HS256 secret needs at least {MIN_HS256_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    secret.0.len()
                ),
            ));
        }
        let jwt = self.jwt_secret.is_some() || self.jwt_public_key_file.is_some();
        let auth = jwt || self.proxy.connect_url.is_some();
        if self.dev_mode {
            if auth {
                return Err(err(
                    "dev_mode",
                    "dev mode (tokens are user ids) contradicts a configured auth.jwt_secret / auth.jwt_public_key_file / auth.connect_url: remove one of them",
                ));
            }
            if !self.bind.ip().is_loopback() {
                return Err(err(
                    "dev_mode",
                    format!("dev mode is refused on the non-loopback bind {}", self.bind),
                ));
            }
        } else if !auth {
            return Err(err(
                "auth.jwt_secret",
                "no auth configured: set auth.jwt_secret (HS256, at least 32 bytes), auth.jwt_public_key_file (RS256) or auth.connect_url (the backend decides), or run with --dev (dev_mode = true, loopback only) to try it out",
            ));
        }
        let api_listener = self.admin_bind.unwrap_or(self.bind);
        if self.api_key.is_none() && self.dev_mode && !api_listener.ip().is_loopback() {
            return Err(err(
                "api.key",
                format!(
                    "the HTTP API has no key and would listen on the non-loopback {api_listener}: set api.key"
                ),
            ));
        }
        Ok(())
    }

    /// Every backend URL configured, with its setting's name.
    pub fn backend_urls(&self) -> impl Iterator<Item = (&'static str, &hyper::Uri)> {
        [
            ("webhook.url", &self.webhook.url),
            ("webhook.rpc_url", &self.webhook.rpc_url),
            ("auth.connect_url", &self.proxy.connect_url),
            ("auth.join_url", &self.proxy.join_url),
        ]
        .into_iter()
        .filter_map(|(field, url)| Some((field, url.as_ref()?)))
    }

    /// Whether the demo page and dashboard are served (default: in dev mode only).
    pub fn pages_enabled(&self) -> bool {
        self.pages_enabled.unwrap_or(self.dev_mode)
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Nobody set it.
    Default,
    /// The configuration file.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line option (`--dev`).
    CommandLine(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(name) => write!(f, "environment {name}"),
            Self::CommandLine(option) => write!(f, "command line {option}"),
        }
    }
}

/// A configuration as read (not yet validated), with the source of every setting that was
/// set: what `switchboard --print-config` shows.
#[derive(Debug, Clone)]
pub struct Explained {
    /// The settings.
    pub config: ServerConfig,
    /// The settings' sources by dotted name; a name not in it has its default.
    pub sources: BTreeMap<String, Source>,
}

impl Explained {
    /// The defaults, then `file` (if any), then the `SWITCHBOARD_*` variables among `vars`.
    fn read(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut explained = Self {
            config: ServerConfig::default(),
            sources: BTreeMap::new(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
            let in_file = |e: ConfigError| ConfigError {
                field: e.field,
                reason: format!("{} (in {})", e.reason, path.display()),
            };
            for (field, value) in toml_settings(&text).map_err(in_file)? {
                explained.apply(&field, &value, Source::File(path.to_owned()), |reason| {
                    in_file(err(&field, reason))
                })?;
            }
        }
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if rest == "CONFIG" {
                continue;
            }
            let field = rest.to_ascii_lowercase().replace("__", ".");
            let source = Source::Env(name.clone());
            explained.apply(&field, value.trim(), source, |reason| {
                err(&field, format!("{reason} (from {name})"))
            })?;
        }
        Ok(explained)
    }

    /// Sets one setting and records where it came from.
    fn apply(
        &mut self,
        field: &str,
        value: &str,
        source: Source,
        error: impl FnOnce(String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        self.config.set(field, value).map_err(error)?;
        self.sources.insert(field.to_owned(), source);
        Ok(())
    }

    /// Where `field` came from.
    pub fn source(&self, field: &str) -> &Source {
        self.sources.get(field).unwrap_or(&Source::Default)
    }

    /// [`ServerConfig::validate`], the error saying where the setting at fault was set, as a
    /// value that cannot be read at all does.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.config.validate().map_err(|e| {
            let whence = match self.source(&e.field) {
                Source::Default => return e,
                Source::File(path) => format!("in {}", path.display()),
                Source::Env(name) => format!("from {name}"),
                Source::CommandLine(option) => format!("from {option}"),
            };
            ConfigError {
                reason: format!("{} ({whence})", e.reason),
                field: e.field,
            }
        })
    }
}

/// A TOML document as `(dotted name, value)` pairs, in the document's order of tables: a
/// list of strings is one comma-separated value, as in the environment.
fn toml_settings(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err("config", format!("not valid TOML: {e}")))?;
    let mut settings = Vec::new();
    flatten("", &table, &mut settings)?;
    Ok(settings)
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    settings: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let field = format!("{prefix}{key}");
        let text = match value {
            toml::Value::Table(inner) => {
                flatten(&format!("{field}."), inner, settings)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    _ => Err(err(&field, "expected a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => return Err(err(&field, format!("unexpected {}", other.type_str()))),
        };
        settings.push((field, text));
    }
    Ok(())
}

/// The shortest HS256 secret accepted: 256 bits, as RFC 7518 3.2 requires of an HMAC key.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

#[cfg(test)]
mod tests;
