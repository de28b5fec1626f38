//! `switchboard --print-config`: every setting's value as TOML, read back by the getter that
//! mirrors [`ServerConfig::set`], with its [`Source`]; secrets redacted.

use std::fmt::Write as _;
use std::time::Duration;

use switchboard::{SlowConsumerPolicy, UserPolicy};

use super::{Explained, KNOWN, LogFormat, ServerConfig, Source};

/// Settings whose values are never printed.
pub const SECRETS: &[&str] = &["auth.jwt_secret", "api.key", "webhook.secret"];

/// URL settings: printed with the password of a `user:password@` part replaced.
const URLS: &[&str] = &[
    "redis.url",
    "webhook.url",
    "webhook.rpc_url",
    "auth.connect_url",
    "auth.join_url",
];

/// A setting's value as the file would say it: a string, an integer, a boolean or a list of
/// strings (`None`: not set).
pub(super) type Value = Option<toml::Value>;

fn text(value: impl ToString) -> Value {
    Some(toml::Value::String(value.to_string()))
}

fn int(value: impl TryInto<i64>) -> Value {
    Some(toml::Value::Integer(value.try_into().unwrap_or(i64::MAX)))
}

fn ms(value: Duration) -> Value {
    int(value.as_millis())
}

fn boolean(value: bool) -> Value {
    Some(toml::Value::Boolean(value))
}

fn strings<T: ToString>(items: impl IntoIterator<Item = T>) -> Value {
    Some(toml::Value::Array(
        items
            .into_iter()
            .map(|item| toml::Value::String(item.to_string()))
            .collect(),
    ))
}

fn path(value: Option<&std::path::PathBuf>) -> Value {
    value.and_then(|p| text(p.display()))
}

impl ServerConfig {
    /// The value of one setting by its dotted name, as [`set`](Self::set) would take it back
    /// (secrets included: only the printer redacts). Every name in [`KNOWN`] has one.
    pub(super) fn get(&self, field: &str) -> Result<Value, String> {
        let m = &self.manager;
        let w = &self.webhook;
        Ok(match field {
            "bind" => text(self.bind),
            "dev_mode" => boolean(self.dev_mode),
            "auth.jwt_secret" => self.jwt_secret.as_ref().and_then(|s| text(&s.0)),
            "auth.jwt_public_key_file" => path(self.jwt_public_key_file.as_ref()),
            "auth.issuer" => self.jwt_issuer.as_ref().and_then(text),
            "auth.audience" => self.jwt_audience.as_ref().and_then(text),
            "auth.connect_url" => self.proxy.connect_url.as_ref().and_then(text),
            "auth.join_url" => self.proxy.join_url.as_ref().and_then(text),
            "auth.forward_headers" => strings(&self.proxy.forward_headers),
            "auth.proxy_timeout_ms" => ms(self.proxy.timeout),
            "auth.proxy_concurrency" => int(self.proxy.concurrency),
            "api.key" => self.api_key.as_ref().and_then(|s| text(&s.0)),
            "allowed_origins" => strings(&self.allowed_origins),
            "trusted_proxies" => strings(&self.trusted_proxies),
            "admin_bind" => self.admin_bind.and_then(text),
            "handshake_timeout_ms" => ms(self.handshake_timeout),
            "http.body_timeout_ms" => ms(self.body_timeout),
            "http.max_pending" => int(self.max_pending),
            "api.max_body_bytes" => int(self.api_max_body_bytes),
            "limits.max_connections" => int(m.limits.max_connections),
            "limits.max_per_lobby" => int(m.limits.max_per_lobby),
            "limits.max_per_user" => int(m.limits.max_per_user),
            "limits.max_per_ip" => int(m.limits.max_per_ip),
            "limits.max_lobbies_per_connection" => int(m.limits.max_lobbies_per_connection),
            "limits.ipv6_prefix" => int(m.limits.ipv6_prefix),
            "user_policy" => text(match m.user_policy {
                UserPolicy::Replace => "replace",
                UserPolicy::Multi => "multi",
                UserPolicy::Reject => "reject",
            }),
            "health.ping_interval_ms" => ms(m.ping_interval),
            "health.pong_timeout_ms" => ms(m.pong_timeout),
            "queue.capacity" => int(m.queue_capacity),
            "queue.on_full" => text(match m.on_full {
                SlowConsumerPolicy::Close => "close",
                SlowConsumerPolicy::Drop => "drop",
            }),
            "queue.slow_grace_ms" => ms(m.slow_grace),
            "queue.write_delay_ms" => ms(m.write_delay),
            "max_message_bytes" => int(m.max_message_bytes),
            "compression.enabled" => boolean(m.compression.enabled),
            "compression.min_bytes" => int(m.compression.min_bytes),
            "rate.messages_per_sec" => int(m.rate.messages_per_sec),
            "rate.burst" => int(m.rate.burst),
            "rate.max_violations" => int(m.rate.max_violations),
            "rate.connects_per_ip_per_sec" => int(m.rate.connects_per_ip_per_sec),
            "client.allow_broadcast" => boolean(m.client.allow_broadcast),
            "client.allow_direct" => boolean(m.client.allow_direct),
            "presence.events" => boolean(m.presence.events),
            "presence.leave_grace_ms" => ms(m.presence.leave_grace),
            "presence.events_max_members" => int(m.presence.events_max_members),
            "presence.events_batch_ms" => ms(m.presence.events_batch),
            "capacity_warn_percent" => int(m.capacity_warn_percent),
            "webhook.url" => w.url.as_ref().and_then(text),
            "webhook.secret" => Some(w.secrets.iter().map(|s| s.0.as_str()).collect::<Vec<_>>())
                .filter(|s| !s.is_empty())
                .and_then(strings),
            "webhook.events" => strings(&w.events),
            "webhook.message_types" => strings(&w.message_types),
            "webhook.batch_max" => int(w.batch_max),
            "webhook.batch_ms" => ms(w.batch_wait),
            "webhook.max_retry_ms" => ms(w.max_retry),
            "webhook.timeout_ms" => ms(w.timeout),
            "webhook.queue_bytes" => int(w.queue_bytes),
            "webhook.rpc_url" => w.rpc_url.as_ref().and_then(text),
            "webhook.ca_file" => path(w.ca_file.as_ref()),
            "webhook.rpc_concurrency" => int(m.limits.max_rpc_in_flight),
            "webhook.rpc_max_in_flight" => int(w.rpc_max_in_flight),
            "redis.node_id" => text(&m.node_id),
            "redis.url" => self.redis_url.as_ref().and_then(|u| text(&u.0)),
            "redis.heartbeat_ms" => ms(self.redis_heartbeat),
            "redis.node_ttl_ms" => ms(self.redis_node_ttl),
            "redis.key_prefix" => text(&self.redis_key_prefix),
            "redis.outbound_max_bytes" => int(self.redis_outbound_max_bytes),
            "redis.ca_file" => path(self.redis_tls.ca_file.as_ref()),
            "redis.client_cert_file" => path(self.redis_tls.client_cert_file.as_ref()),
            "redis.client_key_file" => path(self.redis_tls.client_key_file.as_ref()),
            "test_clock_offset_ms" => int(self.test_clock_offset_ms),
            "shutdown.drain_ms" => ms(self.drain),
            "shutdown.deadline_ms" => ms(self.deadline),
            "log.format" => text(match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
            "log.level" => text(&self.log_level),
            "log.summary_interval_ms" => ms(self.log_summary_interval),
            // The effective value: unset means "in dev mode only".
            "pages.enabled" => boolean(self.pages_enabled()),
            "history.size" => int(m.history.size),
            "history.ttl_ms" => ms(m.history.ttl),
            "history.max_bytes" => int(m.history.max_bytes),
            _ => return Err(super::set::unknown(field)),
        })
    }
}

/// What a default means where the value alone does not say it.
fn default_note(field: &str) -> Option<&'static str> {
    match field {
        "pages.enabled" => Some("on in dev mode only"),
        "redis.node_id" => Some("random at each start"),
        _ => None,
    }
}

/// A `redis://user:password@host` URL with its password replaced; others unchanged.
fn redact_url(url: &str) -> (String, bool) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), false);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), false);
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map(|(user, _)| user);
    match user {
        Some(user) => (format!("{scheme}://{user}:REDACTED{}", &rest[at..]), true),
        // `redis://password@host`: the lone part is the password.
        None => (format!("{scheme}://REDACTED{}", &rest[at..]), true),
    }
}

/// A value written as TOML: a basic string with escapes, an integer, a boolean, an array.
pub(super) fn write_value(out: &mut String, value: &toml::Value) {
    match value {
        toml::Value::String(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() => {
                        let _ = write!(out, "\\u{:04X}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        toml::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        toml::Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        toml::Value::Boolean(b) => {
            let _ = write!(out, "{b}");
        }
        other => {
            let _ = write!(out, "\"{}\"", other.type_str());
        }
    }
}

impl Explained {
    /// The configuration as a TOML document, one `dotted.name = value  # source` line per
    /// setting in [`KNOWN`]'s order; an unset setting is a comment, and so is a secret, whose
    /// value is never shown. Read back as a file (with the secrets given again, by the
    /// environment say), it gives the same configuration.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# The effective configuration: defaults, then the file, then the environment, then\n\
             # the command line. After each setting, where its value came from. Secrets are not\n\
             # shown: give them again (by their environment variables, say) to reuse this file.\n",
        );
        for &field in KNOWN {
            let value = self
                .config
                .get(field)
                .expect("every name in KNOWN has a getter");
            let source = self.source(field);
            let mut note = source.to_string();
            if *source == Source::Default
                && let Some(extra) = default_note(field)
            {
                let _ = write!(note, " ({extra})");
            }
            let mut line = String::new();
            match value {
                None => {
                    let _ = write!(line, "# {field} is not set");
                }
                Some(_) if SECRETS.contains(&field) => {
                    let _ = write!(line, "# {field} = (redacted)");
                }
                Some(toml::Value::String(url)) if URLS.contains(&field) => {
                    let (shown, redacted) = redact_url(&url);
                    let _ = write!(line, "{field} = ");
                    write_value(&mut line, &toml::Value::String(shown));
                    if redacted {
                        note.push_str("; password redacted");
                    }
                }
                Some(value) => {
                    let _ = write!(line, "{field} = ");
                    write_value(&mut line, &value);
                }
            }
            let _ = writeln!(out, "{line:<48} # {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_only() {
        for (url, shown, redacted) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379", false),
            (
                "redis://:hunter2@10.0.0.1:6379/0",
                "redis://:REDACTED@10.0.0.1:6379/0",
                true,
            ),
            (
                "rediss://app:p@ss@r.example:6380",
                "rediss://app:REDACTED@r.example:6380",
                true,
            ),
            ("redis://pw@h", "redis://REDACTED@h", true),
            ("redis://h/0#x@y", "redis://h/0#x@y", false),
        ] {
            assert_eq!(redact_url(url), (shown.to_owned(), redacted), "{url}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        write_value(
            &mut out,
            &toml::Value::Array(vec![toml::Value::String("a\"b\\c\u{1}".into())]),
        );
        assert_eq!(out, r#"["a\"b\\c\u0001"]"#);
        let parsed: toml::Table = format!("x = {out}").parse().unwrap();
        assert_eq!(parsed["x"][0].as_str(), Some("a\"b\\c\u{1}"));
    }
}
