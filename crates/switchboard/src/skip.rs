//! [`Skip`]: who a broadcast leaves out. One type for every publisher (the backend's
//! `Manager::broadcast`, a client's `exclude_self`, a broadcast arriving from another node),
//! with a compact text form for the cluster's wire.

/// Who a broadcast skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Skip<'a> {
    /// Nobody.
    #[default]
    Nobody,
    /// Every connection of this user (on every node).
    User(&'a str),
    /// This one connection (its id names its node); the user's other connections still
    /// receive the broadcast.
    Connection(&'a str),
}

impl<'a> Skip<'a> {
    /// A compact text form for the wire: `""`, `u:USER` or `c:ID`.
    pub fn encode(self) -> String {
        match self {
            Self::Nobody => String::new(),
            Self::User(u) => format!("u:{u}"),
            Self::Connection(c) => format!("c:{c}"),
        }
    }

    /// The reverse of [`Skip::encode`].
    pub fn decode(text: &'a str) -> Self {
        if let Some(u) = text.strip_prefix("u:") {
            Self::User(u)
        } else if let Some(c) = text.strip_prefix("c:") {
            Self::Connection(c)
        } else {
            Self::Nobody
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Skip;

    #[test]
    fn the_wire_form_round_trips() {
        for skip in [
            Skip::Nobody,
            Skip::User("alice"),
            Skip::Connection("node-a-7"),
        ] {
            assert_eq!(Skip::decode(&skip.encode()), skip);
        }
    }
}
