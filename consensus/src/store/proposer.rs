//! Group commit in front of raft: concurrent writes are batched into one
//! log entry ([`Batch`](crate::raft::type_config::Batch)), because openraft handles
//! (appends, replicates, applies) every client write on its own.
//!
//! ```text
//!  propose(req) ──push──> queue ──> up to MAX_IN_FLIGHT submitters, each:
//!      take everything queued (<= MAX_BATCH requests / MAX_BATCH_BYTES)
//!      Store::submit(batch): leader -> raft.client_write; follower -> forward
//!      answer every request of the batch, then take the next batch
//!      (or, once another leader is known, leave the batch to answer from
//!       its own task and take the next one: see `run_one`)
//! ```
//!
//! Several batches in flight let the leader append batch k+1 while batch
//! k replicates or applies (the log's writer thread then syncs what is
//! queued with one fdatasync). Order between batches is raft's log order.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::mvcc::request::{Reply, Request};
use crate::store::Store;

/// Most requests in one log entry.
const MAX_BATCH: usize = 1024;
/// Most encoded request bytes in one log entry (a peer message carries
/// up to 64 entries).
const MAX_BATCH_BYTES: usize = 2 << 20;
/// Most requests waiting; beyond it writers get etcd's "too many requests".
const MAX_PENDING: usize = 16 * 1024;
/// Batches submitted at once: two in flight keep the leader appending
/// batch k+1 while batch k replicates and applies, without splitting
/// batches further.
const MAX_IN_FLIGHT: usize = 2;

struct Proposal {
    req: Request,
    size: usize,
    done: oneshot::Sender<Result<Reply>>,
}

#[derive(Default)]
struct Queue {
    pending: std::collections::VecDeque<Proposal>,
    in_flight: usize,
}

/// See the module doc.
#[derive(Default)]
pub(crate) struct Proposer {
    // parking_lot Mutex: pushes and pops only, never held across an await.
    queue: parking_lot::Mutex<Queue>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proposer")
    }
}

fn request_size(req: &Request) -> usize {
    req.size()
}

impl Proposer {
    /// Queues `req` and waits for its reply.
    ///
    /// # Errors
    /// Too many queued requests, or the batch's failure (no leader,
    /// timeout, stopped).
    pub async fn propose(self: &Arc<Self>, store: &Store, req: Request) -> Result<Reply> {
        let (done, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock();
            if q.pending.len() >= MAX_PENDING {
                return Err(Error::TooManyRequests);
            }
            let size = request_size(&req);
            q.pending.push_back(Proposal { req, size, done });
            if q.in_flight < MAX_IN_FLIGHT {
                q.in_flight += 1;
                true
            } else {
                false
            }
        };
        if start {
            // Always a task of its own: the caller's future is dropped when
            // its client goes away, and a batch (with other callers'
            // requests and the submitter slot) must never go with it.
            let (p, s) = (self.clone(), store.clone());
            tokio::spawn(async move { p.run(&s).await });
        }
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Queues a follower's forwarded batch (kept together, and merged with
    /// whatever else is queued here) and waits for every reply.
    pub async fn propose_all(
        self: &Arc<Self>,
        store: &Store,
        reqs: Vec<Request>,
    ) -> Vec<Result<Reply>> {
        let mut rxs = Vec::with_capacity(reqs.len());
        let start = {
            let mut q = self.queue.lock();
            if q.pending.len() + reqs.len() > MAX_PENDING {
                return reqs.iter().map(|_| Err(Error::TooManyRequests)).collect();
            }
            for req in reqs {
                let (done, rx) = oneshot::channel();
                let size = request_size(&req);
                q.pending.push_back(Proposal { req, size, done });
                rxs.push(rx);
            }
            if q.in_flight < MAX_IN_FLIGHT {
                q.in_flight += 1;
                true
            } else {
                false
            }
        };
        if start {
            let (p, s) = (self.clone(), store.clone());
            tokio::spawn(async move { p.run(&s).await });
        }
        let mut out = Vec::with_capacity(rxs.len());
        for rx in rxs {
            out.push(rx.await.unwrap_or(Err(Error::Stopped)));
        }
        out
    }

    /// Submits batches until the queue is empty.
    async fn run(&self, store: &Store) {
        while self.run_one(store).await {}
    }

    /// Submits one batch; false (and the submitter slot released) when
    /// nothing was queued.
    async fn run_one(&self, store: &Store) -> bool {
        {
            let batch: Vec<Proposal> = {
                let mut q = self.queue.lock();
                if q.pending.is_empty() {
                    q.in_flight -= 1;
                    return false;
                }
                let mut bytes = 0;
                let mut n = 0;
                for p in q.pending.iter() {
                    if n > 0 && (n >= MAX_BATCH || bytes + p.size > MAX_BATCH_BYTES) {
                        break;
                    }
                    bytes += p.size;
                    n += 1;
                }
                q.pending.drain(..n).collect()
            };
            let reqs: Vec<Request> = batch.iter().map(|p| p.req.clone()).collect();
            let moved = leader_moved(store);
            let s = store.clone();
            let mut answered = tokio::spawn(async move { answer(batch, s.submit(reqs).await) });
            tokio::select! {
                _ = &mut answered => {}
                () = moved => {
                    // The batch went to (or waits for) a leader that has
                    // been replaced. It keeps its own task and answers its
                    // callers when that ends (its outcome is unknown until
                    // then: never resubmitted); this slot moves on, so the
                    // writes queued behind it reach the new leader now
                    // instead of after the old one's timeout.
                }
            }
        }
        let mut q = self.queue.lock();
        if q.pending.is_empty() {
            q.in_flight -= 1;
            false
        } else {
            true
        }
    }
}

/// Hands each caller of `batch` its reply from `store.submit`.
fn answer(batch: Vec<Proposal>, res: Result<Vec<Result<Reply>>>) {
    match res {
        Ok(replies) if replies.len() == batch.len() => {
            for (p, r) in batch.into_iter().zip(replies) {
                let _ = p.done.send(r);
            }
        }
        Ok(replies) => {
            let e = Error::Internal(format!(
                "{} replies for a batch of {}",
                replies.len(),
                batch.len()
            ));
            for p in batch {
                let _ = p.done.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(e.clone()));
            }
        }
    }
}

/// Resolves when this member learns of a leader other than the one
/// it knew when called (another member, or a new term). The proposer
/// uses it to stop holding a submitter slot for a batch sent to a
/// leader that has since been replaced: a paused or cut-off leader
/// never answers, and its slot would otherwise keep every later
/// write from reaching the new one.
fn leader_moved(store: &Store) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut m = store.inner.raft.metrics();
    let was = {
        let cur = m.borrow_and_update();
        (cur.current_term, cur.current_leader)
    };
    async move {
        loop {
            if m.changed().await.is_err() {
                return std::future::pending().await;
            }
            let cur = m.borrow_and_update();
            if cur.current_leader.is_some() && (cur.current_term, cur.current_leader) != was {
                return;
            }
        }
    }
}
