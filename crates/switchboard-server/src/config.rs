//! Server configuration: a TOML file, then `SWITCHBOARD_*` environment variables (the
//! environment wins), validated at start-up.
//!
//! Names are dotted paths: `limits.max_per_lobby` in the file is
//! `SWITCHBOARD_LIMITS__MAX_PER_LOBBY` in the environment. Both go through one setter, so they
//! accept the same values. Unknown names are refused, so a typo never silently leaves a
//! default in place. `config/switchboard.example.toml` documents every field.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use switchboard::{Config as ManagerConfig, SlowConsumerPolicy, UserPolicy};

const PREFIX: &str = "SWITCHBOARD_";

/// The largest `api.max_body_bytes`: an API body is read whole into memory.
pub const MAX_API_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Every name [`ServerConfig::set`] accepts.
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
    "max_message_bytes",
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

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
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
            log_format: LogFormat::Human,
            log_level: "info".into(),
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
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let file = cli.config.clone().or_else(|| {
            vars.iter()
                .find(|(k, _)| k == "SWITCHBOARD_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(err("--config", "expects a file path"));
        }
        let extra = cli
            .dev
            .then(|| ("SWITCHBOARD_DEV_MODE".to_owned(), "true".to_owned()));
        Self::load(file.as_deref(), vars.into_iter().chain(extra))
    }

    /// Reads `file` (if any), then applies `vars` over it, then validates.
    pub fn load(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
            config.apply_toml(&text).map_err(|e| ConfigError {
                field: e.field,
                reason: format!("{} (in {})", e.reason, path.display()),
            })?;
        }
        config.apply_vars(vars)?;
        config.validate()?;
        Ok(config)
    }

    /// Builds a config from `(NAME, value)` pairs alone; names without the prefix are ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load(None, vars)
    }

    fn apply_vars(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if rest == "CONFIG" {
                continue;
            }
            let field = rest.to_ascii_lowercase().replace("__", ".");
            self.set(&field, value.trim())
                .map_err(|reason| err(&field, format!("{reason} (from {name})")))?;
        }
        Ok(())
    }

    /// Applies a TOML document: tables are sections, so `[limits] max_per_lobby = 10` is
    /// `limits.max_per_lobby`.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err("config", format!("not valid TOML: {e}")))?;
        self.apply_table("", &table)
    }

    fn apply_table(&mut self, prefix: &str, table: &toml::Table) -> Result<(), ConfigError> {
        for (key, value) in table {
            let field = format!("{prefix}{key}");
            let text = match value {
                toml::Value::Table(inner) => {
                    self.apply_table(&format!("{field}."), inner)?;
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
            self.set(&field, &text)
                .map_err(|reason| err(&field, reason))?;
        }
        Ok(())
    }

    /// Sets one field by its dotted name.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        let m = &mut self.manager;
        match field {
            "bind" => self.bind = parse_addr(value)?,
            "dev_mode" => self.dev_mode = parse_bool(value)?,
            "auth.jwt_secret" => self.jwt_secret = Some(secret(value)?),
            "auth.jwt_public_key_file" => self.jwt_public_key_file = Some(value.into()),
            "auth.issuer" => self.jwt_issuer = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "auth.audience" => {
                self.jwt_audience = Some(value.to_owned()).filter(|v| !v.is_empty());
            }
            "api.key" => self.api_key = Some(secret(value)?),
            "allowed_origins" => {
                self.allowed_origins = split_list(value)
                    .map(|o| o.trim_end_matches('/').to_owned())
                    .collect();
            }
            "trusted_proxies" => {
                self.trusted_proxies = split_list(value)
                    .map(|p| {
                        p.parse::<IpNet>()
                            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map(mapped_as_ipv4)
                            .map_err(|_| format!("{p:?} is not an IP address or CIDR"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "admin_bind" if value.is_empty() => self.admin_bind = None,
            "admin_bind" => self.admin_bind = Some(parse_addr(value)?),
            "handshake_timeout_ms" => self.handshake_timeout = parse_ms(value)?,
            "http.body_timeout_ms" => self.body_timeout = parse_ms(value)?,
            "http.max_pending" => self.max_pending = parse_num(value)?,
            "api.max_body_bytes" => self.api_max_body_bytes = parse_num(value)?,
            "limits.max_connections" => m.limits.max_connections = parse_num(value)?,
            "limits.max_per_lobby" => m.limits.max_per_lobby = parse_num(value)?,
            "limits.max_per_user" => m.limits.max_per_user = parse_num(value)?,
            "limits.max_per_ip" => m.limits.max_per_ip = parse_num(value)?,
            "limits.max_lobbies_per_connection" => {
                m.limits.max_lobbies_per_connection = parse_num(value)?;
            }
            "limits.ipv6_prefix" => {
                m.limits.ipv6_prefix =
                    u8::try_from(parse_num(value)?).map_err(|_| "must be 48-128".to_string())?;
            }
            "user_policy" => {
                m.user_policy = match value {
                    "replace" => UserPolicy::Replace,
                    "multi" => UserPolicy::Multi,
                    "reject" => UserPolicy::Reject,
                    _ => return Err("expected replace, multi or reject".into()),
                }
            }
            "health.ping_interval_ms" => m.ping_interval = parse_ms(value)?,
            "health.pong_timeout_ms" => m.pong_timeout = parse_ms(value)?,
            "queue.capacity" => m.queue_capacity = parse_num(value)?,
            "queue.on_full" => {
                m.on_full = match value {
                    "close" => SlowConsumerPolicy::Close,
                    "drop" => SlowConsumerPolicy::Drop,
                    _ => return Err("expected close or drop".into()),
                }
            }
            "queue.slow_grace_ms" => m.slow_grace = parse_ms(value)?,
            "max_message_bytes" => m.max_message_bytes = parse_num(value)?,
            "rate.messages_per_sec" => m.rate.messages_per_sec = parse_u32(value)?,
            "rate.burst" => m.rate.burst = parse_u32(value)?,
            "rate.max_violations" => m.rate.max_violations = parse_u32(value)?,
            "rate.connects_per_ip_per_sec" => m.rate.connects_per_ip_per_sec = parse_u32(value)?,
            "client.allow_broadcast" => m.client.allow_broadcast = parse_bool(value)?,
            "client.allow_direct" => m.client.allow_direct = parse_bool(value)?,
            "presence.events" => m.presence.events = parse_bool(value)?,
            "presence.leave_grace_ms" => m.presence.leave_grace = parse_ms(value)?,
            "presence.events_max_members" => m.presence.events_max_members = parse_num(value)?,
            "presence.events_batch_ms" => m.presence.events_batch = parse_ms(value)?,
            "capacity_warn_percent" => {
                m.capacity_warn_percent = value
                    .parse()
                    .map_err(|_| "expected a percentage, 0-100".to_owned())?;
            }
            "webhook.url" => self.webhook.url = optional_url(value)?,
            "webhook.rpc_url" => self.webhook.rpc_url = optional_url(value)?,
            "webhook.ca_file" => self.webhook.ca_file = optional_path(value),
            "webhook.rpc_concurrency" => m.limits.max_rpc_in_flight = parse_num(value)?,
            "webhook.rpc_max_in_flight" => self.webhook.rpc_max_in_flight = parse_num(value)?,
            "auth.connect_url" => self.proxy.connect_url = optional_url(value)?,
            "auth.join_url" => self.proxy.join_url = optional_url(value)?,
            "auth.forward_headers" => {
                self.proxy.forward_headers =
                    list(value).into_iter().map(|h| h.to_lowercase()).collect();
            }
            "auth.proxy_timeout_ms" => self.proxy.timeout = parse_ms(value)?,
            "auth.proxy_concurrency" => self.proxy.concurrency = parse_num(value)?,
            "webhook.secret" => {
                self.webhook.secrets = value.split(',').map(secret).collect::<Result<_, _>>()?;
            }
            "webhook.events" => self.webhook.events = list(value),
            "webhook.message_types" => self.webhook.message_types = list(value),
            "webhook.batch_max" => self.webhook.batch_max = parse_num(value)?,
            "webhook.batch_ms" => self.webhook.batch_wait = parse_ms(value)?,
            "webhook.max_retry_ms" => self.webhook.max_retry = parse_ms(value)?,
            "webhook.timeout_ms" => self.webhook.timeout = parse_ms(value)?,
            "webhook.queue_bytes" => self.webhook.queue_bytes = parse_num(value)?,
            "redis.node_id" => m.node_id = value.to_owned(),
            "redis.url" => {
                self.redis_url = Some(Secret(value.to_owned())).filter(|u| !u.0.is_empty())
            }
            "redis.heartbeat_ms" => self.redis_heartbeat = parse_ms(value)?,
            "redis.node_ttl_ms" => self.redis_node_ttl = parse_ms(value)?,
            "redis.key_prefix" => self.redis_key_prefix = value.to_owned(),
            "redis.outbound_max_bytes" => {
                self.redis_outbound_max_bytes = parse_num(value)?;
                if self.redis_outbound_max_bytes == 0 {
                    return Err("must be at least 1".into());
                }
            }
            "redis.ca_file" => self.redis_tls.ca_file = optional_path(value),
            "redis.client_cert_file" => self.redis_tls.client_cert_file = optional_path(value),
            "redis.client_key_file" => self.redis_tls.client_key_file = optional_path(value),
            "test_clock_offset_ms" => {
                self.test_clock_offset_ms = value
                    .parse()
                    .map_err(|_| "expected a number of ms (test only)".to_owned())?;
            }
            "shutdown.drain_ms" => self.drain = parse_ms(value)?,
            "shutdown.deadline_ms" => self.deadline = parse_ms(value)?,
            "log.format" => {
                self.log_format = match value {
                    "human" => LogFormat::Human,
                    "json" => LogFormat::Json,
                    _ => return Err("expected human or json".into()),
                }
            }
            "log.level" => self.log_level = value.to_owned(),
            "pages.enabled" => self.pages_enabled = Some(parse_bool(value)?),
            "history.size" => m.history.size = parse_num(value)?,
            "history.ttl_ms" => m.history.ttl = parse_ms(value)?,
            "history.max_bytes" => m.history.max_bytes = parse_num(value)?,
            _ => return Err("unknown setting".into()),
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

/// A URL, or `None` for an empty value.
fn optional_url(value: &str) -> Result<Option<hyper::Uri>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| "not a URL".to_string())
}

/// A comma-separated list, spaces trimmed, empty items left out.
fn list(value: &str) -> BTreeSet<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An empty secret is a mistake (an unset variable in a template), never "no secret".
fn secret(value: &str) -> Result<Secret, String> {
    if value.is_empty() {
        return Err("is empty: remove the setting or give it a value".into());
    }
    Ok(Secret(value.to_owned()))
}

/// The shortest HS256 secret accepted: 256 bits, as RFC 7518 3.2 requires of an HMAC key.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// A file setting: empty means unset.
fn optional_path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| value.into())
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| "expected IP:PORT".to_owned())
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

fn parse_u32(value: &str) -> Result<u32, String> {
    parse_num(value)?
        .try_into()
        .map_err(|_| "too large".to_owned())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`: client addresses are compared in their IPv4 form.
fn mapped_as_ipv4(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

fn parse_num(value: &str) -> Result<usize, String> {
    value
        .replace('_', "")
        .parse()
        .map_err(|_| "expected a non-negative integer".into())
}

fn parse_ms(value: &str) -> Result<Duration, String> {
    parse_num(value).map(|ms| Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        ServerConfig::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn redis_tls_settings_need_a_rediss_url_and_verification() {
        let dev = ("SWITCHBOARD_DEV_MODE", "true");
        let ca = ("SWITCHBOARD_REDIS__CA_FILE", "/ca.pem");
        let plain = ("SWITCHBOARD_REDIS__URL", "redis://127.0.0.1:6379");
        let tls = ("SWITCHBOARD_REDIS__URL", "rediss://127.0.0.1:6380");
        assert_eq!(vars(&[dev, plain, ca]).unwrap_err().field, "redis.ca_file");
        assert!(vars(&[dev, tls, ca]).is_ok());
        let insecure = (
            "SWITCHBOARD_REDIS__URL",
            "rediss://127.0.0.1:6380/#insecure",
        );
        let e = vars(&[dev, insecure]).unwrap_err();
        assert_eq!(e.field, "redis.url");
        let cert = ("SWITCHBOARD_REDIS__CLIENT_CERT_FILE", "/c.pem");
        let e = vars(&[dev, tls, cert]).unwrap_err();
        assert_eq!(e.field, "redis.client_cert_file");
        let queue = ("SWITCHBOARD_REDIS__OUTBOUND_MAX_BYTES", "0");
        assert_eq!(
            vars(&[dev, tls, queue]).unwrap_err().field,
            "redis.outbound_max_bytes"
        );
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn rpc_bounds_are_at_least_one_and_the_connections_is_the_librarys() {
        let dev = ("SWITCHBOARD_DEV_MODE", "true");
        let c = vars(&[dev, ("SWITCHBOARD_WEBHOOK__RPC_CONCURRENCY", "3")]).unwrap();
        assert_eq!(c.manager.limits.max_rpc_in_flight, 3);
        assert_eq!(
            ServerConfig::default().manager.limits.max_rpc_in_flight,
            8,
            "the default"
        );
        let e = vars(&[dev, ("SWITCHBOARD_WEBHOOK__RPC_CONCURRENCY", "0")]).unwrap_err();
        assert_eq!(e.field, "webhook.rpc_concurrency", "named as it was set");
        let e = vars(&[dev, ("SWITCHBOARD_WEBHOOK__RPC_MAX_IN_FLIGHT", "0")]).unwrap_err();
        assert_eq!(e.field, "webhook.rpc_max_in_flight");
        let url = ("SWITCHBOARD_WEBHOOK__RPC_URL", "http://127.0.0.1:9/rpc");
        assert_eq!(vars(&[dev, url]).unwrap_err().field, "webhook.secret");
        vars(&[dev, url, ("SWITCHBOARD_WEBHOOK__SECRET", "s")]).unwrap();
    }

    #[test]
    fn dev_mode_only_when_asked_for() {
        let e = vars(&[]).unwrap_err();
        assert_eq!(e.field, "auth.jwt_secret");
        assert!(e.reason.contains("--dev"), "{e}");
        let c = vars(&[("SWITCHBOARD_DEV_MODE", "true")]).unwrap();
        assert!(c.dev_mode);
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        let c = ServerConfig::from_args(["--dev".to_owned()], []).unwrap();
        assert!(c.dev_mode && c.pages_enabled());
        let e = ServerConfig::from_args(["--deb".to_owned()], []).unwrap_err();
        assert!(e.reason.contains("unexpected argument '--deb'"), "{e}");
        assert!(
            e.reason.contains("tip: a similar argument exists: '--dev'"),
            "{e}"
        );
        let c = vars(&[("SWITCHBOARD_AUTH__JWT_SECRET", SECRET)]).unwrap();
        assert!(!c.dev_mode && !c.pages_enabled());
    }

    #[test]
    fn config_file_as_one_argument_or_two() {
        let file = std::env::temp_dir().join(format!("sb-config-{}.toml", std::process::id()));
        std::fs::write(&file, "dev_mode = true\nbind = \"127.0.0.1:9999\"\n").unwrap();
        let path = file.display().to_string();
        for args in [
            vec![format!("--config={path}")],
            vec!["--config".into(), path.clone()],
        ] {
            let c = ServerConfig::from_args(args.clone(), []).unwrap();
            assert_eq!(c.bind.to_string(), "127.0.0.1:9999", "{args:?}");
        }
        let e = ServerConfig::from_args(["--config=".to_owned()], []).unwrap_err();
        assert!(e.reason.contains("--config <FILE>"), "{e}");
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn secrets_must_be_real() {
        for var in ["SWITCHBOARD_AUTH__JWT_SECRET", "SWITCHBOARD_API__KEY"] {
            let e = vars(&[("SWITCHBOARD_DEV_MODE", "true"), (var, "")]).unwrap_err();
            assert!(e.reason.contains("empty"), "{var}: {e}");
        }
        let e = vars(&[("SWITCHBOARD_AUTH__JWT_SECRET", &SECRET[1..])]).unwrap_err();
        assert_eq!(e.field, "auth.jwt_secret");
        assert!(e.reason.contains("31 bytes"), "{e}");
    }

    #[test]
    fn backend_urls_are_http_and_signed() {
        let proxy = (
            "SWITCHBOARD_AUTH__CONNECT_URL",
            "http://127.0.0.1:9/connect",
        );
        let e = vars(&[proxy]).unwrap_err();
        assert_eq!(
            e.field, "webhook.secret",
            "every call to the backend is signed"
        );
        let signed = ("SWITCHBOARD_WEBHOOK__SECRET", "s");
        let c = vars(&[proxy, signed]).unwrap();
        assert!(
            !c.dev_mode,
            "the connect proxy is auth enough: no JWT key, no dev mode"
        );
        let e = vars(&[("SWITCHBOARD_AUTH__CONNECT_URL", "ws://b/connect"), signed]).unwrap_err();
        assert_eq!(e.field, "auth.connect_url");
        let e = vars(&[proxy, signed, ("SWITCHBOARD_DEV_MODE", "true")]).unwrap_err();
        assert_eq!(
            e.field, "dev_mode",
            "dev mode contradicts the connect proxy"
        );
        let join = ("SWITCHBOARD_AUTH__JOIN_URL", "ftp://x");
        let e = vars(&[("SWITCHBOARD_DEV_MODE", "true"), join, signed]).unwrap_err();
        assert_eq!(e.field, "auth.join_url");
        let e = vars(&[proxy, signed, ("SWITCHBOARD_AUTH__PROXY_CONCURRENCY", "0")]).unwrap_err();
        assert_eq!(e.field, "auth");
        let c = vars(&[
            proxy,
            signed,
            ("SWITCHBOARD_AUTH__FORWARD_HEADERS", "Cookie, X-Session"),
        ])
        .unwrap();
        assert_eq!(c.proxy.forward_headers, ["cookie", "x-session"]);
    }

    #[test]
    fn dev_mode_contradicts_a_key() {
        for (var, value) in [
            ("SWITCHBOARD_AUTH__JWT_SECRET", SECRET),
            ("SWITCHBOARD_AUTH__JWT_PUBLIC_KEY_FILE", "/etc/key.pem"),
        ] {
            let e = vars(&[("SWITCHBOARD_DEV_MODE", "true"), (var, value)]).unwrap_err();
            assert_eq!(e.field, "dev_mode", "{var}");
            assert!(e.reason.contains("contradicts"), "{e}");
        }
    }

    #[test]
    fn an_api_without_a_key_listens_only_on_loopback() {
        let e = vars(&[
            ("SWITCHBOARD_DEV_MODE", "true"),
            ("SWITCHBOARD_ADMIN_BIND", "0.0.0.0:9090"),
        ])
        .unwrap_err();
        assert_eq!(e.field, "api.key");
        vars(&[
            ("SWITCHBOARD_DEV_MODE", "true"),
            ("SWITCHBOARD_ADMIN_BIND", "0.0.0.0:9090"),
            ("SWITCHBOARD_API__KEY", "k"),
        ])
        .unwrap();
        // Without dev mode and without a key the API is off (403), wherever it listens.
        vars(&[
            ("SWITCHBOARD_AUTH__JWT_SECRET", SECRET),
            ("SWITCHBOARD_ADMIN_BIND", "0.0.0.0:9090"),
        ])
        .unwrap();
    }

    #[test]
    fn environment_names_map_to_fields() {
        let c = vars(&[
            ("SWITCHBOARD_DEV_MODE", "on"),
            ("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "7"),
            ("SWITCHBOARD_USER_POLICY", "multi"),
            ("SWITCHBOARD_HEALTH__PING_INTERVAL_MS", "1500"),
            ("SWITCHBOARD_QUEUE__ON_FULL", "drop"),
            (
                "SWITCHBOARD_ALLOWED_ORIGINS",
                "https://a.example, https://b.example/",
            ),
            ("OTHER_VAR", "ignored"),
        ])
        .unwrap();
        assert_eq!(c.manager.limits.max_per_lobby, 7);
        assert_eq!(c.manager.user_policy, UserPolicy::Multi);
        assert_eq!(c.manager.ping_interval, Duration::from_millis(1500));
        assert_eq!(c.manager.on_full, SlowConsumerPolicy::Drop);
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = vars(&[("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "many")]).unwrap_err();
        assert_eq!(e.field, "limits.max_per_lobby");
        let e = vars(&[("SWITCHBOARD_LIMITS__MAX_PER_LOBBY", "0")]).unwrap_err();
        assert_eq!(e.field, "limits.max_per_lobby");
        let e = vars(&[("SWITCHBOARD_LIMITS__MAX_PER_LOBY", "3")]).unwrap_err();
        assert!(e.to_string().contains("unknown setting"), "{e}");
        let e = vars(&[
            ("SWITCHBOARD_REDIS__URL", "redis://127.0.0.1:1"),
            ("SWITCHBOARD_REDIS__NODE_TTL_MS", "1000"),
        ])
        .unwrap_err();
        assert_eq!(e.field, "redis.node_ttl_ms");
        let e = vars(&[("SWITCHBOARD_TRUSTED_PROXIES", "10.0.0.0/8,nope")]).unwrap_err();
        assert_eq!(e.field, "trusted_proxies");
    }

    #[test]
    fn ipv6_prefix_and_mapped_proxies() {
        let c = vars(&[
            ("SWITCHBOARD_DEV_MODE", "true"),
            ("SWITCHBOARD_LIMITS__IPV6_PREFIX", "56"),
            (
                "SWITCHBOARD_TRUSTED_PROXIES",
                "::ffff:10.0.0.0/104, fd00::/8",
            ),
        ])
        .unwrap();
        assert_eq!(c.manager.limits.ipv6_prefix, 56);
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "fd00::/8"]);
        for bad in ["47", "129", "300"] {
            let e = vars(&[
                ("SWITCHBOARD_DEV_MODE", "true"),
                ("SWITCHBOARD_LIMITS__IPV6_PREFIX", bad),
            ])
            .unwrap_err();
            assert_eq!(e.field, "limits.ipv6_prefix", "{bad}");
        }
    }

    #[test]
    fn dev_mode_is_never_on_a_public_bind() {
        let e = vars(&[("SWITCHBOARD_BIND", "0.0.0.0:8080")]).unwrap_err();
        assert_eq!(e.field, "auth.jwt_secret");
        let e = vars(&[
            ("SWITCHBOARD_BIND", "0.0.0.0:8080"),
            ("SWITCHBOARD_DEV_MODE", "true"),
        ])
        .unwrap_err();
        assert_eq!(e.field, "dev_mode");
        let c = vars(&[
            ("SWITCHBOARD_BIND", "0.0.0.0:8080"),
            ("SWITCHBOARD_AUTH__JWT_SECRET", SECRET),
        ])
        .unwrap();
        assert!(!c.dev_mode);
    }

    #[test]
    fn toml_file_then_environment_wins() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        let toml = r#"
bind = "127.0.0.1:9000"
dev_mode = true
user_policy = "reject"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]
[limits]
max_per_lobby = 3
max_connections = 50
[client]
allow_direct = false
"#;
        std::fs::write(&file, toml).unwrap();
        let env = [(
            "SWITCHBOARD_LIMITS__MAX_PER_LOBBY".to_string(),
            "4".to_string(),
        )];
        let c = ServerConfig::load(Some(&file), env).unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.manager.user_policy, UserPolicy::Reject);
        assert_eq!(c.manager.limits.max_per_lobby, 4, "environment wins");
        assert_eq!(c.manager.limits.max_connections, 50);
        assert!(!c.manager.client.allow_direct);
        assert_eq!(c.trusted_proxies.len(), 2);
        std::fs::write(&file, "[limits]\nmax_per_lobby = \"ten\"\n").unwrap();
        let e = ServerConfig::load(Some(&file), []).unwrap_err();
        assert_eq!(e.field, "limits.max_per_lobby");
        assert!(e.reason.contains("c.toml"), "{e}");
        std::fs::write(&file, "[limits\n").unwrap();
        let e = ServerConfig::load(Some(&file), []).unwrap_err();
        assert!(e.reason.contains("TOML"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_file_is_valid_and_documents_every_name() {
        let example = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/switchboard.example.toml"
        ));
        let mut c = ServerConfig::default();
        c.apply_toml(example).unwrap();
        // Each name appears as an assignment, set or commented out, in its section.
        for name in KNOWN {
            let (section, key) = name.rsplit_once('.').unwrap_or(("", name));
            let in_section = if section.is_empty() {
                example.split("\n[").next().unwrap()
            } else {
                example
                    .split(&format!("[{section}]"))
                    .nth(1)
                    .unwrap_or_else(|| panic!("section [{section}] missing"))
            };
            let assigned = in_section.lines().any(|l| {
                l.trim_start_matches('#')
                    .trim_start()
                    .starts_with(&format!("{key} ="))
            });
            assert!(assigned, "{name} is not documented in the example config");
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = vars(&[
            (
                "SWITCHBOARD_AUTH__JWT_SECRET",
                "hunter2-hunter2-hunter2-hunter2!",
            ),
            ("SWITCHBOARD_API__KEY", "k3y"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
    }
}
