//! Why a connection ended: the single source of close codes, reason words and retry advice.
//!
//! The table in `docs/protocol.md` mirrors [`DisconnectReason::ALL`]; a test keeps them in step.

use std::fmt;
use std::ops::Range;

/// Close codes of the wire protocol, named so no bare number appears elsewhere.
pub mod close_code {
    /// Graceful shutdown (`server_shutdown`).
    pub const GOING_AWAY: u16 = 1001;
    /// WebSocket protocol violation.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Binary data frames are not part of protocol v1.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// An inbound frame larger than `max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The backend that decides who connects did not answer (`backend_unavailable`).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Missing, invalid or expired token.
    pub const UNAUTHORIZED: u16 = 4001;
    /// A capacity limit was reached.
    pub const CAPACITY: u16 = 4002;
    /// A newer connection of the same user took over.
    pub const REPLACED: u16 = 4003;
    /// Nothing arrived within the health timeout.
    pub const STALE: u16 = 4004;
    /// Too many messages in, or could not keep up with messages out.
    pub const POLICY: u16 = 4008;
    /// Disconnected by the backend.
    pub const KICKED: u16 = 4009;
    /// The token's `exp` passed.
    pub const TOKEN_EXPIRED: u16 = 4010;
}

/// Why a connection ended (or was refused).
///
/// Every disconnect path produces exactly one reason; it decides the close frame sent, whether a
/// `goodbye` frame with `retry_after_ms` precedes it, and what handlers and logs see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client sent a close frame.
    ClientClosed,
    /// The socket failed or ended without a close frame (reset, EOF, write error).
    ConnectionLost,
    /// 4001: missing, invalid or expired token, or a lobby the token does not allow.
    Unauthorized,
    /// 4002 `server_full`: the global connection limit.
    ServerFull,
    /// 4002 `lobby_full`: the per-lobby limit.
    LobbyFull,
    /// 4002 `user_limit`: the per-user limit (or policy `reject` with a connection open).
    UserLimit,
    /// 4002 `ip_limit`: the per-IP limit.
    IpLimit,
    /// 4003: a newer connection of the same user took over (policy `replace`).
    Replaced,
    /// 4004: nothing arrived for `ping_interval + pong_timeout`.
    Stale,
    /// 4008 `rate_limited`: too many messages or connects in.
    RateLimited,
    /// 4008 `slow_consumer`: the outbound queue overflowed.
    SlowConsumer,
    /// 4009: disconnected by the backend.
    Kicked,
    /// 4010: the token expired; reconnect with a fresh one.
    TokenExpired,
    /// 1001: graceful shutdown.
    ServerShutdown,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
    /// 1003: a binary data frame.
    UnsupportedData,
    /// 1007: a text frame with invalid UTF-8.
    InvalidUtf8,
    /// 1009: a frame larger than `max_message_bytes`.
    MessageTooBig,
    /// 1013: the backend that decides who may connect (the standalone server's connect proxy)
    /// did not answer in time, or failed; retry later.
    BackendUnavailable,
}

impl DisconnectReason {
    /// Every reason, in the order of the protocol's close-code table.
    pub const ALL: [DisconnectReason; 19] = [
        Self::ClientClosed,
        Self::ConnectionLost,
        Self::Unauthorized,
        Self::ServerFull,
        Self::LobbyFull,
        Self::UserLimit,
        Self::IpLimit,
        Self::Replaced,
        Self::Stale,
        Self::RateLimited,
        Self::SlowConsumer,
        Self::Kicked,
        Self::TokenExpired,
        Self::ServerShutdown,
        Self::ProtocolError,
        Self::UnsupportedData,
        Self::InvalidUtf8,
        Self::MessageTooBig,
        Self::BackendUnavailable,
    ];

    /// The close code the server sends, or `None` when the peer already closed or is gone.
    pub fn close_code(self) -> Option<u16> {
        use close_code::*;
        Some(match self {
            Self::ClientClosed | Self::ConnectionLost => return None,
            Self::Unauthorized => UNAUTHORIZED,
            Self::ServerFull | Self::LobbyFull | Self::UserLimit | Self::IpLimit => CAPACITY,
            Self::Replaced => REPLACED,
            Self::Stale => STALE,
            Self::RateLimited | Self::SlowConsumer => POLICY,
            Self::Kicked => KICKED,
            Self::TokenExpired => TOKEN_EXPIRED,
            Self::ServerShutdown => GOING_AWAY,
            Self::ProtocolError => PROTOCOL_ERROR,
            Self::UnsupportedData => UNSUPPORTED_DATA,
            Self::InvalidUtf8 => INVALID_PAYLOAD,
            Self::MessageTooBig => MESSAGE_TOO_BIG,
            Self::BackendUnavailable => TRY_AGAIN_LATER,
        })
    }

    /// The lower_snake reason word: the close frame's reason string and the log/metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ConnectionLost => "connection_lost",
            Self::Unauthorized => "unauthorized",
            Self::ServerFull => "server_full",
            Self::LobbyFull => "lobby_full",
            Self::UserLimit => "user_limit",
            Self::IpLimit => "ip_limit",
            Self::Replaced => "replaced",
            Self::Stale => "stale",
            Self::RateLimited => "rate_limited",
            Self::SlowConsumer => "slow_consumer",
            Self::Kicked => "kicked",
            Self::TokenExpired => "token_expired",
            Self::ServerShutdown => "server_shutdown",
            Self::ProtocolError => "protocol_error",
            Self::UnsupportedData => "unsupported_data",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::MessageTooBig => "message_too_big",
            Self::BackendUnavailable => "backend_unavailable",
        }
    }

    /// The range `retry_after_ms` is drawn from, for closes that invite a later retry
    /// (4002, 4004, 4008, 4010, 1001, 1013). `None`: no `goodbye` frame is sent.
    ///
    /// The draw is uniform so that clients refused or drained together do not return together.
    pub fn retry_after_range_ms(self) -> Option<Range<u64>> {
        match self {
            Self::ServerFull | Self::LobbyFull | Self::UserLimit | Self::IpLimit => {
                Some(2_000..10_000)
            }
            Self::Stale => Some(0..2_000),
            Self::RateLimited | Self::SlowConsumer => Some(1_000..5_000),
            Self::TokenExpired => Some(0..1_000),
            Self::ServerShutdown => Some(1_000..10_000),
            Self::BackendUnavailable => Some(1_000..5_000),
            _ => None,
        }
    }

    /// Draws a jittered `retry_after_ms` for this reason, if it invites a retry.
    pub fn retry_after_ms(self) -> Option<u64> {
        self.retry_after_range_ms().map(fastrand::u64)
    }

    /// Whether a well-behaved client reconnects after this close (never after 4001, 4003, 4009).
    pub fn client_should_reconnect(self) -> bool {
        !matches!(self, Self::Unauthorized | Self::Replaced | Self::Kicked)
    }
}

/// The close a broken frame calls for: 1009 too big, 1007 invalid UTF-8, else 1002. Public so
/// a program on the same WebSocket layer (the Autobahn echo) closes exactly as the library does.
impl From<crate::ws::frame::FrameError> for DisconnectReason {
    fn from(error: crate::ws::frame::FrameError) -> Self {
        use crate::ws::frame::FrameError;
        match error {
            FrameError::InvalidUtf8 => Self::InvalidUtf8,
            FrameError::TooBig => Self::MessageTooBig,
            FrameError::Protocol(_) => Self::ProtocolError,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodbye_exactly_for_closes_that_invite_retry() {
        for reason in DisconnectReason::ALL {
            let invites = matches!(
                reason.close_code(),
                Some(4002 | 4004 | 4008 | 4010 | 1001 | 1013)
            );
            assert_eq!(reason.retry_after_range_ms().is_some(), invites, "{reason}");
        }
    }

    #[test]
    fn retry_after_is_jittered_within_range() {
        let draws: std::collections::HashSet<u64> = (0..50)
            .filter_map(|_| DisconnectReason::ServerFull.retry_after_ms())
            .collect();
        assert!(draws.len() > 10, "draws should differ: {draws:?}");
        assert!(draws.iter().all(|d| (2_000..10_000).contains(d)));
    }

    #[test]
    fn reason_words_are_unique_lower_snake() {
        let words: std::collections::HashSet<&str> =
            DisconnectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.len(), DisconnectReason::ALL.len());
        assert!(words.iter().all(|w| {
            w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        }));
    }

    #[test]
    fn protocol_doc_lists_every_close_code_and_reason() {
        let doc = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/protocol.md"
        ));
        let documented: std::collections::BTreeSet<(u16, String)> = doc
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let code = cells.next()?.parse().ok()?;
                let word = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                Some((code, word.to_owned()))
            })
            .collect();
        let actual: std::collections::BTreeSet<(u16, String)> = DisconnectReason::ALL
            .iter()
            .filter_map(|r| Some((r.close_code()?, r.as_str().to_owned())))
            .collect();
        assert_eq!(
            documented, actual,
            "docs/protocol.md's close-code table is out of step"
        );
    }
}
