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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::task::TaskTracker;

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
    /// The batch's broadcasts are paced (`queue.write_delay`): its list goes to this pacer
    /// when it ends, instead of being served at once.
    pacer: Option<Arc<Pacer>>,
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
#[cfg(test)]
fn corked() -> bool {
    BATCH.with(|b| b.borrow().depth > 0)
}

/// How a broadcast reaches its members, decided once per broadcast (whether this thread is
/// in a batch), not once per member.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    corked: bool,
}

/// The delivery for a broadcast offered now, on this thread; with a `pacer`, the members it
/// lists are served by the pacer (within its delay) rather than when the batch ends.
pub(crate) fn delivery(pacer: Option<&Arc<Pacer>>) -> Delivery {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if let Some(pacer) = pacer.filter(|_| b.depth > 0 && b.pacer.is_none()) {
            b.pacer = Some(pacer.clone());
        }
        Delivery {
            corked: b.depth > 0,
        }
    })
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
        let (mut list, pacer) = BATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.depth -= 1;
            if b.depth == 0 {
                (std::mem::take(&mut b.list), b.pacer.take())
            } else {
                (Vec::new(), None)
            }
        });
        if list.is_empty() {
            return;
        }
        match pacer {
            Some(pacer) => pacer.hand(&mut list),
            None => serve(&mut list),
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

/// Serves a batch's listed members: each is written through (or woken), within this thread's
/// budget, and the list emptied.
fn serve(list: &mut Vec<Arc<ConnHandle>>) {
    let budget = through_budget();
    for (n, conn) in list.drain(..).enumerate() {
        conn.wake_listed(n < budget);
    }
}

/// Broadcasts held back for up to `queue.write_delay` (opt-in): a batch's members are served
/// by a timer instead of when the batch ends, so the broadcasts that reach a member within
/// the delay go out in one write. Fewer writes (the kernel's send path is most of a
/// broadcast's cost) for up to that much latency; frames of a member's own (replies, direct
/// messages) are not held, and take what waits along.
#[derive(Debug)]
pub(crate) struct Pacer(DueList);

impl Pacer {
    /// A pacer for `delay`; none for zero (broadcasts are served as their batch ends).
    pub(crate) fn new(delay: Duration, tracker: TaskTracker) -> Option<Arc<Self>> {
        (!delay.is_zero()).then(|| Arc::new(Self(DueList::new(delay, tracker, serve))))
    }

    /// Takes a batch's listed members, to be served within the delay.
    fn hand(&self, list: &mut Vec<Arc<ConnHandle>>) {
        self.0.add(list);
    }
}

/// Connections served by a timer: one added waits at most `delay`, then `serve` runs on
/// everyone due. The timer runs (on the manager's tracker) only while connections are due.
/// The write delay's pacer and the presence events' batches are the two.
#[derive(Debug)]
pub(crate) struct DueList {
    delay: Duration,
    due: Arc<Mutex<Due>>,
    tracker: TaskTracker,
    serve: fn(&mut Vec<Arc<ConnHandle>>),
}

/// Connections waiting for the timer, and whether it runs.
#[derive(Debug, Default)]
struct Due {
    list: Vec<Arc<ConnHandle>>,
    ticking: bool,
}

impl DueList {
    pub(crate) fn new(
        delay: Duration,
        tracker: TaskTracker,
        serve: fn(&mut Vec<Arc<ConnHandle>>),
    ) -> Self {
        Self {
            delay,
            due: Arc::default(),
            tracker,
            serve,
        }
    }

    /// Adds `conn`, to be served within the delay.
    pub(crate) fn add_one(&self, conn: &Arc<ConnHandle>) {
        self.push(|list| list.push(conn.clone()));
    }

    /// Adds every connection of `list` (emptied), to be served within the delay.
    pub(crate) fn add(&self, list: &mut Vec<Arc<ConnHandle>>) {
        self.push(|due| due.append(list));
    }

    fn push(&self, add: impl FnOnce(&mut Vec<Arc<ConnHandle>>)) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        add(&mut due.list);
        if due.ticking {
            return;
        }
        // Outside a runtime (unit tests of the registry) there is nothing to defer to.
        if tokio::runtime::Handle::try_current().is_err() {
            let mut now = std::mem::take(&mut due.list);
            drop(due);
            (self.serve)(&mut now);
            return;
        }
        due.ticking = true;
        let (due, delay, serve) = (self.due.clone(), self.delay, self.serve);
        // Ticks while connections keep coming; one waits at most one delay.
        self.tracker.spawn(async move {
            loop {
                tokio::time::sleep(delay).await;
                let mut list = {
                    let mut due = due.lock().unwrap_or_else(PoisonError::into_inner);
                    if due.list.is_empty() {
                        due.ticking = false;
                        return;
                    }
                    std::mem::take(&mut due.list)
                };
                serve(&mut list);
            }
        });
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
        delivery(None).offer(conn, frame)
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

    #[tokio::test(start_paused = true)]
    async fn paced_broadcasts_wait_for_the_delay_then_go_together() {
        let delay = std::time::Duration::from_millis(20);
        let pacer = Pacer::new(delay, TaskTracker::new()).unwrap();
        let (a, woken) = handle(1, 8);
        let a = Arc::new(a);
        for n in 0..2 {
            let _batch = super::cork();
            let offered = delivery(Some(&pacer)).offer(&a, frame(&format!("m{n}")));
            assert_eq!(offered, Offer::Queued);
        }
        assert_eq!(woken.get(), 0, "both batches ended, nothing served yet");
        tokio::time::sleep(delay - std::time::Duration::from_millis(1)).await;
        assert_eq!(woken.get(), 0);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        assert_eq!(woken.get(), 1, "served once, for both");
        assert_eq!(drain(&a), ["m0", "m1"]);
        // A frame of the member's own is not held, and takes a held broadcast along.
        {
            let _batch = super::cork();
            delivery(Some(&pacer)).offer(&a, frame("m2"));
        }
        assert_eq!(a.offer(frame("own")), Offer::Queued);
        assert_eq!(woken.get(), 2);
        assert_eq!(drain(&a), ["m2", "own"]);
        // Its timer comes and finds nothing to do.
        tokio::time::sleep(2 * delay).await;
        assert_eq!(woken.get(), 2);
        assert!(Pacer::new(std::time::Duration::ZERO, TaskTracker::new()).is_none());
    }
}
