//! Property tests of memberships (protocol v2): random sequences of lobby-less connects, joins,
//! leaves and disconnects of connections in several lobbies. A model beside the hub predicts
//! every join's outcome (joined, already in, lobby full, too many lobbies); after every step:
//!
//! - every index agrees with every other ([`Hub::assert_consistent`]), and the membership
//!   count with the model;
//! - no lobby holds more than `max_per_lobby` connections, no connection is in more than
//!   `max_lobbies_per_connection` lobbies;
//! - each lobby's presence list is the users of its members in the model;
//!
//! and at the end, once every connection is gone, nothing is left.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::Message;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::config::{Config, Limits};
use crate::handle::ConnectionInfo;
use crate::ids::ConnectionId;

const LOBBIES: u8 = 4;
const USERS: u8 = 4;
const LIMITS: Limits = Limits {
    max_connections: 8,
    max_per_lobby: 3,
    max_per_user: 8,
    max_per_ip: 8,
    max_lobbies_per_connection: 2,
    max_rpc_in_flight: 8,
    ipv6_prefix: 64,
};

#[derive(Debug, Clone)]
enum Op {
    Connect { user: u8 },
    Join { pick: Index, lobby: u8 },
    Leave { pick: Index, lobby: u8 },
    Disconnect { pick: Index },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..USERS).prop_map(|user| Op::Connect { user }),
        5 => (any::<Index>(), 0..LOBBIES).prop_map(|(pick, lobby)| Op::Join { pick, lobby }),
        2 => (any::<Index>(), 0..LOBBIES).prop_map(|(pick, lobby)| Op::Leave { pick, lobby }),
        1 => any::<Index>().prop_map(|pick| Op::Disconnect { pick }),
    ]
}

struct Live {
    conn: Arc<ConnHandle>,
    user: u8,
    lobbies: BTreeSet<u8>,
}

fn lobby_code(lobby: u8) -> LobbyCode {
    LobbyCode::parse(&format!("l{lobby}")).expect("valid lobby code")
}

struct Harness {
    hub: Hub,
    next_seq: u64,
    live: Vec<Live>,
}

impl Harness {
    fn new() -> Self {
        let mut config = Config {
            user_policy: UserPolicy::Multi,
            limits: LIMITS,
            ..Config::default()
        };
        config.presence.events = false;
        Self {
            hub: Hub::new(
                Arc::new(config),
                Arc::default(),
                tokio_util::task::TaskTracker::new(),
            ),
            next_seq: 0,
            live: Vec::new(),
        }
    }

    fn members(&self, lobby: u8) -> usize {
        self.live
            .iter()
            .filter(|l| l.lobbies.contains(&lobby))
            .count()
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Connect { user } => {
                if self.live.len() == LIMITS.max_connections {
                    return Ok(());
                }
                self.next_seq += 1;
                let info = ConnectionInfo {
                    id: ConnectionId::new("m", self.next_seq),
                    user_id: UserId::parse(&format!("u{user}")).expect("valid"),
                    protocol: 2,
                    ip: IpAddr::from([10, 0, 0, 1]),
                    connected_at: SystemTime::now(),
                };
                let conn = Arc::new(ConnHandle::new(self.next_seq, info, 1024));
                let registered = self
                    .hub
                    .register(conn.clone(), None, None, |_| Message::text("welcome"));
                prop_assert_eq!(registered, Ok(()));
                self.live.push(Live {
                    conn,
                    user,
                    lobbies: BTreeSet::new(),
                });
            }
            Op::Join { pick, lobby } => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let i = pick.index(self.live.len());
                let expected = if self.live[i].lobbies.contains(&lobby) {
                    Ok(())
                } else if self.live[i].lobbies.len() >= LIMITS.max_lobbies_per_connection {
                    Err(JoinRefused::TooManyLobbies)
                } else if self.members(lobby) >= LIMITS.max_per_lobby {
                    Err(JoinRefused::LobbyFull)
                } else {
                    Ok(())
                };
                let code = lobby_code(lobby);
                let joined = self.hub.join(self.live[i].conn.seq, Join::new(&code), None);
                prop_assert_eq!(joined, expected, "join l{}", lobby);
                if joined.is_ok() {
                    self.live[i].lobbies.insert(lobby);
                }
            }
            Op::Leave { pick, lobby } => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let i = pick.index(self.live.len());
                let was_in = self.hub.leave_lobby(
                    self.live[i].conn.seq,
                    &lobby_code(lobby),
                    LeftReason::Left,
                    None,
                    true,
                );
                prop_assert_eq!(was_in, self.live[i].lobbies.remove(&lobby));
            }
            Op::Disconnect { pick } => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let gone = self.live.remove(pick.index(self.live.len()));
                prop_assert!(self.hub.unregister(gone.conn.seq).is_empty(), "no grace");
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        self.hub.assert_consistent();
        let census = self.hub.census();
        let memberships: usize = self.live.iter().map(|l| l.lobbies.len()).sum();
        prop_assert_eq!(census.connections, self.live.len());
        prop_assert_eq!(census.memberships, memberships);
        for lobby in 0..LOBBIES {
            prop_assert!(self.members(lobby) <= LIMITS.max_per_lobby);
            let users: BTreeSet<UserId> = self
                .live
                .iter()
                .filter(|l| l.lobbies.contains(&lobby))
                .map(|l| UserId::parse(&format!("u{}", l.user)).expect("valid"))
                .collect();
            let listed: BTreeSet<UserId> =
                self.hub.presence(&lobby_code(lobby)).into_iter().collect();
            prop_assert_eq!(listed, users, "presence of l{}", lobby);
        }
        for live in &self.live {
            prop_assert!(live.lobbies.len() <= LIMITS.max_lobbies_per_connection);
            let mut lobbies: Vec<String> = self
                .hub
                .lobbies_of(live.conn.seq)
                .iter()
                .map(|l| l.as_str().to_owned())
                .collect();
            lobbies.sort();
            let expected: Vec<String> = live.lobbies.iter().map(|l| format!("l{l}")).collect();
            prop_assert_eq!(lobbies, expected);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memberships_follow_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut harness = Harness::new();
        for op in ops {
            harness.step(op)?;
        }
        while let Some(gone) = harness.live.pop() {
            harness.hub.unregister(gone.conn.seq);
        }
        let census = harness.hub.census();
        prop_assert_eq!(
            (census.connections, census.lobbies, census.users, census.memberships),
            (0, 0, 0, 0)
        );
    }
}
