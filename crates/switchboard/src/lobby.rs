//! One lobby's members and its per-user presence.
//!
//! Members are a dense vector (broadcast walks contiguous memory); each connection remembers
//! its position, so removal is a `swap_remove`. Presence counts connections per user, so a user
//! with several tabs joins once and leaves once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::handle::ConnHandle;
use crate::ids::UserId;

#[derive(Debug, Default)]
pub(crate) struct Lobby {
    pub(crate) members: Vec<Arc<ConnHandle>>,
    pub(crate) users: HashMap<UserId, UserPresence>,
}

/// A user's presence in one lobby.
#[derive(Debug, Default)]
pub(crate) struct UserPresence {
    /// Live connections of the user in this lobby.
    pub(crate) conns: u32,
    /// Set while the user has no connection but is inside the leave grace: the generation that
    /// the grace timer must still match to emit the leave.
    pub(crate) leaving: Option<u64>,
}

/// What a member change means for presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PresenceChange {
    None,
    Joined,
    Left,
    /// The user's last connection left; the leave waits for the grace timer of this generation.
    LeavePending(u64),
}

impl Lobby {
    /// Adds a member; returns its position and whether its user just joined.
    pub(crate) fn add(&mut self, conn: Arc<ConnHandle>) -> (usize, PresenceChange) {
        let presence = self.users.entry(conn.info.user_id.clone()).or_default();
        let change = if presence.conns == 0 && presence.leaving.take().is_none() {
            PresenceChange::Joined
        } else {
            PresenceChange::None
        };
        presence.conns += 1;
        self.members.push(conn);
        (self.members.len() - 1, change)
    }

    /// Removes the member at `pos`. Returns the member moved into `pos` (whose stored position
    /// must be updated) and the presence change.
    pub(crate) fn remove(
        &mut self,
        pos: usize,
        grace_generation: Option<u64>,
    ) -> (Option<Arc<ConnHandle>>, PresenceChange) {
        let conn = self.members.swap_remove(pos);
        let moved = self.members.get(pos).cloned();
        let user = &conn.info.user_id;
        let Some(presence) = self.users.get_mut(user) else {
            debug_assert!(false, "member without presence entry");
            return (moved, PresenceChange::None);
        };
        presence.conns -= 1;
        if presence.conns > 0 {
            return (moved, PresenceChange::None);
        }
        match grace_generation {
            Some(generation) => {
                presence.leaving = Some(generation);
                (moved, PresenceChange::LeavePending(generation))
            }
            None => {
                self.users.remove(user);
                (moved, PresenceChange::Left)
            }
        }
    }

    /// Ends a leave grace if it is still the one of `generation`; returns whether the user left.
    pub(crate) fn expire_leave(&mut self, user: &UserId, generation: u64) -> bool {
        let expired = self
            .users
            .get(user)
            .is_some_and(|p| p.conns == 0 && p.leaving == Some(generation));
        if expired {
            self.users.remove(user);
        }
        expired
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.users.is_empty()
    }

    /// The lobby's users, sorted, including those inside a leave grace.
    pub(crate) fn user_list(&self) -> Vec<&UserId> {
        let mut users: Vec<&UserId> = self.users.keys().collect();
        users.sort_unstable();
        users
    }
}
