//! Learning compactions the cache did not cause: a watch from a past
//! revision the ring still holds is checked against the store first, so a
//! store compacted directly (or through another gateway) cancels it with
//! `compact_revision` as etcd would, instead of replaying events etcd no
//! longer has.
//!
//! ```text
//!   create(start in ring) ──join batch──┐      (a create never joins a probe
//!   create(start in ring) ──join batch──┼─> probe task: min start of the batch
//!   create(start in ring) ──join batch──┘   ─> upstream.compacted_since(min)
//!                                            ─> Some(c): note_compaction(c) (ring trimmed)
//!                                            ─> every waiter proceeds; the ring decides
//! ```
//!
//! One probe answers a whole batch: if the smallest start is not compacted,
//! none is; if it is, the store's compaction revision tells each waiter's
//! fate. Each waiter's probe starts after it arrived, so a compaction
//! finished before the create is always seen. A store that cannot be
//! reached does not block watches: the create goes ahead from the ring and
//! the miss is counted.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::metrics::CacheMetrics;
use crate::upstream::Upstream;

/// What a probe needs from the cache that owns the coalescer. A trait
/// rather than the cache's shared state itself, so this file does not
/// import the state that holds it (the state implements it).
pub(crate) trait CompactionOwner: Send + Sync + 'static {
    fn compaction_check(&self) -> &CompactionCheck;
    fn metrics(&self) -> &CacheMetrics;
    /// The newest compaction revision the cache knows of.
    fn known_compaction(&self) -> i64;
    fn upstream(&self) -> &dyn Upstream;
    /// The store compacted at `revision`: trim the ring.
    fn note_compaction(&self, revision: i64);
}

/// The probe coalescer of one cache.
#[derive(Debug, Default)]
pub(crate) struct CompactionCheck {
    /// A parking_lot mutex: held only to push a waiter or take the batch,
    /// never across an await.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `(start revision, done)` of creates waiting for the next probe.
    next: Vec<(i64, oneshot::Sender<()>)>,
    running: bool,
}

impl CompactionCheck {
    /// Returns once a probe that started after this call has told the
    /// cache whether `start` is compacted in the store.
    pub(crate) async fn check<O: CompactionOwner>(inner: &Arc<O>, start: i64) {
        let (tx, rx) = oneshot::channel();
        let spawn = {
            let mut st = inner.compaction_check().state.lock();
            st.next.push((start, tx));
            !std::mem::replace(&mut st.running, true)
        };
        if spawn {
            // A task, not this caller: if the caller goes away the others
            // still get their answer.
            let inner = inner.clone();
            tokio::spawn(async move { Self::run(&*inner).await });
        }
        let _ = rx.await;
    }

    async fn run<O: CompactionOwner>(inner: &O) {
        loop {
            let batch = {
                let mut st = inner.compaction_check().state.lock();
                if st.next.is_empty() {
                    st.running = false;
                    return;
                }
                std::mem::take(&mut st.next)
            };
            let min = batch.iter().map(|(s, _)| *s).min().unwrap_or(1);
            inner.metrics().compaction_probes.fetch_add(1, Relaxed);
            // Below the known compaction the ring already cancels; probe
            // only what could still be unknown.
            if min > inner.known_compaction() {
                match inner.upstream().compacted_since(min).await {
                    Ok(Some(c)) => inner.note_compaction(c),
                    Ok(None) => {}
                    Err(e) => {
                        inner
                            .metrics()
                            .compaction_probe_errors
                            .fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "compaction probe failed; watch replays from the ring");
                    }
                }
            }
            for (_, done) in batch {
                let _ = done.send(());
            }
        }
    }
}
