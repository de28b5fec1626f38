//! [`ServerConfig::set`]: one setting by its dotted name, from the file or the environment
//! alike, and the parsers of its values.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use switchboard::{SlowConsumerPolicy, UserPolicy};

use super::{LogFormat, Secret, ServerConfig};

impl ServerConfig {
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
            "queue.write_delay_ms" => m.write_delay = parse_ms(value)?,
            "max_message_bytes" => m.max_message_bytes = parse_num(value)?,
            "compression.enabled" => m.compression.enabled = parse_bool(value)?,
            "compression.min_bytes" => m.compression.min_bytes = parse_num(value)?,
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
                    // "human" is the old name of "text": files written for it keep working.
                    "text" | "human" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err("expected text or json".into()),
                }
            }
            "log.level" => self.log_level = value.to_owned(),
            "log.summary_interval_ms" => self.log_summary_interval = parse_ms(value)?,
            "pages.enabled" => self.pages_enabled = Some(parse_bool(value)?),
            "history.size" => m.history.size = parse_num(value)?,
            "history.ttl_ms" => m.history.ttl = parse_ms(value)?,
            "history.max_bytes" => m.history.max_bytes = parse_num(value)?,
            _ => return Err(unknown(field)),
        }
        Ok(())
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

/// "unknown setting", with the known name it most likely meant: one a few edits away
/// (`limits.max_per_loby`, `limits_max_per_lobby` from a single `_` in the environment), or
/// the one with the same last part in another section (`max_per_lobby` at the top).
pub(super) fn unknown(field: &str) -> String {
    let closest = super::KNOWN
        .iter()
        .map(|name| (edit_distance(field, name), *name))
        .min()
        .filter(|(distance, _)| *distance <= 2 + field.len() / 8)
        .map(|(_, name)| name);
    let last = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
    let moved = || {
        super::KNOWN
            .iter()
            .copied()
            .find(|name| last(name) == last(field))
    };
    match closest.or_else(moved) {
        Some(name) => format!("unknown setting; did you mean `{name}`?"),
        None => "unknown setting".into(),
    }
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}
