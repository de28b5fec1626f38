//! Presence changes for the embedding app (`Handler::on_presence`). They are decided under the
//! registry's lock, in order; the app hears them off that lock, from a task on the tracker that
//! runs while changes wait (like the event batch's flush), so an app that calls back into the
//! manager cannot deadlock and a slow one delays nobody's connect.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio_util::task::TaskTracker;

use crate::ids::{LobbyCode, UserId};

/// Where presence changes go: `(lobby, user, joined)`.
pub(crate) type PresenceSink = Arc<dyn Fn(&LobbyCode, &UserId, bool) + Send + Sync>;

/// Changes waiting for the app, and whether a task is delivering them.
#[derive(Default)]
pub(crate) struct PresenceFeed {
    sink: OnceLock<PresenceSink>,
    state: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    changes: VecDeque<(LobbyCode, UserId, bool)>,
    delivering: bool,
}

impl std::fmt::Debug for PresenceFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceFeed")
            .field("listening", &self.sink.get().is_some())
            .finish_non_exhaustive()
    }
}

impl PresenceFeed {
    /// Starts feeding `sink` (once; a second one is ignored).
    pub(crate) fn listen(&self, sink: PresenceSink) {
        let _ = self.sink.set(sink);
    }

    /// Queues a change, if anyone listens; delivered in order from a task on `tracker`.
    pub(crate) fn push(
        &self,
        lobby: &LobbyCode,
        user: &UserId,
        joined: bool,
        tracker: &TaskTracker,
    ) {
        let Some(sink) = self.sink.get() else {
            return;
        };
        let mut waiting = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        waiting
            .changes
            .push_back((lobby.clone(), user.clone(), joined));
        if waiting.delivering || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        waiting.delivering = true;
        let (state, sink) = (self.state.clone(), sink.clone());
        tracker.spawn(async move {
            loop {
                let changes = {
                    let mut waiting = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if waiting.changes.is_empty() {
                        waiting.delivering = false;
                        return;
                    }
                    std::mem::take(&mut waiting.changes)
                };
                for (lobby, user, joined) in changes {
                    sink(&lobby, &user, joined);
                }
            }
        });
    }
}
