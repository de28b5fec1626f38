//! [`ConnectRequest`]: who wants to connect where, as the embedding app says after it has
//! authenticated the client.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::history::Recovery;
use crate::ids::{LobbyCode, UserId};

/// Who wants to connect where: the embedding app fills this in after authenticating.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The lobby to join.
    pub lobby: LobbyCode,
    /// The authenticated user.
    pub user_id: UserId,
    /// The client's IP, for the per-IP limit.
    pub ip: IpAddr,
    /// When the credential expires: the connection is then closed with 4010.
    pub expires_at: Option<SystemTime>,
    /// Recovery after a reconnect: replay what was missed since this offset of this epoch.
    pub recovery: Option<Recovery>,
}

impl ConnectRequest {
    /// A request with no expiry.
    pub fn new(lobby: LobbyCode, user_id: UserId, ip: IpAddr) -> Self {
        Self {
            lobby,
            user_id,
            ip,
            expires_at: None,
            recovery: None,
        }
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
