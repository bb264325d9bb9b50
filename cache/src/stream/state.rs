//! A stream's shared state: its watchers, their phases, the byte-bounded
//! queue the applier pushes to, and the few operations the applier and the
//! splice tasks do on it (push, wait for space, hand over). Everything
//! else in `stream` works on this state; this file depends on none of it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::event::CachedEvent;
use crate::frame::WatchFrame;
use crate::gate::InitialPermit;
use crate::group::GroupSpec;
use crate::history::History;
use crate::index::GroupId;
use crate::metrics::CacheMetrics;
use crate::slots::{IdMap, Slots};
use crate::snapshot::Snapshot;

/// One queued delivery.
#[derive(Debug)]
pub(crate) enum Pending {
    /// A batch's events for one group, shared by every stream of the group.
    Events {
        group: GroupId,
        events: Arc<[Arc<CachedEvent>]>,
        bytes: usize,
    },
    /// Events from a spliced upstream watch for one watcher.
    Direct {
        watch_id: i64,
        events: Vec<Arc<CachedEvent>>,
        bytes: usize,
    },
    /// A ready frame (created, canceled), in order with its watcher's events.
    /// Boxed: a frame is large and rare, and every queue slot is as big as
    /// the largest variant. `announces`: the watcher this frame creates.
    Control {
        frame: Box<WatchFrame>,
        announces: Option<i64>,
    },
    /// The cache relisted at `relist_rev` after the upstream compacted to
    /// `compact_revision`: watchers still below `relist_rev` are cancelled.
    Reset {
        relist_rev: i64,
        compact_revision: i64,
    },
}

/// What one queued batch costs besides its events' bytes: the queue slot.
/// Counted against the stream's byte budget, so a burst of tiny batches
/// (one per put at high rates) is bounded in memory as well as in bytes.
pub(crate) const ENTRY_COST: usize = std::mem::size_of::<Pending>();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Live,
    Catchup,
    Upstream,
    /// Streaming the initial state from a snapshot (`initial_state`); then
    /// the marker, then Catchup from the snapshot's revision + 1.
    Initial,
}

/// Where an `initial_state` watcher is in its snapshot.
#[derive(Debug)]
pub(super) struct InitialState {
    /// The snapshot at R (pinned until the initial state is out; its
    /// structure is shared with the live one, so it costs what changed
    /// since R, not a copy).
    pub(super) snap: Arc<Snapshot>,
    /// Last key handed out (pages resume after it).
    pub(super) after: Option<Bytes>,
    /// Admission ([`crate::gate::InitialGate`]), taken at the first page.
    pub(super) permit: Option<InitialPermit>,
}

#[derive(Debug)]
pub(super) struct Watcher {
    pub(super) group: GroupId,
    pub(super) spec: Arc<GroupSpec>,
    pub(super) next_rev: i64,
    pub(super) phase: Phase,
    pub(super) progress_notify: bool,
    pub(super) fragment: bool,
    /// Events went out since the last progress tick (etcd only notifies idle watchers).
    pub(super) sent_since_tick: bool,
    /// The splice task feeding an Upstream-phase watcher.
    pub(super) splice: Option<tokio::task::AbortHandle>,
    /// Its `created` response has gone out. Until then nothing else may be
    /// sent for it: the catch-up pass runs after the queue is drained only
    /// up to a byte budget, so without this a watcher created behind a
    /// large backlog could get ring events ahead of its `created` answer,
    /// and clients drop events for watch ids they do not know yet.
    pub(super) announced: bool,
    /// Initial-phase progress (boxed: rare, and most watchers never have it).
    pub(super) initial: Option<Box<InitialState>>,
}

/// The part of a stream the applier, the consumer and splice tasks share.
#[derive(Debug)]
pub(crate) struct StreamShared {
    pub(crate) id: u64,
    /// A parking_lot mutex: held only for queue pushes, watcher bookkeeping
    /// and bounded catch-up steps, never across an await, so the applier's
    /// wait on it is short.
    pub(super) state: Mutex<StreamState>,
    /// Wakes the consumer.
    pub(super) wake: Notify,
    /// Wakes splice tasks waiting for queue space.
    pub(super) space: Notify,
}

#[derive(Debug, Default)]
pub(super) struct StreamState {
    pub(super) queue: VecDeque<Pending>,
    pub(super) queued_bytes: usize,
    /// The applier dropped a batch for this stream (queue full): its Live
    /// watchers must read the ring. Cleared when one turns Live again.
    pub(super) overflowed: bool,
    pub(super) watchers: Slots<Watcher>,
    /// Group -> slots of this stream's watchers in it, to expand queued
    /// group batches.
    pub(super) groups: IdMap<GroupId, Vec<u32>>,
    /// Watchers in the Catchup phase, round robin (may hold stale ids).
    pub(super) catchup: VecDeque<i64>,
    pub(super) next_id: i64,
    pub(super) progress_requested: bool,
    /// The highest header revision this stream sent with events. The
    /// applier queues a batch before it publishes `fanout_rev`, so a pass
    /// can deliver events above the fan-out revision it loaded; a progress
    /// answer below them would say the stream went back in time.
    pub(super) sent_rev: i64,
    pub(super) closed: bool,
}

impl StreamShared {
    /// The applier's push of one batch for one group. Never waits: if the
    /// queue is over its budget the batch is not queued and the stream is
    /// marked overflowed.
    pub(crate) fn push_live(
        &self,
        item: Pending,
        bytes: usize,
        limit: usize,
        metrics: &CacheMetrics,
    ) {
        let mut st = self.state.lock();
        if st.closed || st.overflowed {
            return;
        }
        if st.queued_bytes > 0 && st.queued_bytes + bytes > limit {
            st.overflowed = true;
            metrics.slow_switches.fetch_add(1, Relaxed);
        } else {
            st.queued_bytes += bytes;
            st.queue.push_back(item);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Wakes the consumer (shutdown).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Queues a control item regardless of the byte budget (they are tiny).
    pub(crate) fn push_control(&self, p: Pending) {
        let mut st = self.state.lock();
        if !st.closed {
            st.queue.push_back(p);
        }
        drop(st);
        self.wake.notify_one();
    }
}

// === splice task access ===

/// What a splice task learns when it hands events over.
pub(crate) enum SpliceStep {
    /// The watcher is gone or the stream closed: stop.
    Gone,
    /// Events queued; keep watching upstream from `next`.
    Continue { next: i64 },
    /// The ring holds everything from here: the watcher now reads it.
    HandedOver,
}

impl StreamShared {
    /// Waits until the queue has room for a splice task's events; false if
    /// the watcher is gone.
    pub(crate) async fn wait_for_space(&self, watch_id: i64, limit: usize) -> bool {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state.lock();
                if st.closed || !st.watchers.contains_key(&watch_id) {
                    return false;
                }
                if st.queued_bytes < limit {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Hands one upstream response (complete revisions, ascending, already
    /// filtered to the watcher: `(revision, event if it matches)`) to an
    /// Upstream-phase watcher, switching it to the ring once the upstream
    /// watch reaches the newer half of what the ring holds.
    pub(crate) fn splice_deliver(
        &self,
        history: &parking_lot::RwLock<History>,
        watch_id: i64,
        mut next: i64,
        events: Vec<(i64, Option<Arc<CachedEvent>>)>,
        prev_kv: bool,
    ) -> SpliceStep {
        let mut st = self.state.lock();
        // Hand over in the newer half of the ring, not at its oldest edge:
        // under steady writes the oldest revisions are the next evicted, and
        // a watcher handed over there could fall off before its consumer
        // reads it. An empty ring hands over at its start.
        let handover = {
            let h = history.read();
            h.start() + (h.last() - h.start() + 1).max(0) / 2
        };
        let st = &mut *st;
        let Some(w) = st.watchers.get_mut(&watch_id) else {
            return SpliceStep::Gone;
        };
        if w.phase != Phase::Upstream {
            return SpliceStep::Gone;
        }
        let mut direct = Vec::new();
        let mut bytes = 0;
        let mut switch_at = None;
        // Events below `floor` were delivered before a reconnect; a revision
        // may hold several events, so `next` moves only past whole ones.
        let floor = next;
        for (rev, ev) in events {
            if rev < floor {
                continue;
            }
            if rev >= handover {
                switch_at = Some(rev);
                break;
            }
            if let Some(ev) = ev {
                bytes += ev.encoded_len(prev_kv);
                direct.push(ev);
            }
            next = rev + 1;
        }
        if !direct.is_empty() {
            st.queue.push_back(Pending::Direct {
                watch_id,
                events: direct,
                bytes,
            });
            st.queued_bytes += bytes;
        }
        let step = match switch_at {
            Some(rev) => {
                w.next_rev = rev;
                w.phase = Phase::Catchup;
                w.splice = None;
                st.catchup.push_back(watch_id);
                SpliceStep::HandedOver
            }
            None => {
                w.next_rev = next;
                SpliceStep::Continue { next }
            }
        };
        self.wake.notify_one();
        step
    }
}

/// Sleeps until `at`, or forever without one.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ticks of the progress timer never come faster than this, whatever the
/// configuration says (a zero interval disables them).
pub(crate) const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(10);
