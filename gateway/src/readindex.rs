//! Linearizable read points, coalesced: concurrent linearizable reads share
//! one upstream revision probe, as etcd batches read-index requests, so a
//! burst of reads costs the store a few cheap requests, not one each.
//!
//! ```text
//!   read ──join `next`──┐        (a read never joins a probe that started
//!   read ──join `next`──┼─> probe task: take `next`, ask the store's
//!   read ──join `next`──┘   revision, answer them all; repeat while `next`
//!                           has waiters              before it arrived)
//! ```
//!
//! Linearizable because every waiter's probe starts after the waiter
//! arrived: the revision it gets is at least the store's revision at the
//! moment the read was issued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lookout_cache::Upstream;
use tokio::sync::oneshot;
use tonic::Status;

type Waiter = oneshot::Sender<Result<i64, Status>>;

/// The probe coalescer.
#[derive(Debug, Default)]
pub(crate) struct ReadIndex {
    /// A blocking mutex: held only to push a waiter or take the batch, never
    /// across an await.
    state: parking_lot::Mutex<State>,
    /// Probes sent upstream (for /metrics).
    pub(crate) probes: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Waiters for the next probe (arrived after the running one started).
    next: Vec<Waiter>,
    /// A probe task is running.
    running: bool,
}

impl ReadIndex {
    /// The store's current revision, from a probe that started after this
    /// call did.
    ///
    /// # Errors
    /// The upstream's status for the probe.
    pub(crate) async fn current_revision(
        self: &Arc<Self>,
        upstream: &Arc<dyn Upstream>,
    ) -> Result<i64, Status> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.state.lock();
            st.next.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            // A task, not this request: if the caller goes away the others
            // still get their answer.
            let me = self.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move { me.run(upstream).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(crate::error::read_index_dropped()))
    }

    async fn run(&self, upstream: Arc<dyn Upstream>) {
        loop {
            let batch = {
                let mut st = self.state.lock();
                if st.next.is_empty() {
                    st.running = false;
                    return;
                }
                std::mem::take(&mut st.next)
            };
            self.probes.fetch_add(1, Relaxed);
            let r = upstream.current_revision().await;
            for w in batch {
                let _ = w.send(r.clone());
            }
        }
    }
}
