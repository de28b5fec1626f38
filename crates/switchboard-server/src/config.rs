//! Server configuration from `SWITCHBOARD_*` environment variables, validated at start-up.
//!
//! Names follow DESIGN.md's table: `limits.max_per_lobby` is `SWITCHBOARD_LIMITS__MAX_PER_LOBBY`.
//! Unknown names are refused, so a typo never silently leaves a default in place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use switchboard::{Config as ManagerConfig, SlowConsumerPolicy, UserPolicy};

const PREFIX: &str = "SWITCHBOARD_";

/// Settings of DESIGN.md's table that a later version implements. They are refused rather than
/// ignored, so nobody believes a rate limit or a Redis cluster is on when it is not.
const NOT_YET: &[&str] = &[
    "config",
    "api.key",
    "rate.messages_per_sec",
    "rate.burst",
    "rate.connects_per_ip_per_sec",
    "rate.max_violations",
    "redis.url",
    "redis.heartbeat_ms",
    "redis.node_ttl_ms",
    "redis.key_prefix",
    "history.size",
    "history.ttl_ms",
    "client.allow_broadcast",
    "client.allow_direct",
    "trusted_proxies",
    "admin_bind",
    "pages.enabled",
    "handshake_timeout_ms",
    "capacity_warn_percent",
];

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
    /// `Some` when asked for explicitly; `None` decides from auth and bind.
    pub dev_mode: Option<bool>,
    /// HS256 secret.
    pub jwt_secret: Option<String>,
    /// RS256 public key (PEM file).
    pub jwt_public_key_file: Option<PathBuf>,
    /// `Origin` allowlist; empty means same host and loopback origins only.
    pub allowed_origins: Vec<String>,
    /// Close spread at shutdown.
    pub drain: Duration,
    /// Hard limit for the whole shutdown.
    pub deadline: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level filter (an `EnvFilter` directive).
    pub log_level: String,
    /// The manager's own settings.
    pub manager: ManagerConfig,
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
            dev_mode: None,
            jwt_secret: None,
            jwt_public_key_file: None,
            allowed_origins: Vec::new(),
            drain: Duration::from_millis(5_000),
            deadline: Duration::from_millis(10_000),
            log_format: LogFormat::Human,
            log_level: "info".into(),
            manager: ManagerConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Reads every `SWITCHBOARD_*` variable of the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Builds a config from `(NAME, value)` pairs; names without the prefix are ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let field = rest.to_ascii_lowercase().replace("__", ".");
            config
                .set(&field, value.trim())
                .map_err(|reason| err(&field, format!("{reason} (from {name}={value:?})")))?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets one field by its dotted name.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        let m = &mut self.manager;
        match field {
            "bind" => self.bind = value.parse().map_err(|_| "expected IP:PORT".to_owned())?,
            "dev_mode" => self.dev_mode = Some(parse_bool(value)?),
            "auth.jwt_secret" => self.jwt_secret = Some(value.to_owned()).filter(|s| !s.is_empty()),
            "auth.jwt_public_key_file" => self.jwt_public_key_file = Some(value.into()),
            "allowed_origins" => {
                self.allowed_origins = value
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect();
            }
            "limits.max_connections" => m.limits.max_connections = parse_num(value)?,
            "limits.max_per_lobby" => m.limits.max_per_lobby = parse_num(value)?,
            "limits.max_per_user" => m.limits.max_per_user = parse_num(value)?,
            "limits.max_per_ip" => m.limits.max_per_ip = parse_num(value)?,
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
            "max_message_bytes" => m.max_message_bytes = parse_num(value)?,
            "presence.events" => m.presence.events = parse_bool(value)?,
            "presence.leave_grace_ms" => m.presence.leave_grace = parse_ms(value)?,
            "presence.events_max_members" => m.presence.events_max_members = parse_num(value)?,
            "redis.node_id" => m.node_id = value.to_owned(),
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
            f if NOT_YET.contains(&f) => {
                return Err("not supported by this version of the server yet".into());
            }
            _ => return Err("unknown setting".into()),
        }
        Ok(())
    }

    /// Checks the combination of settings; the error names the field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.manager
            .validate()
            .map_err(|e| err(e.field, e.reason))?;
        if self.deadline < self.drain {
            return Err(err(
                "shutdown.deadline_ms",
                "must be at least shutdown.drain_ms",
            ));
        }
        if self.jwt_secret.is_some() && self.jwt_public_key_file.is_some() {
            return Err(err(
                "auth.jwt_secret",
                "set either auth.jwt_secret (HS256) or auth.jwt_public_key_file (RS256), not both",
            ));
        }
        let auth = self.jwt_secret.is_some() || self.jwt_public_key_file.is_some();
        let loopback = self.bind.ip().is_loopback();
        match (self.dev_mode, auth, loopback) {
            (Some(true), _, false) => Err(err(
                "dev_mode",
                format!("dev mode is refused on the non-loopback bind {}", self.bind),
            )),
            (Some(false) | None, false, false) => Err(err(
                "auth.jwt_secret",
                format!(
                    "no auth configured for the non-loopback bind {}: set auth.jwt_secret or auth.jwt_public_key_file",
                    self.bind
                ),
            )),
            (Some(false), false, true) => Err(err(
                "dev_mode",
                "dev mode is off but no auth is configured: set auth.jwt_secret or auth.jwt_public_key_file",
            )),
            _ => Ok(()),
        }
    }

    /// Whether tokens are user ids (dev mode).
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
            .unwrap_or_else(|| self.jwt_secret.is_none() && self.jwt_public_key_file.is_none())
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
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
    fn no_configuration_is_dev_mode_on_loopback_8080() {
        let c = vars(&[]).unwrap();
        assert!(c.dev_mode());
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn environment_names_map_to_fields() {
        let c = vars(&[
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
        let e = vars(&[("SWITCHBOARD_REDIS__URL", "redis://x")]).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }

    #[test]
    fn dev_mode_is_never_on_a_public_bind() {
        let e = vars(&[("SWITCHBOARD_BIND", "0.0.0.0:8080")]).unwrap_err();
        assert_eq!(e.field, "auth.jwt_secret");
        let e = vars(&[
            ("SWITCHBOARD_BIND", "0.0.0.0:8080"),
            ("SWITCHBOARD_DEV_MODE", "true"),
            ("SWITCHBOARD_AUTH__JWT_SECRET", "s"),
        ])
        .unwrap_err();
        assert_eq!(e.field, "dev_mode");
        let c = vars(&[
            ("SWITCHBOARD_BIND", "0.0.0.0:8080"),
            ("SWITCHBOARD_AUTH__JWT_SECRET", "s"),
        ])
        .unwrap();
        assert!(!c.dev_mode());
    }
}
