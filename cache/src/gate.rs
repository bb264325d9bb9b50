//! Admission of `initial_state` watchers: at most
//! `max_concurrent_initial` streams hand out initial-state pages at once.
//! Its own room because the shared state owns the gate and the streams'
//! catch-up passes take permits from it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Admits initial states: at most `limit` stream at once, counting only
/// permits whose holder handed out a page within [`STALE_AFTER`]. A
/// consumer that stops reading keeps its permit (its watcher resumes where
/// it was) but stops counting, so stalled clients never hold everybody else.
#[derive(Debug)]
pub(crate) struct InitialGate {
    /// Last activity (ms since `epoch`) of every live permit. A
    /// parking_lot mutex: a short scan of at most a few entries per
    /// admission attempt, never held across an await.
    active: Mutex<Vec<Arc<AtomicU64>>>,
    limit: usize,
    epoch: Instant,
    /// Streams with waiting initial states listen here.
    pub(crate) freed: Notify,
}

/// The stamp of a dropped permit.
const DEAD: u64 = u64::MAX;

/// A permit that handed out no page for this long stops counting.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(1);

impl InitialGate {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            active: Mutex::new(Vec::new()),
            limit: limit.max(1),
            epoch: Instant::now(),
            freed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn try_enter(self: &Arc<Self>) -> Option<InitialPermit> {
        let now = self.now_ms();
        let stale = STALE_AFTER.as_millis() as u64;
        let mut active = self.active.lock();
        active.retain(|p| Arc::strong_count(p) > 1);
        let fresh = active
            .iter()
            .filter(|p| {
                let at = p.load(Relaxed);
                at != DEAD && at + stale >= now
            })
            .count();
        if fresh >= self.limit {
            return None;
        }
        let stamp = Arc::new(AtomicU64::new(now));
        active.push(stamp.clone());
        Some(InitialPermit {
            gate: self.clone(),
            stamp,
        })
    }
}

/// One initial state's admission; dropping it lets the next one in.
#[derive(Debug)]
pub(crate) struct InitialPermit {
    gate: Arc<InitialGate>,
    stamp: Arc<AtomicU64>,
}

impl InitialPermit {
    /// A page went out: the permit counts for another [`STALE_AFTER`].
    pub(crate) fn touch(&self) {
        self.stamp.store(self.gate.now_ms(), Relaxed);
    }
}

impl Drop for InitialPermit {
    fn drop(&mut self) {
        // Mark it dead before waking the waiters (the list drops it lazily).
        self.stamp.store(DEAD, Relaxed);
        self.gate.freed.notify_waiters();
    }
}
