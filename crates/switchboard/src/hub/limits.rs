//! The admission arithmetic: given what a connect would leave behind, which limit (if any) it
//! exceeds. A plain function of counts, so the registry only counts and the rule is tested on
//! its own; the cluster's admit script applies the same rule in Redis.

use crate::config::{Limits, UserPolicy};
use crate::disconnect::DisconnectReason;

/// The counts a connect would leave, the connections it replaces already gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct After {
    /// Connections on the server.
    pub(crate) total: usize,
    /// Connections in the lobby joined.
    pub(crate) lobby: usize,
    /// Connections of the user.
    pub(crate) user: usize,
    /// Connections from the client's address (its [`Limits::ip_key`]).
    pub(crate) ip: usize,
}

/// The first limit `after` exceeds, in the documented order (server, lobby, user, IP).
/// Under `replace` and `reject` a user has one connection at most; under `multi`,
/// `max_per_user`.
pub(crate) fn check(
    after: After,
    limits: &Limits,
    policy: UserPolicy,
) -> Result<(), DisconnectReason> {
    let user_max = match policy {
        UserPolicy::Replace | UserPolicy::Reject => 1,
        UserPolicy::Multi => limits.max_per_user,
    };
    if after.total > limits.max_connections {
        return Err(DisconnectReason::ServerFull);
    }
    if after.lobby > limits.max_per_lobby {
        return Err(DisconnectReason::LobbyFull);
    }
    if after.user > user_max {
        return Err(DisconnectReason::UserLimit);
    }
    if after.ip > limits.max_per_ip {
        return Err(DisconnectReason::IpLimit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            max_per_lobby: 5,
            max_per_user: 3,
            max_per_ip: 4,
            ..Limits::default()
        }
    }

    const FITS: After = After {
        total: 10,
        lobby: 5,
        user: 1,
        ip: 4,
    };

    #[test]
    fn every_limit_is_inclusive() {
        for policy in [UserPolicy::Replace, UserPolicy::Multi, UserPolicy::Reject] {
            assert_eq!(check(FITS, &limits(), policy), Ok(()), "{policy:?}");
        }
    }

    #[test]
    fn the_first_limit_exceeded_names_the_refusal_in_order() {
        let all_over = After {
            total: 11,
            lobby: 6,
            user: 4,
            ip: 5,
        };
        let l = limits();
        let multi = UserPolicy::Multi;
        assert_eq!(
            check(all_over, &l, multi),
            Err(DisconnectReason::ServerFull)
        );
        let a = After {
            total: 10,
            ..all_over
        };
        assert_eq!(check(a, &l, multi), Err(DisconnectReason::LobbyFull));
        let a = After { lobby: 5, ..a };
        assert_eq!(check(a, &l, multi), Err(DisconnectReason::UserLimit));
        let a = After { user: 3, ..a };
        assert_eq!(check(a, &l, multi), Err(DisconnectReason::IpLimit));
        let a = After { ip: 4, ..a };
        assert_eq!(check(a, &l, multi), Ok(()));
    }

    #[test]
    fn one_connection_per_user_unless_multi() {
        let two = After { user: 2, ..FITS };
        assert_eq!(
            check(two, &limits(), UserPolicy::Reject),
            Err(DisconnectReason::UserLimit)
        );
        assert_eq!(
            check(two, &limits(), UserPolicy::Replace),
            Err(DisconnectReason::UserLimit)
        );
        assert_eq!(check(two, &limits(), UserPolicy::Multi), Ok(()));
    }
}
