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

/// The offsets of the `message` frames among `frames`, and whether a `recovered` frame with
/// `ok: false` came.
fn offsets(frames: &[String]) -> (Vec<u64>, bool) {
    let mut offsets = Vec::new();
    let mut lost = false;
    for frame in frames {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(frame) else {
            continue;
        };
        match value["type"].as_str() {
            Some("message") => offsets.push(value["offset"].as_u64().unwrap()),
            Some("recovered") => lost |= value["ok"] == false,
            _ => {}
        }
    }
    (offsets, lost)
}

fn publish(f: &Fixture, lobby: &str, n: u64) -> Result<(usize, u64), Shed> {
    let lobby = LobbyCode::parse(lobby).unwrap();
    let frame = format!(r#"{{"type":"message","data":{n}}}"#);
    f.hub
        .publish(&lobby, Broadcast::Unnumbered(&frame), Skip::Nobody)
}

/// The server could not keep up (the member's socket takes bytes, its queue is full anyway):
/// the member is not closed; publishes to its lobby are shed until it has caught up from the
/// history, and it ends up with every broadcast, in order, none twice.
#[test]
fn a_member_the_server_left_behind_catches_up_and_publishes_are_shed_meanwhile() {
    let mut f = Fixture::new(|_| {});
    let reader = f.connect("l1", "r", 1).unwrap(); // a queue of 8: welcome + 7 broadcasts
    let mut shed = 0;
    for n in 0..20 {
        if publish(&f, "l1", n).is_err() {
            shed += 1;
        }
    }
    assert_eq!(reader.reason(), None, "never closed");
    assert_eq!(
        shed, 12,
        "the 8th broadcast fell behind; the 12 after it were shed"
    );
    assert!(reader.lagging.load(std::sync::atomic::Ordering::Relaxed));
    let mut got = f.drain(reader.seq);
    f.hub.catch_up(&reader);
    got.extend(f.drain(reader.seq));
    let (seen, lost) = offsets(&got);
    assert_eq!(seen, (1..=8).collect::<Vec<_>>());
    assert!(!lost);
    // Live again: the next publish goes through and reaches it.
    assert_eq!(publish(&f, "l1", 99).unwrap(), (1, 9));
    assert_eq!(offsets(&f.drain(reader.seq)).0, [9]);
    let counters = &f.hub.counters;
    let stats = crate::stats::Stats::new(f.hub.census(), 1, counters);
    assert_eq!(
        (
            stats.shed_publishes,
            stats.shed_deliveries,
            stats.lagging_members
        ),
        (12, 1, 0)
    );
    f.hub.assert_consistent();
}

/// A member whose socket stopped taking bytes is behind without shedding anyone's publishes;
/// past the grace, the next broadcast for it closes it as a slow consumer.
#[test]
fn a_member_that_stopped_reading_is_closed_after_the_grace_and_sheds_nothing() {
    use std::time::Duration;
    let mut f = Fixture::new(|c| c.slow_grace = Duration::from_secs(2));
    let stuck = f.connect("l1", "s", 1).unwrap();
    let reader = f.connect("l1", "r", 2).unwrap();
    // Not reading for longer than `READING`, not yet for the grace.
    stuck.blocked_since_for_test(Duration::from_secs(1));
    for n in 0..7 {
        publish(&f, "l1", n).expect("nobody presses");
        f.drain(reader.seq);
    }
    assert_eq!(stuck.reason(), None, "within the grace");
    assert!(stuck.lagging.load(std::sync::atomic::Ordering::Relaxed));
    stuck.blocked_since_for_test(Duration::from_secs(3));
    publish(&f, "l1", 8).expect("nobody presses");
    assert_eq!(stuck.reason(), Some(DisconnectReason::SlowConsumer));
    assert_eq!(reader.reason(), None);
    assert_eq!(offsets(&f.drain(reader.seq)).0, [8]);
    f.hub.unregister(stuck.seq);
    let stats = crate::stats::Stats::new(f.hub.census(), 1, &f.hub.counters);
    assert_eq!(
        stats.lagging_members, 0,
        "a member that leaves is behind no more"
    );
    f.hub.assert_consistent();
}

/// Behind further than the history reaches: `recovered` with `ok: false`, then live traffic.
#[test]
fn a_member_behind_past_the_history_is_told_and_goes_live() {
    let mut f = Fixture::new(|c| c.history.size = 3);
    let slow = f.connect("l1", "s", 1).unwrap();
    // Not reading (within the grace): publishes go on, past what the history keeps.
    slow.blocked_since_for_test(std::time::Duration::from_secs(1));
    for n in 0..15 {
        publish(&f, "l1", n).expect("nobody presses");
    }
    slow.set_blocked(false);
    let mut got = f.drain(slow.seq);
    f.hub.catch_up(&slow);
    got.extend(f.drain(slow.seq));
    let (seen, lost) = offsets(&got);
    assert_eq!(
        seen,
        (1..=7).collect::<Vec<_>>(),
        "what was queued, no more"
    );
    assert!(lost, "told that the rest is lost");
    publish(&f, "l1", 16).unwrap();
    assert_eq!(offsets(&f.drain(slow.seq)).0, [16], "live again");
    f.hub.assert_consistent();
}

/// Another node's members are behind: publishes entering here are shed for a while, and
/// broadcasts the cluster numbered still reach this node's members.
#[test]
fn publishes_are_shed_while_another_node_says_its_members_are_behind() {
    let mut f = Fixture::new(|_| {});
    let member = f.connect("l1", "m", 1).unwrap();
    f.hub.pressed_elsewhere(LobbyCode::parse("l1").unwrap());
    assert_eq!(publish(&f, "l1", 1), Err(Shed));
    assert!(
        publish(&f, "l2", 1).is_ok(),
        "other lobbies are not pressed"
    );
    let numbered = Broadcast::Numbered {
        epoch: "e",
        offset: 5,
        frame: Message::text(r#"{"type":"message","offset":5}"#),
    };
    let lobby = LobbyCode::parse("l1").unwrap();
    assert_eq!(f.hub.publish(&lobby, numbered, Skip::Nobody), Ok((1, 5)));
    assert_eq!(offsets(&f.drain(member.seq)).0, [5]);
}

/// Several broadcasts published while one read's frames are dispatched (a corked batch) wake
/// each member once, at the batch's end; a publish outside a batch wakes at once.
#[test]
fn broadcasts_of_one_read_batch_wake_each_member_once() {
    use std::task::Waker;

    use crate::handle::testing::WakeCount;

    let mut f = Fixture::new(|_| {});
    let conns: Vec<_> = (0..3)
        .map(|i| f.connect("l1", &format!("m{i}"), 1).unwrap())
        .collect();
    let members: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            f.drain(conn.seq); // the welcome, join events
            let count = Arc::new(WakeCount::default());
            conn.set_waker(&Waker::from(count.clone()));
            (conn, count)
        })
        .collect();
    {
        let _batch = crate::cork::cork();
        for n in 0..4 {
            assert_eq!(publish(&f, "l1", n).unwrap().0, 3);
        }
        assert!(members.iter().all(|(_, count)| count.get() == 0));
    }
    for (conn, count) in &members {
        assert_eq!(count.get(), 1, "one wake for four broadcasts");
        assert_eq!(f.drain(conn.seq).len(), 4);
    }
    publish(&f, "l1", 4).unwrap();
    assert!(members.iter().all(|(_, count)| count.get() == 2));
}
