//! What the embedding app hears off the registry's lock: presence changes
//! (`Handler::on_presence`) and, in a cluster, connections lost with their node
//! (`Handler::on_connection_lost`). They are decided under the registry's lock (or in a Redis
//! script), in order; the app hears them from a task on the tracker that runs while notices
//! wait (like the event batch's flush), so an app that calls back into the manager cannot
//! deadlock and a slow one delays nobody's connect. Lost connections travel in the same queue
//! as presence so that a dead node's connection is heard before its user's `member_left`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio_util::task::TaskTracker;

use crate::handle::LostConnection;
use crate::ids::{LobbyCode, UserId};

/// One thing the app hears.
#[derive(Debug)]
pub(crate) enum Notice {
    /// `user` joined (`joined`) or left `lobby`.
    Presence {
        lobby: LobbyCode,
        user: UserId,
        joined: bool,
    },
    /// A dead node's connection, freed by this node.
    Lost(LostConnection),
}

/// Where notices go.
pub(crate) type NoticeSink = Arc<dyn Fn(Notice) + Send + Sync>;

/// Notices waiting for the app, and whether a task is delivering them.
#[derive(Default)]
pub(crate) struct AppFeed {
    sink: OnceLock<(NoticeSink, bool)>,
    state: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    notices: VecDeque<Notice>,
    delivering: bool,
}

impl std::fmt::Debug for AppFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppFeed")
            .field("listening", &self.sink.get().is_some())
            .finish_non_exhaustive()
    }
}

impl AppFeed {
    /// Starts feeding `sink` (once; a second one is ignored), with presence changes only when
    /// `presence` (else the manager keeps no record of them).
    pub(crate) fn listen(&self, sink: NoticeSink, presence: bool) {
        let _ = self.sink.set((sink, presence));
    }

    /// Queues a presence change, if anyone listens for them.
    pub(crate) fn presence(
        &self,
        lobby: &LobbyCode,
        user: &UserId,
        joined: bool,
        tracker: &TaskTracker,
    ) {
        if self.sink.get().is_some_and(|(_, presence)| *presence) {
            let notice = Notice::Presence {
                lobby: lobby.clone(),
                user: user.clone(),
                joined,
            };
            self.push(notice, tracker);
        }
    }

    /// Queues a notice, if anyone listens; delivered in order from a task on `tracker`.
    pub(crate) fn push(&self, notice: Notice, tracker: &TaskTracker) {
        let Some((sink, _)) = self.sink.get() else {
            return;
        };
        let mut waiting = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.notices.push_back(notice);
        if waiting.delivering || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        waiting.delivering = true;
        let (state, sink) = (self.state.clone(), sink.clone());
        tracker.spawn(async move {
            loop {
                let notices = {
                    let mut waiting = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if waiting.notices.is_empty() {
                        waiting.delivering = false;
                        return;
                    }
                    std::mem::take(&mut waiting.notices)
                };
                for notice in notices {
                    sink(notice);
                }
            }
        });
    }
}
