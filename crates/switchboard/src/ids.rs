//! Validated names: lobby codes, user ids and connection ids.
//!
//! Each is a cheap-clone `Arc<str>`: the same name is shared by the hub's indexes and by every
//! frame that mentions it, without copying.

use std::fmt;
use std::sync::Arc;

/// Why a lobby code or user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidId {
    /// A lobby code must be 1-64 characters of `[A-Za-z0-9_.:-]`.
    #[error("invalid lobby code: must be 1-64 characters of [A-Za-z0-9_.:-]")]
    Lobby,
    /// A user id must be 1-128 characters without control characters.
    #[error("invalid user id: must be 1-128 characters without control characters")]
    User,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A lobby (room) code: 1-64 characters of `[A-Za-z0-9_.:-]`.
    LobbyCode
);
name_type!(
    /// A user id: 1-128 characters without control characters.
    UserId
);
name_type!(
    /// A connection id, unique per server and naming its node: `NODE-SEQ`.
    ConnectionId
);

impl LobbyCode {
    /// Validates a lobby code.
    pub fn parse(code: &str) -> Result<Self, InvalidId> {
        let valid = (1..=64).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if valid {
            Ok(Self(code.into()))
        } else {
            Err(InvalidId::Lobby)
        }
    }
}

impl UserId {
    /// Validates a user id.
    pub fn parse(id: &str) -> Result<Self, InvalidId> {
        let chars = id.chars().count();
        if (1..=128).contains(&chars) && !id.chars().any(char::is_control) {
            Ok(Self(id.into()))
        } else {
            Err(InvalidId::User)
        }
    }
}

impl ConnectionId {
    pub(crate) fn new(node: &str, seq: u64) -> Self {
        // Written by hand (one per connect: `format!` cost more than the rest of this).
        let mut id = String::with_capacity(node.len() + 21);
        id.push_str(node);
        id.push('-');
        push_decimal(&mut id, seq);
        Self(id.into())
    }

    /// The per-node sequence number, if this id was minted by the node named `node`.
    pub(crate) fn seq_on(id: &str, node: &str) -> Option<u64> {
        let rest = id.strip_prefix(node)?.strip_prefix('-')?;
        rest.parse().ok()
    }
}

/// Writes `n` in decimal (for ids and frames built by hand, without `fmt`).
pub(crate) fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Always ASCII digits.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lobby_codes() {
        assert!(LobbyCode::parse("room-1_a.b:c").is_ok());
        assert!(LobbyCode::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "has space", "slash/", "é", &"a".repeat(65)] {
            assert_eq!(LobbyCode::parse(bad), Err(InvalidId::Lobby), "{bad:?}");
        }
    }

    #[test]
    fn user_ids() {
        assert!(UserId::parse("alice@example.com").is_ok());
        assert!(UserId::parse(&"é".repeat(128)).is_ok());
        for bad in ["", "tab\there", "nl\n", &"a".repeat(129)] {
            assert_eq!(UserId::parse(bad), Err(InvalidId::User), "{bad:?}");
        }
    }

    #[test]
    fn connection_ids_name_their_node() {
        let id = ConnectionId::new("n1", 42);
        assert_eq!(id.as_str(), "n1-42");
        assert_eq!(ConnectionId::seq_on("n1-42", "n1"), Some(42));
        assert_eq!(ConnectionId::seq_on("n2-42", "n1"), None);
        assert_eq!(ConnectionId::seq_on("n1-x", "n1"), None);
    }
}
