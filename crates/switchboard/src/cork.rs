//! Corked delivery: a member is written to or woken at most once per inbound batch.
//!
//! While a thread dispatches one batch of inbound frames (the frames of one read of a
//! connection, or a batch of the cluster's intake), broadcasts are queued without waking their
//! members; each member whose queue needed a wake is listed once, and the list is served when
//! the batch ends. k broadcasts from one read then reach a member in one write, not up to k:
//! uWebSockets' per-iteration drain, with no timer and no added latency (it happens at the end
//! of the same synchronous dispatch). A broadcast outside such a batch (the HTTP API, a
//! spawned task) is a batch of its own: `Hub::publish` corks it, so its members are served
//! once the registry's lock is released.
//!
//! Serving a listed member means writing its frames into its socket right here when its task
//! left the outbox open (write-through, `handle::direct`), else waking its task. On a runtime
//! with several worker threads only the first [`THROUGH_BUDGET`] members of a batch are
//! written through: the rest are woken, so a large lobby's writes spread over the workers
//! instead of holding this one. On one worker thread every member is written through: its
//! task would have run on this thread anyway.
//!
//! A batch is a guard ([`Cork`]) on the current thread: it is `!Send`, so it cannot be held
//! across an `.await`, and the list is woken when it drops, however the batch ends (a
//! connection closing mid-batch, an early return, a panic). Batches nest: the outermost wakes.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::handle::{ConnHandle, Offer, Outgoing};

/// A wake list that grew past this many entries gives its memory back after the batch.
const KEEP_LIST: usize = 16 * 1024;
/// With several worker threads, members of one batch written through by the thread that
/// ends it (about 1-2 ms of `send`s); the rest are woken.
pub(crate) const THROUGH_BUDGET: usize = 256;

#[derive(Default)]
struct Batch {
    depth: usize,
    list: Vec<Arc<ConnHandle>>,
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::default();
}

/// An inbound batch in progress on this thread: broadcasts offered meanwhile wake their
/// members when it drops.
#[must_use = "the batch ends (and wakes its members) when the guard drops"]
pub(crate) struct Cork {
    /// `!Send`: a batch is one thread's synchronous dispatch.
    _thread: PhantomData<*const ()>,
}

/// Starts a batch on this thread (or joins the one in progress).
pub(crate) fn cork() -> Cork {
    BATCH.with(|b| b.borrow_mut().depth += 1);
    Cork {
        _thread: PhantomData,
    }
}

/// Whether a batch is in progress on this thread.
pub(crate) fn corked() -> bool {
    BATCH.with(|b| b.borrow().depth > 0)
}

/// How a broadcast reaches its members, decided once per broadcast (whether this thread is
/// in a batch), not once per member.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    corked: bool,
}

/// The delivery for a broadcast offered now, on this thread.
pub(crate) fn delivery() -> Delivery {
    Delivery { corked: corked() }
}

impl Delivery {
    /// Offers a broadcast to a member: inside a batch it is queued quietly and the member
    /// woken once when the batch ends, however many broadcasts the batch brings it; outside
    /// one, as [`ConnHandle::offer`] (woken at once).
    pub(crate) fn offer(self, conn: &Arc<ConnHandle>, frame: impl Into<Outgoing>) -> Offer {
        if !self.corked {
            return conn.offer(frame);
        }
        let (offer, list) = conn.offer_listed(frame);
        if list {
            BATCH.with(|b| b.borrow_mut().list.push(conn.clone()));
        }
        offer
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        let mut list = BATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.depth -= 1;
            if b.depth == 0 {
                std::mem::take(&mut b.list)
            } else {
                Vec::new()
            }
        });
        if list.is_empty() {
            return;
        }
        let budget = through_budget();
        for (n, conn) in list.drain(..).enumerate() {
            conn.wake_listed(n < budget);
        }
        // Keep the list's memory for the thread's next batch (unless it was a large one, or
        // a batch started while waking: waking runs no code of ours, but be safe).
        if list.capacity() <= KEEP_LIST {
            BATCH.with(|b| {
                let mut b = b.borrow_mut();
                if b.list.capacity() == 0 {
                    b.list = list;
                }
            });
        }
    }
}

/// How many members of a batch this thread writes through ([`THROUGH_BUDGET`]).
fn through_budget() -> usize {
    thread_local! {
        static BUDGET: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    }
    BUDGET.with(|cached| {
        if let Some(budget) = cached.get() {
            return budget;
        }
        let budget = match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.metrics().num_workers() > 1 => THROUGH_BUDGET,
            _ => usize::MAX,
        };
        cached.set(Some(budget));
        budget
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::testing::{drain, frame, handle};

    fn offer_broadcast(conn: &Arc<ConnHandle>, frame: impl Into<Outgoing>) -> Offer {
        delivery().offer(conn, frame)
    }

    #[test]
    fn corked_broadcasts_wake_a_member_once_at_the_end_of_the_batch() {
        let (a, woken_a) = handle(1, 8);
        let (b, woken_b) = handle(2, 8);
        let (a, b) = (Arc::new(a), Arc::new(b));
        {
            let _batch = super::cork();
            for n in 0..3 {
                assert_eq!(offer_broadcast(&a, frame(&format!("a{n}"))), Offer::Queued);
            }
            assert_eq!(offer_broadcast(&b, frame("b0")), Offer::Queued);
            assert_eq!(
                (woken_a.get(), woken_b.get()),
                (0, 0),
                "nobody is woken inside the batch"
            );
            // A nested batch (a dispatch inside a dispatch) does not end the outer one.
            drop(super::cork());
            assert_eq!(woken_a.get(), 0);
        }
        assert_eq!((woken_a.get(), woken_b.get()), (1, 1), "one wake each");
        assert_eq!(drain(&a), ["a0", "a1", "a2"]);
        assert_eq!(drain(&b), ["b0"]);
        // Outside a batch a broadcast wakes at once (the HTTP API's publish).
        assert_eq!(offer_broadcast(&a, frame("now")), Offer::Queued);
        assert_eq!(woken_a.get(), 2);
    }

    #[test]
    fn a_corked_member_that_took_its_frames_meanwhile_is_not_woken_again() {
        let (a, woken) = handle(1, 8);
        let a = Arc::new(a);
        {
            let _batch = super::cork();
            offer_broadcast(&a, frame("1"));
            // Its task, on another thread, writes it before the batch ends.
            assert_eq!(a.take_batch(8, 1024, |_| {}), 1);
            // Offered again in the same batch: listed once, woken once.
            offer_broadcast(&a, frame("2"));
            offer_broadcast(&a, frame("3"));
        }
        assert_eq!(woken.get(), 1);
        assert_eq!(drain(&a), ["2", "3"]);
        {
            let _batch = super::cork();
            offer_broadcast(&a, frame("4"));
            assert_eq!(a.take_batch(8, 1024, |_| {}), 1);
        }
        assert_eq!(woken.get(), 1, "nothing left to announce");
    }

    #[test]
    fn a_corked_broadcast_behind_quiet_events_still_wakes_at_the_batch_end() {
        let (a, woken) = handle(1, 8);
        let a = Arc::new(a);
        // A join event waits for its batch delay, unannounced.
        assert_eq!(a.offer_quietly(frame("event")), (Offer::Queued, true));
        {
            let _batch = super::cork();
            offer_broadcast(&a, frame("message"));
            assert_eq!(woken.get(), 0);
        }
        assert_eq!(
            woken.get(),
            1,
            "the broadcast does not wait for the event batch"
        );
        // Full and closed queues are not listed.
        let (full, woken_full) = handle(2, 1);
        let full = Arc::new(full);
        full.offer(frame("x"));
        {
            let _batch = super::cork();
            assert_eq!(offer_broadcast(&full, frame("y")), Offer::Full);
        }
        assert_eq!(woken_full.get(), 1, "only the first offer's wake");
        full.shut();
        let _batch = super::cork();
        assert_eq!(offer_broadcast(&full, frame("z")), Offer::Closed);
    }

    #[test]
    fn a_batch_that_ends_early_still_wakes_its_members() {
        fn read_batch(members: &[Arc<ConnHandle>]) -> Result<(), &'static str> {
            let _batch = super::cork();
            for conn in members {
                offer_broadcast(conn, frame("before the close"));
            }
            // The reading connection's next frame closes it: the dispatch returns early.
            Err("closed mid-batch")?;
            unreachable!()
        }
        let (a, woken) = handle(1, 8);
        let a = Arc::new(a);
        assert!(read_batch(std::slice::from_ref(&a)).is_err());
        assert_eq!(woken.get(), 1);
        assert!(!super::corked(), "the thread's batch ended");
        // Even a panic in the dispatch ends the batch and wakes.
        let (b, woken_b) = handle(2, 8);
        let b = Arc::new(b);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _batch = super::cork();
            offer_broadcast(&b, frame("x"));
            panic!("handler bug");
        }));
        assert!(caught.is_err());
        assert_eq!(woken_b.get(), 1);
        assert!(!super::corked());
    }

    #[test]
    fn one_worker_writes_every_member_through_several_spread_them() {
        let budget_on = |workers: usize| {
            let rt = match workers {
                1 => tokio::runtime::Builder::new_current_thread().build(),
                n => tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(n)
                    .build(),
            }
            .unwrap();
            // A thread of the runtime's own: the budget is cached per thread.
            rt.block_on(async { tokio::spawn(async { super::through_budget() }).await })
                .unwrap()
        };
        assert_eq!(budget_on(2), super::THROUGH_BUDGET);
        assert_eq!(
            std::thread::spawn(move || budget_on(1)).join().unwrap(),
            usize::MAX
        );
    }
}
