//! One lobby: its members and who of them is present.
//!
//! Members are a dense vector (broadcast walks contiguous memory); each connection remembers
//! its position, so removal is a `swap_remove`. Presence (in `presence.rs`) counts connections
//! per user, so a user with several tabs joins once and leaves once.

use std::sync::Arc;

use super::presence::{LobbyPresence, PresenceChange};
use crate::handle::ConnHandle;

#[derive(Debug, Default)]
pub(crate) struct Lobby {
    pub(crate) members: Vec<Arc<ConnHandle>>,
    pub(crate) presence: LobbyPresence,
}

impl Lobby {
    /// Adds a member; returns its position and whether its user just joined.
    pub(crate) fn add(&mut self, conn: Arc<ConnHandle>) -> (usize, PresenceChange) {
        let change = self.presence.join(&conn.info.user_id);
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
        let change = self.presence.leave(&conn.info.user_id, grace_generation);
        (moved, change)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.presence.is_empty()
    }
}
