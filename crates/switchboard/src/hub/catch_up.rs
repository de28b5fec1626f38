//! Members that fall behind, and how they catch up without being closed.
//!
//! A full queue means one of two things. Either the client stopped reading (its socket has
//! stopped taking bytes): after `slow_grace` it is closed as a slow consumer. Or the server
//! itself cannot keep up (the socket takes bytes, the writer just has not run): closing the
//! client would punish it for the server's overload and start a reconnect storm. Either way
//! the broadcasts it cannot take now are not queued; they wait in the lobby's history, and
//! the member gets them from there once its queue has drained, then live traffic again (one
//! lock orders the switch, so nothing is missed or repeated). While members that are reading
//! (their sockets take bytes: the writer, not the client, is late) are behind in a lobby, new publishes
//! to it are shed where they enter (the client is told `rate_limited`, the API caller 503), so
//! their backlog cannot outgrow the history; in cluster mode the other nodes are told, and shed
//! them too. A member that stopped reading sheds nothing: it falls further behind (told
//! `recovered` with `ok: false` if it comes back past the history) or is closed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::lobby::{Lag, Lobby};
use super::{Hub, Registry};
use crate::config::SlowConsumerPolicy;
use crate::disconnect::DisconnectReason;
use crate::handle::{ConnHandle, Offer};
use crate::history::CatchUp;
use crate::ids::LobbyCode;
use crate::protocol::{ServerFrame, text};

/// A publish refused where it entered: members of its lobby are behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shed;

/// Where [`Hub`] sends word that a lobby's members are behind here (cluster mode).
pub(crate) struct PressureOut(Box<dyn Fn(&LobbyCode) + Send + Sync>);

impl std::fmt::Debug for PressureOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PressureOut")
    }
}

/// How often the other nodes are reminded while a lobby's members stay behind.
const RETELL_EVERY: Duration = Duration::from_millis(250);
/// How long a reminder from another node holds: it lapses by itself when no reminder follows
/// (the members caught up, or the node died).
const PRESSURE_HOLDS: Duration = Duration::from_secs(1);
/// Lobbies pressed elsewhere that this node remembers (a bound on what other nodes can make
/// it keep).
const MAX_PRESSED_ELSEWHERE: usize = 65_536;

impl Hub {
    /// `conn`'s queue was full when the broadcast at `offset` came. Closes it if its socket
    /// has not taken bytes for the grace; otherwise it is behind from `offset` on.
    pub(super) fn fell_behind(&self, conn: &ConnHandle, offset: u64) -> Option<Lag> {
        if self.config.on_full == SlowConsumerPolicy::Drop {
            self.counters.overflow(true);
            return None;
        }
        if self.close_if_stuck(conn) {
            return None;
        }
        self.counters.shed_delivery();
        self.counters.lagging(true);
        conn.lagging.store(true, Ordering::Relaxed);
        Some(Lag::behind(offset))
    }

    /// A broadcast skipped for a member already behind.
    pub(super) fn still_behind(&self, conn: &ConnHandle) {
        if !self.close_if_stuck(conn) {
            self.counters.shed_delivery();
        }
    }

    /// Closes `conn` as a slow consumer if its socket has not taken bytes for the grace;
    /// whether it did (or it was closing already).
    pub(super) fn close_if_stuck(&self, conn: &ConnHandle) -> bool {
        if conn.reason().is_some() {
            return true;
        }
        let stuck = conn
            .blocked_for()
            .is_some_and(|blocked| blocked >= self.config.slow_grace);
        if stuck && conn.close(DisconnectReason::SlowConsumer) {
            self.counters.overflow(false);
        }
        stuck
    }

    pub(super) fn set_lag(&self, lobby: &mut Lobby, pos: usize, lag: Lag) {
        let old = lobby.set_lag(pos, lag);
        if old.is_behind() && !lag.is_behind() {
            self.counters.lagging(false);
        }
    }

    /// Gives a connection that is behind the broadcasts it missed, from each lobby's history,
    /// as far as its queue has room; a lobby it has caught up in sends it live traffic again.
    /// Called by the connection's task once its queue has drained. A lobby whose history no
    /// longer reaches back far enough gets `recovered` with `ok: false`, then live traffic.
    pub(crate) fn catch_up(&self, conn: &ConnHandle) {
        let mut guard = self.lock();
        let reg = &mut *guard;
        let Some(entry) = reg.conns.get(&conn.seq) else {
            return;
        };
        let config = &self.config.history;
        let mut behind = false;
        for membership in &entry.lobbies {
            let Some(lobby) = reg.lobbies.get_mut(&membership.lobby) else {
                continue;
            };
            let lag = lobby.lag[membership.pos];
            if !lag.is_behind() {
                continue;
            }
            let outcome = reg
                .histories
                .update(&membership.lobby, config, |history, _| {
                    history.catch_up(lag.from(), config, |frame| {
                        conn.offer(frame.clone()) == Offer::Queued
                    })
                });
            let now = match outcome {
                CatchUp::Live => Lag::default(),
                CatchUp::Behind(from) => {
                    behind = true;
                    Lag::behind(from)
                }
                CatchUp::Lost => {
                    self.counters.catch_up_lost();
                    let code = conn.v2().then_some(&membership.lobby);
                    let lost = ServerFrame::Recovered {
                        lobby: code,
                        ok: false,
                    };
                    // Past capacity by one frame at most: this member stops being behind.
                    conn.offer_over(text(lost.encode()));
                    Lag::default()
                }
            };
            self.set_lag(lobby, membership.pos, now);
        }
        if behind {
            conn.lagging.store(true, Ordering::Relaxed);
        }
    }

    /// Whether publishes to `lobby` are shed now: members are behind here, or another node
    /// said its are.
    pub(super) fn pressed_locked(&self, reg: &mut Registry, lobby: &LobbyCode) -> bool {
        if reg.lobbies.get(lobby).is_some_and(Lobby::reading_behind) {
            return true;
        }
        if reg.pressed_elsewhere.is_empty() {
            return false;
        }
        match reg.pressed_elsewhere.get(lobby) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                reg.pressed_elsewhere.remove(lobby);
                false
            }
            None => false,
        }
    }

    /// [`pressed_locked`](Self::pressed_locked), for a publish the cluster numbers.
    pub(crate) fn pressed(&self, lobby: &LobbyCode) -> bool {
        let mut reg = self.lock();
        let pressed = self.pressed_locked(&mut reg, lobby);
        if pressed {
            self.counters.shed_publish();
        }
        pressed
    }

    /// Another node's members of `lobby` are behind: shed publishes to it for a while.
    pub(crate) fn pressed_elsewhere(&self, lobby: LobbyCode) {
        Self::hold_pressure(&mut self.lock(), lobby);
    }

    /// This node is behind what the cluster sends it for `lobby` (its pub/sub stream): it
    /// sheds publishes to the lobby for a while, and tells the other nodes (at most every
    /// [`RETELL_EVERY`]). Whether it told them now.
    pub(crate) fn behind_upstream(&self, code: LobbyCode) -> bool {
        let mut guard = self.lock();
        let reg = &mut *guard;
        Self::hold_pressure(reg, code.clone());
        reg.lobbies
            .get_mut(&code)
            .is_some_and(|lobby| self.tell_pressure(&code, lobby))
    }

    /// Sheds publishes to `lobby` for [`PRESSURE_HOLDS`].
    fn hold_pressure(reg: &mut Registry, lobby: LobbyCode) {
        let now = Instant::now();
        if reg.pressed_elsewhere.len() >= MAX_PRESSED_ELSEWHERE {
            reg.pressed_elsewhere.retain(|_, until| *until > now);
            if reg.pressed_elsewhere.len() >= MAX_PRESSED_ELSEWHERE {
                return;
            }
        }
        reg.pressed_elsewhere.insert(lobby, now + PRESSURE_HOLDS);
    }

    /// Where to tell the other nodes that members are behind here (once, by the cluster).
    pub(crate) fn on_pressure(&self, out: impl Fn(&LobbyCode) + Send + Sync + 'static) {
        let _ = self.pressure_out.set(PressureOut(Box::new(out)));
    }

    /// Tells the other nodes that `lobby`'s members are behind here, at most every
    /// [`RETELL_EVERY`]; whether it did now.
    pub(super) fn tell_pressure(&self, code: &LobbyCode, lobby: &mut Lobby) -> bool {
        let Some(out) = self.pressure_out.get() else {
            return false;
        };
        let now = Instant::now();
        if lobby
            .announced
            .is_some_and(|at| now.duration_since(at) < RETELL_EVERY)
        {
            return false;
        }
        lobby.announced = Some(now);
        (out.0)(code);
        true
    }
}
