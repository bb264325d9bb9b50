//! Group commit: every queued write request goes into ONE redb write
//! transaction committed with immediate durability (one fsync per batch);
//! answers and watch events are released only after the commit returned.
//!
//! ```text
//!  propose ──push──> queue ──> committer: take everything queued
//!                               clone state, Applier::apply each request
//!                               redb commit (fsync)
//!                               publish state, hub.publish(events), answer all
//! ```
//!
//! Who commits: the proposer that finds no commit running commits the
//! queue itself, on its own thread, so a lightly loaded store pays no
//! thread hand-off on its write path (the fsync dominates anyway). If more
//! requests queued up meanwhile, a blocking-pool thread keeps committing
//! batches until the queue is empty, so that first proposer can answer its
//! client; concurrent proposers just wait for their batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lookout_proto::mvccpb::Event;
use redb::{Database, Durability};
use tokio::sync::oneshot;

use crate::apply::{Applied, Applier};
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::request::Request;
use crate::state::MvccState;

/// Most requests one commit carries.
const MAX_BATCH: usize = 1024;
/// Most requests waiting for a commit; beyond it writers get etcd's "too
/// many requests" instead of growing memory without bound.
const MAX_PENDING: usize = 16 * 1024;

struct Proposal {
    req: Request,
    done: oneshot::Sender<Result<Applied>>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Proposal>,
    /// A committer is running; new proposals wait for it.
    committing: bool,
    closed: bool,
}

/// The single writer of one store (see the module doc).
pub(crate) struct Writer {
    db: Arc<Database>,
    state: Arc<ArcSwap<MvccState>>,
    hub: Arc<Hub>,
    // parking_lot Mutex: held for queue pushes and pops only, never across
    // a commit or an await.
    queue: parking_lot::Mutex<Queue>,
    /// Signalled when a committer stops (for `close`).
    idle: parking_lot::Condvar,
}

impl Writer {
    pub fn new(db: Arc<Database>, state: Arc<ArcSwap<MvccState>>, hub: Arc<Hub>) -> Self {
        Self {
            db,
            state,
            hub,
            queue: parking_lot::Mutex::new(Queue::default()),
            idle: parking_lot::Condvar::new(),
        }
    }

    /// Queues `req` and waits until it is durable and applied.
    ///
    /// # Errors
    /// [`Error::Stopped`] after `close`, a storage failure of its batch, or
    /// etcd's answer inside [`Applied::response`].
    pub async fn propose(self: &Arc<Self>, req: Request) -> Result<Applied> {
        let (done, rx) = oneshot::channel();
        let lead = {
            let mut q = self.queue.lock();
            if q.closed {
                return Err(Error::Stopped);
            }
            if q.pending.len() >= MAX_PENDING {
                return Err(Error::TooManyRequests);
            }
            q.pending.push_back(Proposal { req, done });
            !std::mem::replace(&mut q.committing, true)
        };
        if lead {
            self.commit_batch();
            if !self.release_if_empty() {
                let w = self.clone();
                tokio::task::spawn_blocking(move || w.drain());
            }
        }
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Commits batches until the queue is empty.
    fn drain(&self) {
        loop {
            self.commit_batch();
            if self.release_if_empty() {
                return;
            }
        }
    }

    /// Ends the committer's turn if nothing is queued; false if it must
    /// go on.
    fn release_if_empty(&self) -> bool {
        let mut q = self.queue.lock();
        if q.pending.is_empty() {
            q.committing = false;
            self.idle.notify_all();
            true
        } else {
            false
        }
    }

    fn commit_batch(&self) {
        let batch: Vec<Proposal> = {
            let mut q = self.queue.lock();
            let n = q.pending.len().min(MAX_BATCH);
            q.pending.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let mut working = MvccState::clone(&self.state.load());
        match commit(&self.db, &mut working, &batch) {
            Ok(mut applied) => {
                let rev = working.rev;
                self.state.store(Arc::new(working));
                let events: Vec<(i64, Vec<Event>)> = applied
                    .iter_mut()
                    .filter(|a| !a.events.is_empty())
                    .map(|a| (a.revision, std::mem::take(&mut a.events)))
                    .collect();
                self.hub.publish(&events, rev);
                // Callers get the events back too (raft and tests use them).
                let mut events = events.into_iter().peekable();
                for (p, mut a) in batch.into_iter().zip(applied) {
                    if events.peek().is_some_and(|(r, _)| *r == a.revision) && a.events.is_empty() {
                        a.events = events.next().map(|(_, e)| e).unwrap_or_default();
                    }
                    let _ = p.done.send(Ok(a));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; batch not acknowledged");
                for p in batch {
                    let _ = p.done.send(Err(e.clone()));
                }
            }
        }
    }

    /// Refuses new proposals and waits (bounded) for the running batch.
    pub fn close(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while q.committing && std::time::Instant::now() < deadline {
            self.idle.wait_for(&mut q, Duration::from_millis(100));
        }
        for p in q.pending.drain(..) {
            let _ = p.done.send(Err(Error::Stopped));
        }
    }
}

/// Applies `batch` in one redb write transaction with immediate durability.
fn commit(db: &Database, st: &mut MvccState, batch: &[Proposal]) -> Result<Vec<Applied>> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| Error::Storage(e.to_string()))?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut ap = Applier::new(&txn)?;
        for p in batch {
            let index = st.applied_index + 1;
            out.push(ap.apply(st, index, &p.req)?);
        }
        ap.finish(st)?;
    }
    txn.commit()?;
    Ok(out)
}
