//! Join/leave events go out in batches. They are queued at once, so their order against
//! messages holds, but a connection is not woken for them: it writes them with its next
//! message, or when the batch is due (`presence.events_batch` after the first one), whichever
//! comes first. A join storm in a lobby of a hundred then costs each member one write per
//! batch instead of one per join.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use tokio_util::task::TaskTracker;

use crate::cork::DueList;
use crate::handle::{ConnHandle, Offer};

/// The connections holding events not yet written, woken when their batch is due.
#[derive(Debug)]
pub(crate) struct EventBatch {
    /// None when batches are off (a zero delay): every event is written at once.
    due: Option<DueList>,
}

impl EventBatch {
    /// Batches of `delay`; zero writes every event at once. Flushes run on `tracker`.
    pub(crate) fn new(delay: Duration, tracker: TaskTracker) -> Self {
        let wake = |conns: &mut Vec<Arc<ConnHandle>>| conns.drain(..).for_each(|c| c.wake());
        Self {
            due: (!delay.is_zero()).then(|| DueList::new(delay, tracker, wake)),
        }
    }

    /// Queues an event for `conn`, to be written within the batch delay.
    pub(crate) fn offer(&self, conn: &Arc<ConnHandle>, frame: Message) -> Offer {
        let Some(due) = &self.due else {
            return conn.offer(frame);
        };
        let (offer, first) = conn.offer_quietly(frame);
        if first {
            due.add_one(conn);
        }
        offer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::testing::{WakeCount, handle};

    fn conn(seq: u64) -> (Arc<ConnHandle>, Arc<WakeCount>) {
        let (conn, count) = handle(seq, 8);
        (Arc::new(conn), count)
    }

    fn event() -> Message {
        Message::Text("{\"type\":\"member_joined\"}".into())
    }

    #[tokio::test]
    async fn events_wake_their_connections_once_per_batch() {
        let tracker = TaskTracker::new();
        let batch = EventBatch::new(Duration::from_millis(20), tracker.clone());
        let (a, woken_a) = conn(1);
        let (b, woken_b) = conn(2);
        for _ in 0..3 {
            assert_eq!(batch.offer(&a, event()), Offer::Queued);
        }
        batch.offer(&b, event());
        assert_eq!(woken_a.get(), 0, "not before the batch is due");
        // The flush runs on the tracker: once it has ended, the batch was written.
        tracker.close();
        tracker.wait().await;
        assert_eq!(woken_a.get(), 1, "one wake for three events");
        assert_eq!(woken_b.get(), 1);
        let mut queued = 0;
        a.take_all(|_| queued += 1);
        assert_eq!(
            queued, 3,
            "the events stay queued, in order, for the connection's write"
        );
    }

    #[tokio::test]
    async fn without_a_delay_every_event_wakes_at_once() {
        let tracker = TaskTracker::new();
        let batch = EventBatch::new(Duration::ZERO, tracker.clone());
        let (a, woken) = conn(1);
        batch.offer(&a, event());
        assert_eq!(woken.get(), 1);
        assert!(tracker.is_empty(), "nothing scheduled");
    }
}
