//! Everything presence, in one place: who is in a lobby (users, however many connections
//! each), the join/leave events and their batching, the leave grace, and the presence list.
//!
//! A user joins a lobby with their first connection there and leaves with their last. With a
//! leave grace, a last connection that goes does not make its user leave at once: the leave
//! waits for the grace, and a connection of the user that comes back within it cancels it
//! (a page reload shows no leave/join pair). Events are sent only while a lobby is small
//! enough (`presence.events_max_members`) and are written in batches (`batch.rs`).

mod batch;
mod feed;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::Message;
use serde_json::value::RawValue;

pub(super) use batch::EventBatch;
pub(crate) use feed::{AppFeed, Notice, NoticeSink};

use super::lobby::Lobby;
use super::{Exclude, Hub};
use crate::handle::{ConnHandle, LostConnection, Offer};
use crate::ids::{LobbyCode, UserId};
use crate::protocol::{ServerFrame, text};

/// Who is present in one lobby: live connections per user, and users inside a leave grace.
#[derive(Debug, Default)]
pub(crate) struct LobbyPresence {
    users: HashMap<UserId, UserPresence>,
}

/// A user's presence in one lobby.
#[derive(Debug, Default)]
struct UserPresence {
    /// Live connections of the user in this lobby.
    conns: u32,
    /// Set while the user has no connection but is inside the leave grace: the generation that
    /// the grace timer must still match to emit the leave.
    leaving: Option<u64>,
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

impl LobbyPresence {
    /// A connection of `user` arrived: whether the user just joined.
    pub(crate) fn join(&mut self, user: &UserId) -> PresenceChange {
        let presence = self.users.entry(user.clone()).or_default();
        let change = if presence.conns == 0 && presence.leaving.take().is_none() {
            PresenceChange::Joined
        } else {
            PresenceChange::None
        };
        presence.conns += 1;
        change
    }

    /// A connection of `user` left: whether the user left, or will after the grace of
    /// `grace_generation`.
    pub(crate) fn leave(&mut self, user: &UserId, grace_generation: Option<u64>) -> PresenceChange {
        let Some(presence) = self.users.get_mut(user) else {
            debug_assert!(false, "member without presence entry");
            return PresenceChange::None;
        };
        presence.conns -= 1;
        if presence.conns > 0 {
            return PresenceChange::None;
        }
        match grace_generation {
            Some(generation) => {
                presence.leaving = Some(generation);
                PresenceChange::LeavePending(generation)
            }
            None => {
                self.users.remove(user);
                PresenceChange::Left
            }
        }
    }

    /// Ends a leave grace if it is still the one of `generation`; returns whether the user left.
    fn expire_leave(&mut self, user: &UserId, generation: u64) -> bool {
        let expired = self
            .users
            .get(user)
            .is_some_and(|p| p.conns == 0 && p.leaving == Some(generation));
        if expired {
            self.users.remove(user);
        }
        expired
    }

    /// The generation of `user`'s pending leave, if inside a grace.
    pub(crate) fn leaving(&self, user: &UserId) -> Option<u64> {
        self.users.get(user)?.leaving
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Distinct users, those inside a leave grace included.
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }

    /// Live connections counted over every user (consistency checks).
    #[cfg(test)]
    pub(crate) fn conns(&self) -> u32 {
        self.users.values().map(|p| p.conns).sum()
    }

    /// The lobby's users, sorted, including those inside a leave grace.
    fn user_list(&self) -> Vec<&UserId> {
        let mut users: Vec<&UserId> = self.users.keys().collect();
        users.sort_unstable();
        users
    }
}

/// A leave grace to be timed: [`Hub::leave`] times it; tests call [`Hub::expire_leave`].
#[derive(Debug)]
pub(crate) struct PendingLeave {
    pub(crate) lobby: LobbyCode,
    pub(crate) user: UserId,
    pub(crate) generation: u64,
    /// This node speaks for the connection's presence (alone, or admitted while the cluster
    /// was away); in a cluster that admitted it, the cluster does.
    pub(crate) local_presence: bool,
}

/// The hub's presence side: events, the leave grace, the presence list.
impl Hub {
    /// Times a leave grace on the tracker; at shutdown ([`Hub::end_leave_graces`]) the leave
    /// happens at once.
    pub(crate) fn time_leave(self: &Arc<Self>, pending: PendingLeave) {
        let hub = self.clone();
        let grace = self.config.presence.leave_grace;
        self.tracker.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = hub.leave_graces.cancelled() => {}
            }
            hub.expire_leave(&pending);
        });
    }

    /// Starts telling `sink` what the app hears (see [`AppFeed`]): presence changes this node
    /// speaks for (with `presence`), and what the cluster tells through `LocalNode`.
    pub(crate) fn listen(&self, sink: NoticeSink, presence: bool) {
        self.feed.listen(sink, presence);
    }

    /// A presence change the cluster made true on this node (exactly one node hears it).
    pub(crate) fn presence_changed(&self, lobby: &LobbyCode, user: &UserId, joined: bool) {
        self.feed.presence(lobby, user, joined, &self.tracker);
    }

    /// A dead node's connection this node freed (exactly one node hears it).
    pub(crate) fn connection_lost(&self, lost: LostConnection) {
        self.feed.push(Notice::Lost(lost), &self.tracker);
    }

    /// At shutdown: pending leave graces end at once.
    pub(crate) fn end_leave_graces(&self) {
        self.leave_graces.cancel();
    }

    /// Ends a leave grace: if the user has not come back, they leave now.
    pub(crate) fn expire_leave(&self, pending: &PendingLeave) {
        let mut reg = self.lock();
        let Some(lobby) = reg.lobbies.get_mut(&pending.lobby) else {
            return;
        };
        if lobby
            .presence
            .expire_leave(&pending.user, pending.generation)
        {
            let user_id = &pending.user;
            if pending.local_presence {
                self.feed
                    .presence(&pending.lobby, user_id, false, &self.tracker);
            }
            if self.events_on(lobby) {
                let frame = text(
                    ServerFrame::MemberLeft {
                        lobby: &pending.lobby,
                        user_id,
                    }
                    .encode(),
                );
                self.fan_out_events(&lobby.members, &frame, Exclude::Nobody);
            }
            if lobby.is_empty() {
                reg.lobbies.remove(&pending.lobby);
            }
        }
    }

    /// Sends `member_joined` or `member_left` about `info`'s user to the lobby (all but the
    /// connection `skip`), if events are on there and this node speaks for the connection's
    /// presence (in a cluster that admitted it, the cluster does).
    pub(super) fn announce(
        &self,
        lobby_code: &LobbyCode,
        lobby: &Lobby,
        change: PresenceChange,
        conn: &ConnHandle,
    ) {
        let user_id = &conn.info.user_id;
        if !conn.cluster_presence
            && let PresenceChange::Joined | PresenceChange::Left = change
        {
            self.feed.presence(
                lobby_code,
                user_id,
                change == PresenceChange::Joined,
                &self.tracker,
            );
        }
        let frame = match change {
            PresenceChange::Joined => ServerFrame::MemberJoined {
                lobby: lobby_code,
                user_id,
            },
            PresenceChange::Left => ServerFrame::MemberLeft {
                lobby: lobby_code,
                user_id,
            },
            PresenceChange::None | PresenceChange::LeavePending(_) => return,
        };
        if conn.cluster_presence || !self.events_on(lobby) {
            return;
        }
        let encoded = text(frame.encode());
        self.fan_out_events(&lobby.members, &encoded, Exclude::Connection(conn.seq));
    }

    /// Offers a join/leave event to members. A member whose queue is full does not lose its
    /// connection over it (a join storm would otherwise close a whole lobby): the event is
    /// dropped and the member is marked behind, and its writer sends a fresh `presence` list
    /// once it has caught up.
    fn fan_out_events(
        &self,
        members: &[Arc<ConnHandle>],
        frame: &Message,
        exclude: Exclude<'_>,
    ) -> usize {
        members
            .iter()
            .filter(|c| exclude.keeps(c))
            .filter(|c| match self.events.offer(c, frame.clone()) {
                Offer::Queued => true,
                Offer::Closed => false,
                Offer::Full => {
                    c.presence_behind.store(true, Ordering::Relaxed);
                    self.counters.overflow(true);
                    false
                }
            })
            .count()
    }

    /// Offers a presence event from another node to this node's members of a lobby.
    pub(crate) fn broadcast_event(&self, lobby: &str, frame: &Message) -> usize {
        let reg = self.lock();
        reg.lobbies.get(lobby).map_or(0, |l| {
            self.fan_out_events(&l.members, frame, Exclude::Nobody)
        })
    }

    /// Whether join/leave events are sent in this lobby right now.
    pub(crate) fn events_on(&self, lobby: &Lobby) -> bool {
        let presence = &self.config.presence;
        presence.events && lobby.presence.len() <= presence.events_max_members
    }

    /// The users of a lobby on this node, sorted (empty when nobody is there).
    pub(crate) fn presence(&self, lobby: &LobbyCode) -> Vec<UserId> {
        let reg = self.lock();
        reg.lobbies
            .get(lobby)
            .map(|l| l.presence.user_list().into_iter().cloned().collect())
            .unwrap_or_default()
    }

    /// This node's `presence` answer for a lobby, encoded under the lock without copying the
    /// user list.
    pub(crate) fn presence_frame(&self, lobby: &LobbyCode, id: Option<&RawValue>) -> Message {
        let reg = self.lock();
        let users = reg.lobbies.get(lobby).map_or_else(Vec::new, |l| {
            l.presence
                .user_list()
                .into_iter()
                .map(UserId::as_str)
                .collect()
        });
        text(ServerFrame::Presence { lobby, users, id }.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_joins_with_the_first_connection_and_leaves_with_the_last() {
        let alice = UserId::parse("alice").unwrap();
        let mut lobby = LobbyPresence::default();
        assert_eq!(lobby.join(&alice), PresenceChange::Joined);
        assert_eq!(lobby.join(&alice), PresenceChange::None, "a second tab");
        assert_eq!(lobby.leave(&alice, None), PresenceChange::None);
        assert_eq!(lobby.leave(&alice, None), PresenceChange::Left);
        assert!(lobby.is_empty());
    }

    #[test]
    fn a_return_within_the_grace_cancels_the_leave() {
        let alice = UserId::parse("alice").unwrap();
        let mut lobby = LobbyPresence::default();
        lobby.join(&alice);
        assert_eq!(
            lobby.leave(&alice, Some(1)),
            PresenceChange::LeavePending(1)
        );
        assert_eq!(
            lobby.user_list(),
            [&alice],
            "still present inside the grace"
        );
        assert_eq!(
            lobby.join(&alice),
            PresenceChange::None,
            "no join event: never left"
        );
        assert!(
            !lobby.expire_leave(&alice, 1),
            "the old grace no longer applies"
        );
        assert_eq!(
            lobby.leave(&alice, Some(2)),
            PresenceChange::LeavePending(2)
        );
        assert!(!lobby.expire_leave(&alice, 1));
        assert!(lobby.expire_leave(&alice, 2));
        assert!(lobby.is_empty());
    }
}
