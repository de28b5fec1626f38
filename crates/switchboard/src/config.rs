//! The manager's typed configuration, with the defaults of `docs/protocol.md` / DESIGN.
//!
//! Config is data: the library never reads files or the environment; the server binary does.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// Everything a [`Manager`](crate::Manager) needs to know. Start from [`Config::default`] and
/// change fields; [`Config::validate`] says which value is wrong and why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Capacity limits, reserved atomically at connect time.
    pub limits: Limits,
    /// What happens when a user opens another connection. Default: [`UserPolicy::Replace`].
    pub user_policy: UserPolicy,
    /// Outbound frames queued per connection before the slow-consumer policy applies.
    /// Default 256. At least `history.size + 2` in effect (see [`Config::effective_queue_capacity`]).
    pub queue_capacity: usize,
    /// What a full outbound queue means. Default: [`SlowConsumerPolicy::Close`].
    pub on_full: SlowConsumerPolicy,
    /// Under [`SlowConsumerPolicy::Close`], how long a connection's socket must have stopped
    /// taking bytes, while its queue is full, before it is closed as a slow consumer (4008).
    /// A full queue whose socket still takes bytes means the server is the one behind: the
    /// connection misses live broadcasts and catches up from the lobby's history instead.
    /// Default 2 s.
    pub slow_grace: Duration,
    /// How long a broadcast may wait for others before it is written to a member, so that the
    /// broadcasts reaching a member within it go out in one write: fewer system calls (most
    /// of a broadcast's cost) for that much added latency. Replies and direct messages are
    /// not held. Default 0 (each batch of broadcasts is written as soon as it is dispatched);
    /// at most 1 s.
    pub write_delay: Duration,
    /// Period of `health_ping` frames and protocol pings. Default 20 s.
    pub ping_interval: Duration,
    /// With `ping_interval`, the silence after which a connection is stale (4004).
    /// Default 10 s.
    pub pong_timeout: Duration,
    /// Inbound frames larger than this close the connection with 1009. Default 64 KiB.
    pub max_message_bytes: usize,
    /// How long writing a goodbye and close frame may take before the socket is dropped:
    /// a dead peer that never reads must not hold a task. Default 1 s.
    pub close_timeout: Duration,
    /// Presence events.
    pub presence: PresenceConfig,
    /// This node's name; it prefixes every connection id. Default: random 8 hex digits.
    pub node_id: String,
    /// Inbound message and connect rate limits.
    pub rate: RateConfig,
    /// What clients may send.
    pub client: ClientPermissions,
    /// Log a warning when connections exceed this share of the global limit, or a lobby this
    /// share of the per-lobby limit. Default 80; 0 turns the warnings off.
    pub capacity_warn_percent: u8,
    /// Per-lobby history for recovery after reconnect.
    pub history: crate::history::HistoryConfig,
    /// permessage-deflate on WebSocket connections.
    pub compression: CompressionConfig,
}

/// permessage-deflate (RFC 7692) on WebSocket connections. Every message is compressed and
/// inflated with a fresh window (no context takeover either way), so an idle connection keeps
/// no compression state; a broadcast is compressed once for all its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompressionConfig {
    /// Accept permessage-deflate when a client offers it. Default true.
    pub enabled: bool,
    /// Text and binary messages of at least this many bytes go out compressed to the
    /// connections that negotiated it; smaller ones (and control frames) go out plain.
    /// Default 256.
    pub min_bytes: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_bytes: 256,
        }
    }
}

/// Rate limits. A value of 0 turns that limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateConfig {
    /// Sustained inbound messages per second per connection (token bucket). Every inbound
    /// frame counts, WebSocket Pings and Pongs included, except the first echo of the last
    /// ping the server sent. Default 50.
    pub messages_per_sec: u32,
    /// Bucket size: messages a connection may send in a burst. Default 100.
    pub burst: u32,
    /// Refused messages within 10 seconds (allowed ones between them or not) before the
    /// connection is closed with 4008. Default 10.
    pub max_violations: u32,
    /// New connections per client IP per second (refused with 4008 `rate_limited`).
    /// Default 20.
    pub connects_per_ip_per_sec: u32,
}

/// What clients may send; for apps where only the backend publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientPermissions {
    /// Clients may send `broadcast`. Default true.
    pub allow_broadcast: bool,
    /// Clients may send `direct`. Default true.
    pub allow_direct: bool,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            messages_per_sec: 50,
            burst: 100,
            max_violations: 10,
            connects_per_ip_per_sec: 20,
        }
    }
}

impl Default for ClientPermissions {
    fn default() -> Self {
        Self {
            allow_broadcast: true,
            allow_direct: true,
        }
    }
}

/// The largest `max_message_bytes` accepted: a frame this size may wait in a reader's buffer
/// and, shared, in every queue, so the worst case per connection stays countable.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The longest [`Config::write_delay`]: beyond it, a held broadcast is a stale one.
const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);

/// Capacity limits. Each refusal closes with 4002 and the matching reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Connections on this server (`server_full`). Default 10,000.
    pub max_connections: usize,
    /// Connections in one lobby (`lobby_full`). Default 100.
    pub max_per_lobby: usize,
    /// Connections of one user under [`UserPolicy::Multi`] (`user_limit`). Default 5.
    pub max_per_user: usize,
    /// Connections from one client IP (`ip_limit`). Default 100.
    pub max_per_ip: usize,
    /// Lobbies one protocol-v2 connection may be in at once (`too_many_lobbies`). Default 64.
    pub max_lobbies_per_connection: usize,
    /// Protocol-v2 `rpc` calls one connection may have waiting for their answer
    /// ([`RpcDecision::Later`](crate::RpcDecision::Later)); a call past it is refused with
    /// `rate_limited` at once, so one client cannot pile up work on the backend. Default 8.
    pub max_rpc_in_flight: usize,
    /// IPv6 clients count per network of this prefix length in `max_per_ip` and
    /// `connects_per_ip_per_sec`: one host usually holds a whole /64, so counting single
    /// addresses would let it pick a fresh one for every connection. 48-128, default 64.
    pub ipv6_prefix: u8,
}

impl Limits {
    /// The address per-IP limits count `ip` under: an IPv4 address (IPv4-mapped IPv6
    /// included) as itself, an IPv6 address as its network of [`Limits::ipv6_prefix`] bits.
    pub fn ip_key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u32::from(self.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
            v4 => v4,
        }
    }
}

/// What happens when a user who already has a connection opens another one. The policy spans
/// all of the user's connections on the server, whatever their lobbies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserPolicy {
    /// The newest connection wins; the older ones are closed with 4003 `replaced`.
    #[default]
    Replace,
    /// Every connection stays live, up to [`Limits::max_per_user`].
    Multi,
    /// A newer connection is refused with 4002 `user_limit` while one is open.
    Reject,
}

/// What a full outbound queue means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Close the connection with 4008 `slow_consumer` once its socket has also stopped taking
    /// bytes for [`Config::slow_grace`]; until then the broadcasts it misses wait in the
    /// lobby's history and it catches up from there (docs/protocol.md, "Overload").
    #[default]
    Close,
    /// Drop the message for that connection and count it.
    Drop,
}

/// Presence events (`member_joined` / `member_left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceConfig {
    /// Send join/leave events at all. Default on.
    pub events: bool,
    /// No join/leave events in lobbies with more members than this (their cost is quadratic).
    /// Default 1,000.
    pub events_max_members: usize,
    /// A user whose last connection leaves stays present this long; reconnecting within it
    /// shows no leave at all. Default 0 (leave at once).
    pub leave_grace: Duration,
    /// Join/leave events are written within this delay, together with whatever else is
    /// queued, rather than each with its own wakeup and write. Default 50 ms; 0 writes each
    /// at once.
    pub events_batch: Duration,
}

/// A configuration value that cannot work, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `{field}`: {reason}")]
pub struct ConfigError {
    /// The field, in the dotted names of the configuration table.
    pub field: &'static str,
    /// Why the value cannot work.
    pub reason: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            user_policy: UserPolicy::Replace,
            queue_capacity: 256,
            on_full: SlowConsumerPolicy::Close,
            slow_grace: Duration::from_secs(2),
            write_delay: Duration::ZERO,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            max_message_bytes: 64 * 1024,
            close_timeout: Duration::from_secs(1),
            presence: PresenceConfig::default(),
            node_id: format!("{:08x}", fastrand::u32(..)),
            rate: RateConfig::default(),
            client: ClientPermissions::default(),
            capacity_warn_percent: 80,
            history: crate::history::HistoryConfig::default(),
            compression: CompressionConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_per_lobby: 100,
            max_per_user: 5,
            max_per_ip: 100,
            max_lobbies_per_connection: 64,
            max_rpc_in_flight: 8,
            ipv6_prefix: 64,
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            events: true,
            events_max_members: 1_000,
            leave_grace: Duration::ZERO,
            events_batch: Duration::from_millis(50),
        }
    }
}

impl Config {
    /// Checks that every value can work; the error names the first field that cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.max_connections", self.limits.max_connections),
            ("limits.max_per_lobby", self.limits.max_per_lobby),
            ("limits.max_per_user", self.limits.max_per_user),
            ("limits.max_per_ip", self.limits.max_per_ip),
            (
                "limits.max_lobbies_per_connection",
                self.limits.max_lobbies_per_connection,
            ),
            ("limits.max_rpc_in_flight", self.limits.max_rpc_in_flight),
            ("queue.capacity", self.queue_capacity),
            ("max_message_bytes", self.max_message_bytes),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(ConfigError {
                field: "max_message_bytes",
                reason: format!("must be at most {MAX_MESSAGE_BYTES} (16 MiB)"),
            });
        }
        if self.write_delay > MAX_WRITE_DELAY {
            return Err(ConfigError {
                field: "queue.write_delay_ms",
                reason: "must be at most 1000 ms".into(),
            });
        }
        if self.ping_interval < Duration::from_millis(10) {
            return Err(ConfigError {
                field: "health.ping_interval_ms",
                reason: "must be at least 10 ms".into(),
            });
        }
        if self.pong_timeout.is_zero() {
            return Err(ConfigError {
                field: "health.pong_timeout_ms",
                reason: "must be at least 1 ms".into(),
            });
        }
        let node_ok = !self.node_id.is_empty()
            && self.node_id.len() <= 64
            && self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !node_ok {
            return Err(ConfigError {
                field: "redis.node_id",
                reason: "must be 1-64 characters of [A-Za-z0-9_]".into(),
            });
        }
        if self.rate.messages_per_sec > 0 && self.rate.burst == 0 {
            return Err(ConfigError {
                field: "rate.burst",
                reason: "must be at least 1 when rate.messages_per_sec is set".into(),
            });
        }
        if !(48..=128).contains(&self.limits.ipv6_prefix) {
            return Err(ConfigError {
                field: "limits.ipv6_prefix",
                reason: "must be 48-128 (bits of an IPv6 address that name one client)".into(),
            });
        }
        if self.capacity_warn_percent > 100 {
            return Err(ConfigError {
                field: "capacity_warn_percent",
                reason: "must be a percentage, 0-100".into(),
            });
        }
        Ok(())
    }

    /// The queue capacity connections get: `queue_capacity`, raised to `history.size + 2` when
    /// smaller, so a reconnect's whole replay fits after its `welcome`.
    pub fn effective_queue_capacity(&self) -> usize {
        self.queue_capacity.max(self.history.size.saturating_add(2))
    }

    /// The silence after which a connection is stale.
    pub fn stale_after(&self) -> Duration {
        self.ping_interval + self.pong_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = Config::default();
        c.validate().expect("defaults must validate");
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_per_lobby, 100);
        assert_eq!(c.user_policy, UserPolicy::Replace);
        assert_eq!(c.stale_after(), Duration::from_secs(30));
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = Config::default();
        c.limits.max_per_lobby = 0;
        assert_eq!(c.validate().unwrap_err().field, "limits.max_per_lobby");
        let c = Config {
            node_id: "has-dash".into(),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "redis.node_id");
        let mut c = Config::default();
        c.limits.max_rpc_in_flight = 0;
        assert_eq!(c.validate().unwrap_err().field, "limits.max_rpc_in_flight");
        let mut c = Config::default();
        c.limits.ipv6_prefix = 47;
        assert_eq!(c.validate().unwrap_err().field, "limits.ipv6_prefix");
        c.limits.ipv6_prefix = 129;
        assert_eq!(c.validate().unwrap_err().field, "limits.ipv6_prefix");
        let mut c = Config {
            max_message_bytes: MAX_MESSAGE_BYTES + 1,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "max_message_bytes");
        c.max_message_bytes = MAX_MESSAGE_BYTES;
        c.validate().unwrap();
        c.write_delay = MAX_WRITE_DELAY + Duration::from_millis(1);
        assert_eq!(c.validate().unwrap_err().field, "queue.write_delay_ms");
        c.write_delay = MAX_WRITE_DELAY;
        c.validate().unwrap();
    }

    #[test]
    fn ipv6_counts_per_network_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut limits = Limits::default();
        assert_eq!(limits.ip_key(ip("1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(limits.ip_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(
            limits.ip_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        limits.ipv6_prefix = 48;
        assert_eq!(limits.ip_key(ip("2001:db8:1:2::9")), ip("2001:db8:1::"));
        limits.ipv6_prefix = 128;
        assert_eq!(limits.ip_key(ip("2001:db8::9")), ip("2001:db8::9"));
    }
}
