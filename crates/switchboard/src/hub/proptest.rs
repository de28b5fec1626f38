//! Property tests of the registry: random sequences of connects, further connections of a
//! user (replacements under `replace`), disconnects, kicks, late cleanups of replaced
//! connections and leave-grace expiries, under every [`UserPolicy`], with and without a leave
//! grace. A model kept beside the hub predicts every outcome; after every step:
//!
//! - every index agrees with every other ([`Hub::assert_consistent`]) and with the model;
//! - no limit (global, per lobby, per user, per IP) is exceeded;
//! - a refused connect carries the reason of the first limit it breaks (server, lobby, user,
//!   IP) and changes nothing; a replacement closes the older connections with 4003;
//! - presence (lists, per-lobby user counts) matches the model, and every remaining member
//!   heard exactly the `member_joined` / `member_left` events of the presence changes of its
//!   lobby (none for a replacement, none inside a grace);
//!
//! and at the end, once everything is removed and every grace has expired, the census is zero.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::Message;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::config::{Config, Limits};
use crate::handle::ConnectionInfo;
use crate::ids::ConnectionId;

const LOBBIES: u8 = 3;
const USERS: u8 = 9;
const IPS: u8 = 3;
/// Small enough that every limit is reached often, under every policy: 3 lobbies of 4 and 3 IPs
/// of 3 both exceed 7 connections, and 9 users with one connection each exceed them all.
const LIMITS: Limits = Limits {
    max_connections: 7,
    max_per_lobby: 4,
    max_per_user: 2,
    max_per_ip: 3,
    max_lobbies_per_connection: 4,
    max_rpc_in_flight: 8,
    ipv6_prefix: 64,
};

#[derive(Debug, Clone)]
enum Op {
    /// A new connection.
    Connect { lobby: u8, user: u8, ip: u8 },
    /// Another connection of the user of a live connection: a replacement under `replace`.
    Again { pick: Index, lobby: u8, ip: u8 },
    /// The connection ends (client close, error, stale...): its task unregisters it.
    Disconnect { pick: Index },
    /// The backend kicks one connection (4009), whose task then unregisters it.
    Kick { pick: Index },
    /// The backend kicks every connection of a user.
    KickUser { user: u8 },
    /// A replaced connection's task ends and unregisters it: must change nothing.
    LateCleanup { pick: Index },
    /// A pending leave's grace timer fires.
    Expire { pick: Index },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..LOBBIES, 0..USERS, 0..IPS)
            .prop_map(|(lobby, user, ip)| Op::Connect { lobby, user, ip }),
        2 => (any::<Index>(), 0..LOBBIES, 0..IPS)
            .prop_map(|(pick, lobby, ip)| Op::Again { pick, lobby, ip }),
        3 => any::<Index>().prop_map(|pick| Op::Disconnect { pick }),
        1 => any::<Index>().prop_map(|pick| Op::Kick { pick }),
        1 => (0..USERS).prop_map(|user| Op::KickUser { user }),
        1 => any::<Index>().prop_map(|pick| Op::LateCleanup { pick }),
        2 => any::<Index>().prop_map(|pick| Op::Expire { pick }),
    ]
}

struct Live {
    conn: Arc<ConnHandle>,
    lobby: u8,
    user: u8,
    ip: u8,
}

struct Pending {
    lobby: u8,
    user: u8,
    leave: PendingLeave,
}

type Presence = BTreeMap<u8, BTreeSet<u8>>;

struct Harness {
    hub: Hub,
    policy: UserPolicy,
    grace: bool,
    next_seq: u64,
    /// Registered connections, oldest first.
    live: Vec<Live>,
    /// Connections removed by a replacement; their tasks have not cleaned up yet.
    replaced: Vec<Arc<ConnHandle>>,
    /// Users inside a leave grace: (lobby, user) -> generation.
    leaving: BTreeMap<(u8, u8), u64>,
    pending: Vec<Pending>,
}

fn lobby_code(lobby: u8) -> LobbyCode {
    LobbyCode::parse(&format!("l{lobby}")).expect("valid lobby code")
}

fn user_id(user: u8) -> UserId {
    UserId::parse(&format!("u{user}")).expect("valid user id")
}

impl Harness {
    fn new(policy: UserPolicy, grace: bool) -> Self {
        let mut config = Config {
            user_policy: policy,
            limits: LIMITS,
            ..Config::default()
        };
        if grace {
            // The hub only asks whether there is a grace; the test expires leaves itself.
            config.presence.leave_grace = Duration::from_secs(5);
        }
        Self {
            hub: Hub::new(
                Arc::new(config),
                Arc::default(),
                tokio_util::task::TaskTracker::new(),
            ),
            policy,
            grace,
            next_seq: 0,
            live: Vec::new(),
            replaced: Vec::new(),
            leaving: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    fn user_max(&self) -> usize {
        match self.policy {
            UserPolicy::Replace | UserPolicy::Reject => 1,
            UserPolicy::Multi => LIMITS.max_per_user,
        }
    }

    /// Who is present where, by the model: users with a live connection or inside a grace.
    fn presence(&self) -> Presence {
        let mut presence = Presence::new();
        for l in &self.live {
            presence.entry(l.lobby).or_default().insert(l.user);
        }
        for &(lobby, user) in self.leaving.keys() {
            presence.entry(lobby).or_default().insert(user);
        }
        presence
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let before = self.presence();
        let mut new_seq = None;
        match *op {
            Op::Connect { lobby, user, ip } => new_seq = self.connect(lobby, user, ip)?,
            Op::Again { pick, lobby, ip } => {
                if !self.live.is_empty() {
                    let user = self.live[pick.index(self.live.len())].user;
                    new_seq = self.connect(lobby, user, ip)?;
                }
            }
            Op::Disconnect { pick } => {
                if !self.live.is_empty() {
                    self.unregister(pick.index(self.live.len()))?;
                }
            }
            Op::Kick { pick } => {
                if !self.live.is_empty() {
                    let i = pick.index(self.live.len());
                    prop_assert!(self.live[i].conn.close(DisconnectReason::Kicked));
                    self.unregister(i)?;
                }
            }
            Op::KickUser { user } => {
                while let Some(i) = self.live.iter().position(|l| l.user == user) {
                    prop_assert!(self.live[i].conn.close(DisconnectReason::Kicked));
                    self.unregister(i)?;
                }
            }
            Op::LateCleanup { pick } => {
                if !self.replaced.is_empty() {
                    let old = self.replaced.swap_remove(pick.index(self.replaced.len()));
                    prop_assert!(self.hub.unregister(old.seq).is_empty());
                }
            }
            Op::Expire { pick } => {
                if !self.pending.is_empty() {
                    let p = self.pending.swap_remove(pick.index(self.pending.len()));
                    self.hub.expire_leave(&p.leave);
                    if self.leaving.get(&(p.lobby, p.user)) == Some(&p.leave.generation) {
                        self.leaving.remove(&(p.lobby, p.user));
                    }
                }
            }
        }
        self.check(&before, new_seq)
    }

    /// Connects, predicting the outcome first. Returns the new connection's seq if accepted.
    fn connect(&mut self, lobby: u8, user: u8, ip: u8) -> Result<Option<u64>, TestCaseError> {
        let replaced: Vec<usize> = match self.policy {
            UserPolicy::Replace => (0..self.live.len())
                .filter(|&i| self.live[i].user == user)
                .collect(),
            UserPolicy::Multi | UserPolicy::Reject => Vec::new(),
        };
        let count = |pred: &dyn Fn(&Live) -> bool| {
            let now = self.live.iter().filter(|l| pred(l)).count();
            let freed = replaced.iter().filter(|&&i| pred(&self.live[i])).count();
            now - freed + 1
        };
        let expected = if count(&|_| true) > LIMITS.max_connections {
            Err(DisconnectReason::ServerFull)
        } else if count(&|l| l.lobby == lobby) > LIMITS.max_per_lobby {
            Err(DisconnectReason::LobbyFull)
        } else if count(&|l| l.user == user) > self.user_max() {
            Err(DisconnectReason::UserLimit)
        } else if count(&|l| l.ip == ip) > LIMITS.max_per_ip {
            Err(DisconnectReason::IpLimit)
        } else {
            Ok(())
        };

        self.next_seq += 1;
        let seq = self.next_seq;
        let info = ConnectionInfo {
            id: ConnectionId::new("p", seq),
            user_id: user_id(user),
            protocol: 1,
            ip: IpAddr::from([10, 0, 0, ip]),
            connected_at: SystemTime::now(),
        };
        let conn = Arc::new(ConnHandle::new(seq, info, 1024));
        let code = lobby_code(lobby);
        let outcome = self
            .hub
            .register(conn.clone(), Some(Join::new(&code)), None, |_| {
                Message::text("welcome")
            });
        prop_assert_eq!(outcome, expected, "connect l{} u{} ip{}", lobby, user, ip);
        if outcome.is_err() {
            for l in &self.live {
                prop_assert_eq!(l.conn.reason(), None, "a refused connect closed nobody");
            }
            return Ok(None);
        }
        // Remove the replaced ones, newest index first so the others stay put.
        for &i in replaced.iter().rev() {
            let old = self.live.remove(i);
            prop_assert_eq!(old.conn.reason(), Some(DisconnectReason::Replaced));
            self.replaced.push(old.conn);
        }
        for l in &self.live {
            prop_assert_eq!(
                l.conn.reason(),
                None,
                "only the user's older connections close"
            );
        }
        self.leaving.remove(&(lobby, user));
        self.live.push(Live {
            conn,
            lobby,
            user,
            ip,
        });
        Ok(Some(seq))
    }

    /// The connection at `i` ends and its task unregisters it.
    fn unregister(&mut self, i: usize) -> Result<(), TestCaseError> {
        let gone = self.live.remove(i);
        let mut pending = self.hub.unregister(gone.conn.seq);
        prop_assert!(pending.len() <= 1, "a v1 connection is in one lobby");
        let pending = pending.pop();
        let last_here = !self
            .live
            .iter()
            .any(|l| l.lobby == gone.lobby && l.user == gone.user);
        if self.grace && last_here {
            let leave = pending.ok_or_else(|| TestCaseError::fail("no pending leave"))?;
            prop_assert_eq!(&leave.lobby, &lobby_code(gone.lobby));
            prop_assert_eq!(&leave.user, &user_id(gone.user));
            self.leaving
                .insert((gone.lobby, gone.user), leave.generation);
            self.pending.push(Pending {
                lobby: gone.lobby,
                user: gone.user,
                leave,
            });
        } else {
            prop_assert!(
                pending.is_none(),
                "a leave without a grace, or not the last tab"
            );
        }
        // Unregistering twice changes nothing.
        prop_assert!(self.hub.unregister(gone.conn.seq).is_empty());
        Ok(())
    }

    /// Every invariant, after a step that changed presence from `before`.
    fn check(&mut self, before: &Presence, new_seq: Option<u64>) -> Result<(), TestCaseError> {
        self.hub.assert_consistent();
        let after = self.presence();

        // The hub holds exactly the model's connections.
        let census = self.hub.census();
        prop_assert_eq!(census.connections, self.live.len());
        let users: BTreeSet<u8> = self.live.iter().map(|l| l.user).collect();
        prop_assert_eq!(census.users, users.len());
        prop_assert_eq!(census.lobbies, after.len());
        for l in &self.live {
            let found = self.hub.connection(l.conn.seq);
            prop_assert!(found.is_some_and(|c| Arc::ptr_eq(&c, &l.conn)));
        }
        for old in &self.replaced {
            prop_assert!(self.hub.connection(old.seq).is_none());
        }

        // No limit is exceeded.
        prop_assert!(census.connections <= LIMITS.max_connections);
        for user in 0..USERS {
            let conns = self.hub.user_connections(user_id(user).as_str());
            prop_assert!(
                conns.len() <= self.user_max(),
                "u{} has {}",
                user,
                conns.len()
            );
            let expected: BTreeSet<u64> = self
                .live
                .iter()
                .filter(|l| l.user == user)
                .map(|l| l.conn.seq)
                .collect();
            let seqs: BTreeSet<u64> = conns.iter().map(|c| c.seq).collect();
            prop_assert_eq!(seqs, expected);
        }
        for ip in 0..IPS {
            let n = self.live.iter().filter(|l| l.ip == ip).count();
            prop_assert!(n <= LIMITS.max_per_ip);
        }

        // Lobbies and presence.
        let expected_lobbies: Vec<(LobbyCode, usize, usize)> = after
            .iter()
            .map(|(&lobby, users)| {
                let conns = self.live.iter().filter(|l| l.lobby == lobby).count();
                (lobby_code(lobby), conns, users.len())
            })
            .collect();
        let lobbies = self.hub.lobbies();
        for (_, conns, _) in &lobbies {
            prop_assert!(*conns <= LIMITS.max_per_lobby);
        }
        prop_assert_eq!(lobbies, expected_lobbies);
        for lobby in 0..LOBBIES {
            let expected: Vec<UserId> = after
                .get(&lobby)
                .map(|users| users.iter().map(|&u| user_id(u)).collect())
                .unwrap_or_default();
            prop_assert_eq!(self.hub.presence(&lobby_code(lobby)), expected);
        }

        // Events: each member heard exactly its lobby's presence changes; a new one, welcome.
        let empty = BTreeSet::new();
        for l in &mut self.live {
            let mut frames: Vec<String> = Vec::new();
            l.conn.take_all(|m| {
                frames.push(m.into_text().map(|t| t.to_string()).unwrap_or_default())
            });
            if Some(l.conn.seq) == new_seq {
                prop_assert_eq!(frames, vec!["welcome".to_string()]);
                continue;
            }
            let was = before.get(&l.lobby).unwrap_or(&empty);
            let is = after.get(&l.lobby).unwrap_or(&empty);
            let code = lobby_code(l.lobby);
            let mut expected: Vec<String> = is
                .difference(was)
                .map(|&u| ("member_joined", u))
                .chain(was.difference(is).map(|&u| ("member_left", u)))
                .map(|(kind, u)| {
                    format!(r#"{{"type":"{kind}","lobby":"{code}","user_id":"u{u}"}}"#)
                })
                .collect();
            frames.sort();
            expected.sort();
            prop_assert_eq!(frames, expected, "events heard by {}", l.conn.info.id);
        }
        Ok(())
    }

    /// Removes everything, expires every grace, and checks that nothing is left.
    fn teardown(mut self) -> Result<(), TestCaseError> {
        while !self.live.is_empty() {
            let before = self.presence();
            self.unregister(0)?;
            self.check(&before, None)?;
        }
        for old in std::mem::take(&mut self.replaced) {
            prop_assert!(self.hub.unregister(old.seq).is_empty());
        }
        while let Some(p) = self.pending.pop() {
            let before = self.presence();
            self.hub.expire_leave(&p.leave);
            if self.leaving.get(&(p.lobby, p.user)) == Some(&p.leave.generation) {
                self.leaving.remove(&(p.lobby, p.user));
            }
            self.check(&before, None)?;
        }
        prop_assert!(
            self.leaving.is_empty(),
            "every grace ends with its own timer"
        );
        let census = self.hub.census();
        prop_assert_eq!(
            (census.connections, census.lobbies, census.users),
            (0, 0, 0)
        );
        prop_assert!(self.hub.lobbies().is_empty());
        Ok(())
    }
}

fn run(policy: UserPolicy, grace: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new(policy, grace);
    for op in ops {
        harness.apply(op)?;
    }
    harness.teardown()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn replace_without_grace(ops in prop::collection::vec(op(), 1..80)) {
        run(UserPolicy::Replace, false, &ops)?;
    }

    #[test]
    fn replace_with_grace(ops in prop::collection::vec(op(), 1..80)) {
        run(UserPolicy::Replace, true, &ops)?;
    }

    #[test]
    fn multi_without_grace(ops in prop::collection::vec(op(), 1..80)) {
        run(UserPolicy::Multi, false, &ops)?;
    }

    #[test]
    fn multi_with_grace(ops in prop::collection::vec(op(), 1..80)) {
        run(UserPolicy::Multi, true, &ops)?;
    }

    #[test]
    fn reject_without_grace(ops in prop::collection::vec(op(), 1..80)) {
        run(UserPolicy::Reject, false, &ops)?;
    }

    #[test]
    fn reject_with_grace(ops in prop::collection::vec(op(), 1..80)) {
        run(UserPolicy::Reject, true, &ops)?;
    }
}
