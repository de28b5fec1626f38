//! Hooks for the criterion benchmarks: a hub with connection handles but no sockets, so the
//! hot paths (register/unregister, publish, presence) can be measured alone.
//! Not part of the API.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::Message;

use crate::config::Config;
use crate::handle::{ConnHandle, ConnectionInfo};
use crate::history::Broadcast;
use crate::hub::{Hub, Join};
use crate::ids::{ConnectionId, LobbyCode, UserId};
use crate::skip::Skip;
use crate::stats::Counters;

/// A hub whose connections are bare queues.
#[derive(Debug)]
pub struct BenchHub {
    hub: Hub,
    lobby: LobbyCode,
    members: Vec<Arc<ConnHandle>>,
    queue: usize,
    next: u64,
}

impl BenchHub {
    /// A hub with `members` connections (distinct users) in one lobby, queues of `queue`.
    pub fn new(members: usize, queue: usize) -> Self {
        let mut config = Config::default();
        config.limits.max_connections = members + 16;
        config.limits.max_per_lobby = members + 16;
        config.limits.max_per_ip = members + 16;
        config.queue_capacity = queue;
        config.presence.events = false;
        let mut bench = Self {
            hub: Hub::new(
                Arc::new(config),
                Arc::new(Counters::default()),
                tokio_util::task::TaskTracker::new(),
            ),
            lobby: LobbyCode::parse("bench").expect("valid code"),
            members: Vec::with_capacity(members),
            queue,
            next: 0,
        };
        for _ in 0..members {
            let conn = bench.register();
            bench.members.push(conn);
        }
        bench
    }

    fn register(&mut self) -> Arc<ConnHandle> {
        self.next += 1;
        let seq = self.next;
        let info = ConnectionInfo {
            id: ConnectionId::new("bench", seq),
            user_id: UserId::parse(&format!("u{seq}")).expect("valid id"),
            protocol: 1,
            ip: IpAddr::from([127, 0, 0, 1]),
            connected_at: SystemTime::now(),
        };
        let handle = Arc::new(ConnHandle::new(seq, info, self.queue));
        self.hub
            .register(handle.clone(), Some(Join::new(&self.lobby)), None, |_| {
                Message::text("welcome")
            })
            .expect("limits leave room");
        handle
    }

    /// Registers one more connection and unregisters it again.
    pub fn register_unregister(&mut self) {
        let conn = self.register();
        self.hub.unregister(conn.seq);
    }

    /// Publishes a `message` frame encoded without an offset as production does (numbered,
    /// kept in the lobby's history, offered to every member). Returns the count.
    pub fn broadcast(&self, frame_without_offset: &str) -> usize {
        self.hub
            .publish(
                &self.lobby,
                Broadcast::Unnumbered(frame_without_offset),
                Skip::Nobody,
            )
            .map_or(0, |(reached, _)| reached)
    }

    /// Empties every member's queue (between benchmark iterations).
    pub fn drain(&mut self) {
        for conn in &self.members {
            conn.take_all(drop);
        }
    }

    /// The lobby's presence list, encoded as a `presence` frame.
    pub fn presence(&self) -> Message {
        self.hub.presence_frame(&self.lobby, None)
    }
}
