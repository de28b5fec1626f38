//! [`ConnectRequest`]: who wants to connect where, as the embedding app says after it has
//! authenticated the client.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::history::Recovery;
use crate::ids::{LobbyCode, UserId};

/// Who wants to connect where: the embedding app fills this in after authenticating.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The lobby to join on connect (`/ws/{lobby}`); `None` for a protocol-v2 connection that
    /// joins its lobbies later (`/ws`).
    pub lobby: Option<LobbyCode>,
    /// The authenticated user.
    pub user_id: UserId,
    /// The client's IP, for the per-IP limit.
    pub ip: IpAddr,
    /// When the credential expires: the connection is then closed with 4010.
    pub expires_at: Option<SystemTime>,
    /// Recovery after a reconnect: replay what was missed since this offset of this epoch.
    pub recovery: Option<Recovery>,
    /// The lobbies the credential allows joining; `None`: any.
    pub allowed: Option<LobbyFilter>,
}

impl ConnectRequest {
    /// A request to connect to `lobby` (or, protocol v2 only, to none yet), with no expiry.
    pub fn new(lobby: impl Into<Option<LobbyCode>>, user_id: UserId, ip: IpAddr) -> Self {
        Self {
            lobby: lobby.into(),
            ..Self::without_lobby(user_id, ip)
        }
    }

    /// A request to connect in no lobby yet (protocol v2: the client joins later), with no
    /// expiry. A v1 client always connects to a lobby.
    pub fn without_lobby(user_id: UserId, ip: IpAddr) -> Self {
        Self {
            lobby: None,
            user_id,
            ip,
            expires_at: None,
            recovery: None,
            allowed: None,
        }
    }

    /// Restricts the lobbies the connection may join (on connect and later) to `allowed`.
    #[must_use]
    pub fn allow_lobbies(mut self, allowed: LobbyFilter) -> Self {
        self.allowed = Some(allowed);
        self
    }

    /// Asks for the broadcasts after `since` (of `epoch`) before live traffic.
    #[must_use]
    pub fn recover(mut self, recovery: Recovery) -> Self {
        self.recovery = Some(recovery);
        self
    }

    /// Closes the connection with 4010 `token_expired` at `at`.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// The lobbies a credential allows joining: exact codes, and prefixes written with a trailing
/// `*` (`team-42:*` allows `team-42:chat`). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LobbyFilter(Arc<[String]>);

impl LobbyFilter {
    /// A filter of these patterns (none: no lobby at all).
    pub fn new<S: Into<String>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Self(patterns.into_iter().map(Into::into).collect())
    }

    /// Whether `lobby` matches one of the patterns.
    pub fn allows(&self, lobby: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => lobby.starts_with(prefix),
            None => p == lobby,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LobbyFilter;

    #[test]
    fn patterns_are_codes_or_prefixes() {
        let filter = LobbyFilter::new(["lobby-1", "team-42:*"]);
        assert!(filter.allows("lobby-1"));
        assert!(!filter.allows("lobby-10"), "exact unless it ends in *");
        assert!(filter.allows("team-42:chat"));
        assert!(filter.allows("team-42:"));
        assert!(!filter.allows("team-4"));
        assert!(!LobbyFilter::new(Vec::<String>::new()).allows("x"));
    }
}
