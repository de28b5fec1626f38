//! One lobby: its members and who of them is present.
//!
//! Members are a dense vector of handles (broadcast walks contiguous memory, 8 bytes a
//! member); each connection's registry entry remembers its position in every lobby it is in,
//! so removal is a `swap_remove`. What a broadcast rarely needs, the offset each member's
//! recovery replayed up to, lives in a parallel vector at the same positions, so it does not
//! widen the walk. Presence (in `presence/`) counts connections per user, so a user with
//! several tabs joins once and leaves once.

use std::sync::Arc;

use super::presence::{LobbyPresence, PresenceChange};
use crate::handle::ConnHandle;

#[derive(Debug, Default)]
pub(crate) struct Lobby {
    pub(crate) members: Vec<Arc<ConnHandle>>,
    /// Cluster mode: per member (same position), the last offset of this lobby its recovery
    /// replayed; live broadcasts up to it are skipped (they were in flight while the replay
    /// was read).
    pub(crate) replayed_until: Vec<u64>,
    pub(crate) presence: LobbyPresence,
}

impl Lobby {
    /// Adds a member; returns its position and whether its user just joined.
    pub(crate) fn add(&mut self, conn: Arc<ConnHandle>) -> (usize, PresenceChange) {
        let change = self.presence.join(&conn.info.user_id);
        self.members.push(conn);
        self.replayed_until.push(0);
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
        self.replayed_until.swap_remove(pos);
        let moved = self.members.get(pos).cloned();
        let change = self.presence.leave(&conn.info.user_id, grace_generation);
        (moved, change)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.presence.is_empty()
    }
}
