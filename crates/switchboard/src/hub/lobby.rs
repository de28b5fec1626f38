//! One lobby: its members and who of them is present.
//!
//! Members are a dense vector of handles (broadcast walks contiguous memory, 8 bytes a
//! member); each connection's registry entry remembers its position in every lobby it is in,
//! so removal is a `swap_remove`. What a broadcast rarely needs, the offset each member's
//! recovery replayed up to, lives in a parallel vector at the same positions, so it does not
//! widen the walk; so does where each member is behind (see [`Lag`]). Presence (in `presence/`) counts connections per user, so a user with
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
    /// Per member (same position): whether it is behind, and from which offset.
    pub(crate) lag: Vec<Lag>,
    /// Members behind.
    pub(crate) lagging: usize,
    /// When the cluster was last told that this node's members of the lobby are behind.
    pub(crate) announced: Option<std::time::Instant>,
    pub(crate) presence: LobbyPresence,
}

/// Where a member is behind in a lobby: its queue was full when the broadcast at `from` came,
/// so it gets live broadcasts again only after the lobby's history has given it everything
/// from `from` on. 0 while live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Lag(u64);

impl Lag {
    /// Behind from offset `from` (offsets start at 1).
    pub(crate) fn behind(from: u64) -> Self {
        debug_assert!(from > 0);
        Self(from)
    }

    pub(crate) fn is_behind(self) -> bool {
        self.0 != 0
    }

    /// The first offset it has not been given.
    pub(crate) fn from(self) -> u64 {
        self.0
    }
}

impl Lobby {
    /// Adds a member; returns its position and whether its user just joined.
    pub(crate) fn add(&mut self, conn: Arc<ConnHandle>) -> (usize, PresenceChange) {
        let change = self.presence.join(&conn.info.user_id);
        self.members.push(conn);
        self.replayed_until.push(0);
        self.lag.push(Lag::default());
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
        self.set_lag(pos, Lag::default());
        self.lag.swap_remove(pos);
        let moved = self.members.get(pos).cloned();
        let change = self.presence.leave(&conn.info.user_id, grace_generation);
        (moved, change)
    }

    /// Changes a member's lag, keeping the counts; returns the previous one.
    pub(crate) fn set_lag(&mut self, pos: usize, lag: Lag) -> Lag {
        let old = std::mem::replace(&mut self.lag[pos], lag);
        self.lagging = self.lagging + usize::from(lag.is_behind()) - usize::from(old.is_behind());
        old
    }

    /// Whether a member behind is reading (its socket takes bytes now: the server is the one
    /// behind). A member whose socket is full sheds nothing for its sake.
    pub(crate) fn reading_behind(&self) -> bool {
        self.lagging > 0
            && self.members.iter().zip(&self.lag).any(|(conn, lag)| {
                lag.is_behind() && conn.reason().is_none() && conn.blocked_for().is_none()
            })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.presence.is_empty()
    }
}
