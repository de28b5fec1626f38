//! One lobby: its members and who of them is present.
//!
//! Members are a dense vector (broadcast walks contiguous memory); each connection's registry
//! entry remembers its position in every lobby it is in, so removal is a `swap_remove`.
//! Presence (in `presence/`) counts connections per user, so a user with several tabs joins
//! once and leaves once.

use std::sync::Arc;

use super::presence::{LobbyPresence, PresenceChange};
use crate::handle::ConnHandle;

#[derive(Debug, Default)]
pub(crate) struct Lobby {
    pub(crate) members: Vec<Member>,
    pub(crate) presence: LobbyPresence,
}

/// A connection in a lobby.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) conn: Arc<ConnHandle>,
    /// Cluster mode: the last offset of this lobby its recovery replayed; live broadcasts up
    /// to it are skipped (they were in flight while the replay was read).
    pub(crate) replayed_until: u64,
}

impl Lobby {
    /// Adds a member; returns its position and whether its user just joined.
    pub(crate) fn add(&mut self, conn: Arc<ConnHandle>) -> (usize, PresenceChange) {
        let change = self.presence.join(&conn.info.user_id);
        self.members.push(Member {
            conn,
            replayed_until: 0,
        });
        (self.members.len() - 1, change)
    }

    /// Removes the member at `pos`. Returns the member moved into `pos` (whose stored position
    /// must be updated), the presence change, and the member removed.
    pub(crate) fn remove(
        &mut self,
        pos: usize,
        grace_generation: Option<u64>,
    ) -> (Option<Arc<ConnHandle>>, PresenceChange) {
        let member = self.members.swap_remove(pos);
        let moved = self.members.get(pos).map(|m| m.conn.clone());
        let change = self
            .presence
            .leave(&member.conn.info.user_id, grace_generation);
        (moved, change)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.presence.is_empty()
    }
}
