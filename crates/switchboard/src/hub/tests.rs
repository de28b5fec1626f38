//! Registry logic without sockets: limits, policies and presence bookkeeping, checked against
//! the hub's own consistency invariant after every step.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::Message;

use super::*;
use crate::config::Config;
use crate::handle::ConnectionInfo;
use crate::ids::ConnectionId;

struct Fixture {
    hub: Hub,
    next: u64,
    conns: HashMap<u64, Arc<ConnHandle>>,
}

impl Fixture {
    fn new(tune: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        tune(&mut config);
        Self {
            hub: Hub::new(
                Arc::new(config),
                Arc::default(),
                tokio_util::task::TaskTracker::new(),
            ),
            next: 0,
            conns: HashMap::new(),
        }
    }

    fn connect(
        &mut self,
        lobby: &str,
        user: &str,
        ip: u8,
    ) -> Result<Arc<ConnHandle>, DisconnectReason> {
        self.next += 1;
        let info = ConnectionInfo {
            id: ConnectionId::new("t", self.next),
            user_id: UserId::parse(user).unwrap(),
            protocol: 1,
            ip: IpAddr::from([10, 0, 0, ip]),
            connected_at: SystemTime::now(),
        };
        let conn = Arc::new(ConnHandle::new(self.next, info, 8));
        let lobby = LobbyCode::parse(lobby).unwrap();
        self.hub
            .register(conn.clone(), Some(Join::new(&lobby)), None, |_| {
                Message::text("welcome")
            })
            .map(|()| {
                self.conns.insert(self.next, conn.clone());
                conn
            })
    }

    /// Frames queued for a connection so far, as text.
    fn drain(&mut self, seq: u64) -> Vec<String> {
        let mut frames = Vec::new();
        self.conns[&seq].take_all(|m| frames.extend(m.into_text().ok().map(|t| t.to_string())));
        frames
    }
}

#[test]
fn limits_are_released_on_unregister() {
    let mut f = Fixture::new(|c| {
        c.limits.max_connections = 3;
        c.limits.max_per_lobby = 2;
    });
    let a = f.connect("l1", "a", 1).unwrap();
    f.connect("l1", "b", 1).unwrap();
    assert_eq!(
        f.connect("l1", "c", 1).unwrap_err(),
        DisconnectReason::LobbyFull
    );
    f.connect("l2", "c", 1).unwrap();
    assert_eq!(
        f.connect("l3", "d", 1).unwrap_err(),
        DisconnectReason::ServerFull
    );
    f.hub.unregister(a.seq);
    f.connect("l1", "d", 1).unwrap();
    f.hub.assert_consistent();
}

#[test]
fn ip_and_user_limits() {
    let mut f = Fixture::new(|c| {
        c.limits.max_per_ip = 2;
        c.user_policy = UserPolicy::Multi;
        c.limits.max_per_user = 2;
    });
    f.connect("l1", "a", 1).unwrap();
    f.connect("l1", "b", 1).unwrap();
    assert_eq!(
        f.connect("l1", "c", 1).unwrap_err(),
        DisconnectReason::IpLimit
    );
    f.connect("l1", "a", 2).unwrap();
    assert_eq!(
        f.connect("l2", "a", 3).unwrap_err(),
        DisconnectReason::UserLimit
    );
    f.hub.assert_consistent();
}

#[test]
fn replace_frees_the_old_slots_and_keeps_presence_quiet() {
    let mut f = Fixture::new(|c| {
        c.limits.max_connections = 2;
        c.limits.max_per_lobby = 2;
    });
    let watcher = f.connect("l1", "w", 1).unwrap();
    let old = f.connect("l1", "u", 1).unwrap();
    f.drain(watcher.seq);
    // The server is full, but replacing u's connection needs no new slot.
    let new = f.connect("l1", "u", 2).unwrap();
    assert_eq!(old.reason(), Some(DisconnectReason::Replaced));
    assert!(
        f.drain(watcher.seq).is_empty(),
        "no leave/join for a replacement"
    );
    // The old connection's own cleanup later is a no-op.
    assert!(f.hub.unregister(old.seq).is_empty());
    assert_eq!(f.hub.user_connections("u").len(), 1);
    assert_eq!(f.hub.user_connections("u")[0].seq, new.seq);
    f.hub.assert_consistent();
}

#[test]
fn join_and_leave_events_fire_once_per_user() {
    let mut f = Fixture::new(|c| c.user_policy = UserPolicy::Multi);
    let w = f.connect("l1", "w", 1).unwrap();
    let t1 = f.connect("l1", "u", 1).unwrap();
    let t2 = f.connect("l1", "u", 1).unwrap();
    let seen = f.drain(w.seq);
    assert_eq!(seen.len(), 2, "welcome and one join: {seen:?}");
    assert!(seen[1].contains("member_joined"));
    f.hub.unregister(t1.seq);
    assert!(f.drain(w.seq).is_empty(), "a tab remains");
    f.hub.unregister(t2.seq);
    let seen = f.drain(w.seq);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("member_left"));
    f.hub.assert_consistent();
}

#[test]
fn random_sequences_keep_every_index_consistent() {
    for (seed, policy) in [
        (1, UserPolicy::Replace),
        (2, UserPolicy::Multi),
        (3, UserPolicy::Reject),
    ] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut f = Fixture::new(|c| {
            c.user_policy = policy;
            c.limits.max_connections = 12;
            c.limits.max_per_lobby = 5;
            c.limits.max_per_ip = 6;
            c.limits.max_per_user = 3;
        });
        let mut live: Vec<Arc<ConnHandle>> = Vec::new();
        for _ in 0..2_000 {
            if rng.bool() || live.is_empty() {
                let lobby = format!("l{}", rng.u8(0..4));
                let user = format!("u{}", rng.u8(0..6));
                if let Ok(conn) = f.connect(&lobby, &user, rng.u8(0..3)) {
                    live.push(conn);
                }
            } else {
                let conn = live.swap_remove(rng.usize(..live.len()));
                f.hub.unregister(conn.seq);
            }
            live.retain(|c| c.reason() != Some(DisconnectReason::Replaced));
            f.hub.assert_consistent();
            let census = f.hub.census();
            assert_eq!(census.connections, live.len());
            assert!(census.connections <= 12);
            for (_, conns, _) in f.hub.lobbies() {
                assert!(conns <= 5);
            }
        }
        for conn in live {
            f.hub.unregister(conn.seq);
        }
        let census = f.hub.census();
        assert_eq!(
            (census.connections, census.lobbies, census.users),
            (0, 0, 0)
        );
    }
}

/// A join storm fills a member's queue: the member is not closed for it; its events are
/// dropped and it is marked to get a fresh presence list instead.
#[test]
fn a_join_storm_never_closes_members() {
    let mut f = Fixture::new(|c| c.limits.max_per_lobby = 100);
    let watcher = f.connect("l1", "w", 1).unwrap(); // a queue of 8, never drained here
    for i in 0..30 {
        f.connect("l1", &format!("u{i}"), 1).unwrap();
    }
    assert_eq!(watcher.reason(), None, "not closed as a slow consumer");
    assert!(
        watcher
            .presence_behind
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(f.drain(watcher.seq).len(), 8, "what fitted stays queued");
    f.hub.assert_consistent();
}
