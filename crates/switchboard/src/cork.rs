//! Corked delivery: a member is woken at most once per inbound batch.
//!
//! While a thread dispatches one batch of inbound frames (the frames of one read of a
//! connection, or a batch of the cluster's intake), broadcasts are queued without waking their
//! members; each member whose queue needed a wake is listed once, and the list is woken when
//! the batch ends. k broadcasts from one read then reach a member in one write, not up to k:
//! uWebSockets' per-iteration drain, with no timer and no added latency (the wakes happen at
//! the end of the same synchronous dispatch). A publish outside a batch (the HTTP API, a
//! spawned task) is not corked and wakes at once.
//!
//! A batch is a guard ([`Cork`]) on the current thread: it is `!Send`, so it cannot be held
//! across an `.await`, and the list is woken when it drops, however the batch ends (a
//! connection closing mid-batch, an early return, a panic). Batches nest: the outermost wakes.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::handle::ConnHandle;

/// A wake list that grew past this many entries gives its memory back after the batch.
const KEEP_LIST: usize = 16 * 1024;

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

/// Lists `conn` to be woken when this thread's batch ends. Its outbox has already marked it
/// listed, so each connection is listed once per batch.
pub(crate) fn list(conn: &Arc<ConnHandle>) {
    BATCH.with(|b| b.borrow_mut().list.push(conn.clone()));
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
        for conn in list.drain(..) {
            conn.wake_listed();
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
