//! Watch streams: one per client gRPC `Watch` stream, holding that stream's
//! watchers, a byte-bounded queue of pending deliveries, and the catch-up
//! logic for watchers that read the history ring by revision cursor.
//!
//! ```text
//!  applier ──push (group, Arc<[event]>)──> queue ──┐           (Live)
//!  history ring ──cursor, no copies──────────────────┼─> frames ──> gateway
//!  splice task (upstream watch) ──Direct events──────┘  (Catchup / Upstream)
//! ```
//!
//! A watcher is in one phase at a time and moves only at revision
//! boundaries, with `next_rev` meaning "every matching event below this has
//! been handed out, none at or above it":
//!
//! - `Live`: takes events from the queue (dedup by `next_rev`);
//! - `Catchup`: reads the ring from `next_rev`; at the ring's end it turns
//!   Live under the stream lock, so nothing falls between the two; if the
//!   ring no longer holds `next_rev` it is cancelled with `compact_revision`;
//! - `Upstream`: a spliced upstream watch feeds it until that watch reaches
//!   the newer half of the ring, then it turns Catchup.
//!
//! When the queue would exceed its byte budget the applier stops pushing to
//! the stream (it never waits) and all its Live watchers turn Catchup.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lookout_proto::pb::{ResponseHeader, WatchCreateRequest, watch_create_request::FilterType};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cache::CacheInner;
use crate::error::CacheError;
use crate::event::{CachedEvent, EventKind};
use crate::frame::{FrameHead, WatchFrame, write_grpc_message};
use crate::history::{Cursor, History};
use crate::index::GroupId;
use crate::keys::KeyRange;
use crate::metrics::CacheMetrics;
use crate::registry::GroupSpec;
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
enum Phase {
    Live,
    Catchup,
    Upstream,
    /// Streaming the initial state from a snapshot (`initial_state`); then
    /// the marker, then Catchup from the snapshot's revision + 1.
    Initial,
}

/// Where an `initial_state` watcher is in its snapshot.
#[derive(Debug)]
struct InitialState {
    /// The snapshot at R (pinned until the initial state is out; its
    /// structure is shared with the live one, so it costs what changed
    /// since R, not a copy).
    snap: Arc<Snapshot>,
    /// Last key handed out (pages resume after it).
    after: Option<Bytes>,
    /// Admission ([`crate::cache::InitialGate`]), taken at the first page.
    permit: Option<crate::cache::InitialPermit>,
}

#[derive(Debug)]
struct Watcher {
    group: GroupId,
    spec: Arc<GroupSpec>,
    next_rev: i64,
    phase: Phase,
    progress_notify: bool,
    fragment: bool,
    /// Events went out since the last progress tick (etcd only notifies idle watchers).
    sent_since_tick: bool,
    /// The splice task feeding an Upstream-phase watcher.
    splice: Option<tokio::task::AbortHandle>,
    /// Its `created` response has gone out. Until then nothing else may be
    /// sent for it: the catch-up pass runs after the queue is drained only
    /// up to a byte budget, so without this a watcher created behind a
    /// large backlog could get ring events ahead of its `created` answer,
    /// and clients drop events for watch ids they do not know yet.
    announced: bool,
    /// Initial-phase progress (boxed: rare, and most watchers never have it).
    initial: Option<Box<InitialState>>,
}

/// The part of a stream the applier, the consumer and splice tasks share.
#[derive(Debug)]
pub(crate) struct StreamShared {
    pub(crate) id: u64,
    /// A parking_lot mutex: held only for queue pushes, watcher bookkeeping
    /// and bounded catch-up steps, never across an await, so the applier's
    /// wait on it is short.
    state: Mutex<StreamState>,
    /// Wakes the consumer.
    wake: Notify,
    /// Wakes splice tasks waiting for queue space.
    space: Notify,
}

#[derive(Debug, Default)]
struct StreamState {
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    /// The applier dropped a batch for this stream (queue full): its Live
    /// watchers must read the ring. Cleared when one turns Live again.
    overflowed: bool,
    watchers: Slots<Watcher>,
    /// Group -> slots of this stream's watchers in it, to expand queued
    /// group batches.
    groups: IdMap<GroupId, Vec<u32>>,
    /// Watchers in the Catchup phase, round robin (may hold stale ids).
    catchup: VecDeque<i64>,
    next_id: i64,
    progress_requested: bool,
    /// The highest header revision this stream sent with events. The
    /// applier queues a batch before it publishes `fanout_rev`, so a pass
    /// can deliver events above the fan-out revision it loaded; a progress
    /// answer below them would say the stream went back in time.
    sent_rev: i64,
    closed: bool,
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

/// The control half of a watch stream: create, cancel, request progress.
/// Cheap to clone; the gateway's request-reading task holds it.
#[derive(Debug, Clone)]
pub struct WatchHandle {
    shared: Arc<StreamShared>,
    cache: Arc<CacheInner>,
}

/// The delivery half of a watch stream: yields ready `WatchResponse` frames.
/// Dropping it closes the stream and removes its watchers.
#[derive(Debug)]
pub struct WatchFrames {
    shared: Arc<StreamShared>,
    cache: Arc<CacheInner>,
    next_tick: Option<Instant>,
    tick_due: bool,
    leaves: Vec<GroupId>,
    /// Reused from pass to pass: queued group batches, merged.
    merged: Merged,
    /// Reused from pass to pass: one catch-up watcher's events.
    scratch: Vec<Arc<CachedEvent>>,
    /// The last pass left initial states waiting for admission: the next
    /// wait also listens to the gate.
    initial_blocked: bool,
}

pub(crate) fn open(cache: &Arc<CacheInner>) -> (WatchHandle, WatchFrames) {
    let shared = Arc::new(StreamShared {
        id: cache.next_stream.fetch_add(1, Relaxed),
        state: Mutex::new(StreamState::default()),
        wake: Notify::new(),
        space: Notify::new(),
    });
    cache.registry.write().add_stream(&shared);
    cache.metrics.streams.fetch_add(1, Relaxed);
    let interval = cache.config.progress_notify_interval;
    (
        WatchHandle {
            shared: shared.clone(),
            cache: cache.clone(),
        },
        WatchFrames {
            shared,
            cache: cache.clone(),
            next_tick: (!interval.is_zero()).then(|| Instant::now() + interval),
            tick_due: false,
            leaves: Vec::new(),
            merged: Merged::default(),
            scratch: Vec::new(),
            initial_blocked: false,
        },
    )
}

// === impl WatchHandle ===

impl WatchHandle {
    /// Creates a watcher as etcd's `WatchCreateRequest` describes it and
    /// returns its watch id. The `created` response (and everything after)
    /// comes out of [`WatchFrames::next`], in order.
    ///
    /// `start_revision`: `<= 0` is "now"; inside the history ring replays from
    /// it; older but not compacted upstream is served by an upstream watch
    /// spliced in by revision; compacted upstream ends in a cancel with
    /// `compact_revision`, as etcd does.
    ///
    /// # Errors
    /// [`CacheError::NotReady`] before the initial list; [`CacheError::OutOfScope`]
    /// for a range outside the cached prefixes; [`CacheError::EmptyWatchRange`]
    /// and [`CacheError::DuplicateWatchId`] (etcd's created+canceled response
    /// with watch id -1 is queued for these); [`CacheError::Closed`].
    pub fn create(&self, req: &WatchCreateRequest) -> Result<i64, CacheError> {
        let cache = &self.cache;
        if !cache.is_ready() {
            return Err(CacheError::NotReady);
        }
        let range = KeyRange::from_request(&req.key, &req.range_end);
        if range.is_empty() {
            self.queue_create_failure(CacheError::EmptyWatchRange);
            return Err(CacheError::EmptyWatchRange);
        }
        if !cache.covers(&range) {
            return Err(CacheError::OutOfScope);
        }
        let filter = cache
            .config
            .indexes
            .resolve(&range, &req.index, &req.value)?;
        // An initial state is never older than the revision the client
        // says it has seen (start_revision - 1): the snapshot taken below
        // is at or after the fan-out revision read here.
        if req.initial_state && req.start_revision > 1 {
            let cached = cache.fanout_rev.load(Acquire);
            if cached < req.start_revision - 1 {
                return Err(CacheError::InitialStateBehind {
                    wanted: req.start_revision,
                    needed: req.start_revision - 1,
                    cached,
                });
            }
        }
        let spec = GroupSpec {
            range,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            filter,
        };
        // Lock order everywhere: registry -> stream -> history. The registry
        // write lock also keeps the applier's fan-out out while we pick the
        // watcher's starting point.
        let mut reg = cache.registry.write();
        let mut st = self.shared.state.lock();
        if st.closed {
            return Err(CacheError::Closed);
        }
        let id = if req.watch_id == 0 {
            while st.watchers.contains_key(&st.next_id) {
                st.next_id += 1;
            }
            st.next_id += 1;
            st.next_id - 1
        } else if st.watchers.contains_key(&req.watch_id) {
            drop(st);
            drop(reg);
            self.queue_create_failure(CacheError::DuplicateWatchId);
            return Err(CacheError::DuplicateWatchId);
        } else {
            req.watch_id
        };
        let (group, spec) = reg.join(spec, &self.shared, &cache.metrics);
        let fanout = cache.fanout_rev.load(Acquire);
        let ring_start = cache.history.read().start();
        let start = req.start_revision;
        // The initial state is the snapshot at R; the watcher then reads the
        // ring from R + 1 (taken under the registry lock, so no batch above
        // R can be fanned out before the watcher exists).
        let initial = req.initial_state.then(|| cache.snapshot_now()).map(|snap| {
            Box::new(InitialState {
                snap,
                after: None,
                permit: None,
            })
        });
        let (phase, next_rev) = if let Some(i) = &initial {
            (Phase::Initial, i.snap.revision() + 1)
        } else if start <= 0 {
            (Phase::Live, fanout + 1)
        } else if start > fanout {
            (Phase::Live, start)
        } else if start >= ring_start {
            (Phase::Catchup, start)
        } else {
            (Phase::Upstream, start)
        };
        // A stream already over budget gets no live pushes: start by reading
        // the ring, which turns Live (and clears the overflow) at its end.
        let phase = if phase == Phase::Live && st.overflowed {
            Phase::Catchup
        } else {
            phase
        };
        let created_rev = initial.as_ref().map_or(fanout, |i| i.snap.revision());
        let created = WatchFrame::new(
            &FrameHead {
                header: cache.header(created_rev),
                watch_id: id,
                created: true,
                ..Default::default()
            },
            Vec::new(),
            false,
        );
        st.queue.push_back(Pending::Control {
            frame: Box::new(created),
            announces: Some(id),
        });
        let slot = st.watchers.insert(
            id,
            Watcher {
                group,
                spec: spec.clone(),
                next_rev,
                phase,
                progress_notify: req.progress_notify,
                fragment: req.fragment,
                sent_since_tick: false,
                splice: None,
                announced: false,
                initial,
            },
        );
        st.groups.entry(group).or_default().push(slot);
        if matches!(phase, Phase::Catchup | Phase::Initial) {
            st.catchup.push_back(id);
        }
        cache.metrics.watchers.fetch_add(1, Relaxed);
        if phase == Phase::Upstream {
            let h = crate::splice::spawn(cache.clone(), self.shared.clone(), id, spec, start);
            st.watchers.get_mut(&id).expect("just inserted").splice = Some(h);
        }
        drop(st);
        drop(reg);
        self.shared.wake.notify_one();
        Ok(id)
    }

    /// Cancels watcher `watch_id`; queues etcd's `canceled` response. False
    /// when no such watcher exists (etcd then answers nothing).
    pub fn cancel(&self, watch_id: i64) -> bool {
        let fanout = self.cache.fanout_rev.load(Acquire);
        let frame = WatchFrame::new(
            &FrameHead {
                header: self.cache.header(fanout),
                watch_id,
                canceled: true,
                ..Default::default()
            },
            Vec::new(),
            false,
        );
        remove_watcher(&self.cache, &self.shared, watch_id, frame)
    }

    /// etcd's `WatchProgressRequest`: a response with watch id -1 and a
    /// revision every watcher on the stream has fully received; deferred
    /// while any watcher is still catching up (as etcd >= 3.4.25 does).
    pub fn request_progress(&self) {
        let mut st = self.shared.state.lock();
        st.progress_requested = true;
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Closes the stream: every watcher is removed, `WatchFrames::next` ends.
    pub fn close(&self) {
        close(&self.cache, &self.shared);
    }

    /// etcd's answer to a create its watch stream refuses: created +
    /// canceled, watch id -1, the mvcc error's text as `cancel_reason`.
    fn queue_create_failure(&self, e: CacheError) {
        self.refuse(e.to_string());
    }

    /// Answers a create the caller will not pass to the cache (refused by
    /// the gateway: out of scope, over capacity) as etcd answers a create it
    /// cannot serve: created + canceled, watch id -1, with `reason`. The
    /// answer is queued in order with the other creates' answers, which
    /// clients match to their requests by position.
    pub fn refuse(&self, reason: String) {
        self.refuse_with_id(-1, reason)
    }

    /// [`WatchHandle::refuse`] naming the watch id the client asked for
    /// (etcd's answer to a watch outside the caller's permissions).
    pub fn refuse_with_id(&self, watch_id: i64, reason: String) {
        let fanout = self.cache.fanout_rev.load(Acquire);
        let frame = WatchFrame::new(
            &FrameHead {
                header: self.cache.header(fanout),
                watch_id,
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            },
            Vec::new(),
            false,
        );
        self.shared.push_control(Pending::Control {
            frame: Box::new(frame),
            announces: None,
        });
    }
}

/// Removes a watcher and queues `frame` (its cancel response) after whatever
/// was queued for it. Used by cancel, splice compaction and splice failures.
pub(crate) fn remove_watcher(
    cache: &CacheInner,
    shared: &StreamShared,
    watch_id: i64,
    frame: WatchFrame,
) -> bool {
    let mut reg = cache.registry.write();
    let mut st = shared.state.lock();
    let Some((slot, w)) = st.watchers.remove(&watch_id) else {
        return false;
    };
    if let Some(h) = &w.splice {
        h.abort();
    }
    if let Some(ids) = st.groups.get_mut(&w.group) {
        ids.retain(|s| *s != slot);
        if ids.is_empty() {
            st.groups.remove(&w.group);
        }
    }
    st.queue.push_back(Pending::Control {
        frame: Box::new(frame),
        announces: None,
    });
    reg.leave(w.group, shared.id, &cache.metrics);
    cache.metrics.watchers.fetch_sub(1, Relaxed);
    drop(st);
    drop(reg);
    shared.wake.notify_one();
    shared.space.notify_waiters();
    true
}

fn close(cache: &CacheInner, shared: &StreamShared) {
    let mut reg = cache.registry.write();
    let mut st = shared.state.lock();
    if st.closed {
        return;
    }
    st.closed = true;
    for (_, w) in st.watchers.drain() {
        if let Some(h) = &w.splice {
            h.abort();
        }
        reg.leave(w.group, shared.id, &cache.metrics);
        cache.metrics.watchers.fetch_sub(1, Relaxed);
    }
    st.groups.clear();
    st.catchup.clear();
    st.queue.clear();
    st.queued_bytes = 0;
    reg.remove_stream(shared.id);
    cache.metrics.streams.fetch_sub(1, Relaxed);
    drop(st);
    drop(reg);
    shared.wake.notify_one();
    shared.space.notify_waiters();
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

// === impl WatchFrames ===

impl WatchFrames {
    /// Waits until frames are ready and appends them to `out` (per watcher
    /// in order; `created` before events, events before `canceled`).
    ///
    /// # Errors
    /// [`CacheError::Closed`] once the stream or the cache is closed.
    pub async fn next(&mut self, out: &mut Vec<WatchFrame>) -> Result<(), CacheError> {
        self.next_into(out, usize::MAX).await.map(|_| ())
    }

    /// The gRPC delivery path: waits until frames are ready and writes them
    /// into `buf` as gRPC messages (5-byte prefix, head, shared event bytes),
    /// stopping once about `soft_limit` bytes are written (a single frame
    /// may exceed it). Returns the number of messages written. Nothing is
    /// allocated per frame: a delivery is a few varints and the events'
    /// `memcpy`.
    ///
    /// # Errors
    /// [`CacheError::Closed`] once the stream or the cache is closed.
    pub async fn next_grpc(
        &mut self,
        buf: &mut BytesMut,
        soft_limit: usize,
    ) -> Result<usize, CacheError> {
        let mut sink = GrpcSink {
            buf,
            frames: 0,
            reserve: soft_limit.saturating_add(soft_limit >> 3).min(4 << 20),
        };
        self.next_into(&mut sink, soft_limit).await
    }

    async fn next_into<S: Sink>(
        &mut self,
        sink: &mut S,
        soft_limit: usize,
    ) -> Result<usize, CacheError> {
        let shared = self.shared.clone();
        let gate = self.cache.initial_gate.clone();
        loop {
            let notified = shared.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let freed = gate.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let (n, more, closed) = self.produce(sink, soft_limit);
            if n > 0 {
                return Ok(n);
            }
            if closed || self.cache.is_shut_down() {
                return Err(CacheError::Closed);
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            let blocked = self.initial_blocked;
            let tick = self.next_tick;
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut freed, if blocked => {}
                // A permit holder that stalls stops counting after a while
                // without telling anyone: look again.
                _ = tokio::time::sleep(crate::cache::STALE_AFTER / 2), if blocked => {}
                _ = sleep_until_opt(tick) => {
                    self.tick_due = true;
                    self.next_tick = Some(Instant::now() + self.cache.config.progress_notify_interval);
                }
            }
        }
    }

    /// Takes whatever frames are ready now, without waiting. Returns whether
    /// anything was added (a gateway can batch writes with it).
    ///
    /// # Errors
    /// [`CacheError::Closed`] once the stream is closed.
    pub fn try_next(&mut self, out: &mut Vec<WatchFrame>) -> Result<bool, CacheError> {
        let (n, _, closed) = self.produce(out, usize::MAX);
        if closed && n == 0 {
            return Err(CacheError::Closed);
        }
        Ok(n > 0)
    }

    /// The stream's id (stable for its lifetime; for logs).
    pub fn stream_id(&self) -> u64 {
        self.shared.id
    }

    /// One pass (under the stream lock, then group leaves under the
    /// registry lock). Returns (frames produced, more work pending, closed).
    fn produce<S: Sink>(&mut self, sink: &mut S, soft_limit: usize) -> (usize, bool, bool) {
        let before = sink.frames();
        let (more, closed) = self.produce_locked(sink, soft_limit);
        if !self.leaves.is_empty() {
            let mut reg = self.cache.registry.write();
            for g in self.leaves.drain(..) {
                reg.leave(g, self.shared.id, &self.cache.metrics);
            }
        }
        let n = sink.frames() - before;
        if n > 0 {
            self.cache.metrics.deliveries.fetch_add(n as u64, Relaxed);
        }
        (n, more, closed)
    }

    /// Drains the queue (merging each group's pending batches so a watcher
    /// gets one response for them), catches up, answers progress.
    /// Returns (more work pending, stream closed).
    fn produce_locked<S: Sink>(&mut self, sink: &mut S, soft_limit: usize) -> (bool, bool) {
        // At least one item per pass, whatever the caller asked for.
        let soft_limit = soft_limit.max(1);
        let cache = &*self.cache;
        let cfg = &cache.config;
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        if st.closed {
            return (false, true);
        }
        // Everything the applier fanned out up to `fanout` is in the queue
        // (or was dropped for overflow, which sends watchers to the ring).
        let fanout = cache.fanout_rev.load(Acquire);
        let max = cfg.max_frame_bytes.max(1);
        let mut pass = Pass {
            header: cache.header(0),
            max,
            compacted: cache.compacted.load(Acquire),
            bytes: 0,
            events: 0,
            header_rev: 0,
            sent_rev: 0,
        };
        let merged = &mut self.merged;

        // What the merged batches will expand to (bytes x this stream's
        // watchers in the group): the drain stops near `soft_limit` of
        // output, so a backlog never turns into one huge buffer.
        let mut merged_out = 0usize;
        while pass.bytes + merged_out < soft_limit {
            let Some(p) = st.queue.pop_front() else { break };
            match p {
                Pending::Events {
                    group,
                    events,
                    bytes,
                } => {
                    st.queued_bytes -= bytes;
                    let members = st.groups.get(&group).map_or(0, Vec::len);
                    merged_out = merged_out.saturating_add(bytes.saturating_mul(members));
                    merged.add(group, &events);
                }
                Pending::Direct {
                    watch_id,
                    events,
                    bytes,
                } => {
                    st.queued_bytes -= bytes;
                    if let Some(w) = st.watchers.get_mut(&watch_id) {
                        // History read from the upstream: etcd's header,
                        // as for the ring's (see `CatchUp::run`).
                        let last = events.last().map_or(0, |e| e.revision());
                        pass.header_rev = fanout.max(last);
                        emit(&mut pass, sink, watch_id, w, &events);
                        pass.header_rev = 0;
                    }
                }
                Pending::Control { frame, announces } => {
                    merged.flush(st, &mut pass, sink);
                    merged_out = 0;
                    sink.frame(*frame);
                    if let Some(w) = announces.and_then(|id| st.watchers.get_mut(&id)) {
                        w.announced = true;
                    }
                }
                Pending::Reset {
                    relist_rev,
                    compact_revision,
                } => {
                    merged.flush(st, &mut pass, sink);
                    merged_out = 0;
                    let doomed: Vec<i64> = st
                        .watchers
                        .iter()
                        .filter(|(_, w)| {
                            w.announced && w.phase != Phase::Upstream && w.next_rev <= relist_rev
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    for id in doomed {
                        compact_cancel(
                            st,
                            id,
                            compact_revision,
                            &pass,
                            sink,
                            &mut self.leaves,
                            &cache.metrics,
                        );
                    }
                }
            }
        }
        merged.flush(st, &mut pass, sink);
        let queue_left = !st.queue.is_empty();
        // A burst can grow the queue to thousands of slots; give them back
        // once it is drained so an idle stream stays small.
        if !queue_left && st.queue.capacity() > 256 {
            st.queue.shrink_to(16);
        }

        if st.overflowed {
            for (id, w) in st.watchers.iter_mut() {
                if w.phase == Phase::Live {
                    w.phase = Phase::Catchup;
                    st.catchup.push_back(*id);
                }
            }
        }

        let more = if st.catchup.is_empty() {
            false
        } else {
            let hist = cache.history.read();
            // Catch-up gets its own allowance, so a busy queue cannot starve it.
            let allowance = max.saturating_mul(4).min(soft_limit);
            let mut cu = CatchUp {
                hist: &hist,
                budget: cfg.catchup_scan_budget,
                allowance,
                fanout,
                scratch: &mut self.scratch,
                gate: &cache.initial_gate,
                blocked: 0,
            };
            let more = cu.run(st, &mut pass, sink, &mut self.leaves, &cache.metrics);
            self.initial_blocked = cu.blocked > 0;
            more
        };

        st.sent_rev = st.sent_rev.max(pass.sent_rev);
        // Not while batches wait in the queue: a progress answer says every
        // event up to its revision was delivered.
        if st.progress_requested
            && !queue_left
            && st.watchers.values().all(|w| w.phase == Phase::Live)
        {
            st.progress_requested = false;
            sink.frame(progress_frame(cache.header(fanout.max(st.sent_rev)), -1));
        }

        if self.tick_due {
            self.tick_due = false;
            for (id, w) in st.watchers.iter_mut() {
                if w.progress_notify && w.announced && w.phase == Phase::Live && !w.sent_since_tick
                {
                    sink.frame(progress_frame(
                        cache.header(fanout.max(w.next_rev - 1)),
                        *id,
                    ));
                }
                w.sent_since_tick = false;
            }
        }

        cache.metrics.events_out.fetch_add(pass.events, Relaxed);
        if st.queued_bytes < cfg.stream_queue_bytes {
            self.shared.space.notify_waiters();
        }
        (more || queue_left, false)
    }
}

/// Sleeps until `at`, or forever without one.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for WatchFrames {
    fn drop(&mut self) {
        close(&self.cache, &self.shared);
    }
}

fn progress_frame(header: ResponseHeader, watch_id: i64) -> WatchFrame {
    WatchFrame::new(
        &FrameHead {
            header,
            watch_id,
            ..Default::default()
        },
        Vec::new(),
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn compact_cancel<S: Sink>(
    st: &mut StreamState,
    id: i64,
    compact_revision: i64,
    pass: &Pass,
    sink: &mut S,
    leaves: &mut Vec<GroupId>,
    metrics: &CacheMetrics,
) {
    let Some((slot, w)) = st.watchers.remove(&id) else {
        return;
    };
    if let Some(h) = &w.splice {
        h.abort();
    }
    if let Some(ids) = st.groups.get_mut(&w.group) {
        ids.retain(|s| *s != slot);
        if ids.is_empty() {
            st.groups.remove(&w.group);
        }
    }
    // etcd's compact cancel carries no revision in its header
    // (`chooseAll` sends only the compact revision), and clients read
    // `compact_revision`.
    let mut header = pass.header;
    header.revision = 0;
    sink.frame(WatchFrame::new(
        &FrameHead {
            header,
            watch_id: id,
            canceled: true,
            compact_revision,
            ..Default::default()
        },
        Vec::new(),
        false,
    ));
    leaves.push(w.group);
    metrics.watchers.fetch_sub(1, Relaxed);
    metrics.compact_cancels.fetch_add(1, Relaxed);
}

/// One catch-up pass over the Catchup watchers, round robin.
/// Revisions with events for the watcher per history response: etcd's
/// `watchBatchMaxRevs`.
const WATCH_BATCH_REVS: usize = 1000;

struct CatchUp<'a> {
    hist: &'a History,
    /// Ring events scanned at most (bounds the time the locks are held).
    budget: usize,
    /// Output bytes at most (a few frames), so one pass stays short.
    allowance: usize,
    fanout: i64,
    scratch: &'a mut Vec<Arc<CachedEvent>>,
    gate: &'a Arc<crate::cache::InitialGate>,
    /// Initial states skipped this pass for want of admission.
    blocked: usize,
}

impl CatchUp<'_> {
    /// Returns whether work remains.
    fn run<S: Sink>(
        &mut self,
        st: &mut StreamState,
        pass: &mut Pass,
        sink: &mut S,
        leaves: &mut Vec<GroupId>,
        metrics: &CacheMetrics,
    ) -> bool {
        let hist = self.hist;
        let mut out_bytes = 0usize;
        let mut rounds = st.catchup.len();
        while rounds > 0 && self.budget > 0 && out_bytes < self.allowance {
            rounds -= 1;
            let Some(id) = st.catchup.pop_front() else {
                break;
            };
            let Some(w) = st.watchers.get_mut(&id) else {
                continue;
            };
            if matches!(w.phase, Phase::Initial | Phase::Catchup) && !w.announced {
                // Its `created` is still queued behind a backlog; a later
                // pass reaches it first.
                st.catchup.push_back(id);
                continue;
            }
            if w.phase == Phase::Initial {
                let init = w.initial.as_mut().expect("Initial phase has its state");
                if init.permit.is_none() {
                    match self.gate.try_enter() {
                        Some(p) => init.permit = Some(p),
                        None => {
                            self.blocked += 1;
                            st.catchup.push_back(id);
                            continue;
                        }
                    }
                }
                let room = self.allowance.saturating_sub(out_bytes).max(1);
                out_bytes += self.initial_page(pass, sink, id, w, room);
                st.catchup.push_back(id);
                continue;
            }
            if w.phase != Phase::Catchup {
                continue;
            }
            let mut i = match hist.cursor(w.next_rev) {
                Cursor::At(i) => i,
                Cursor::FellOff(compact) => {
                    compact_cancel(st, id, compact, pass, sink, leaves, metrics);
                    continue;
                }
            };
            self.scratch.clear();
            let mut last_rev = None;
            // etcd answers history in responses holding the events of at
            // most WATCH_BATCH_REVS revisions that touch the watcher's range
            // (`watchBatchMaxRevs`); the next such revision starts the next.
            let (mut batch_revs, mut last_in_range) = (0, None);
            let finished = loop {
                let Some(ev) = hist.get(i) else {
                    break true;
                };
                // Stop only between revisions, so `next_rev` stays exact.
                if (self.budget == 0 || out_bytes >= self.allowance)
                    && last_rev != Some(ev.revision())
                {
                    w.next_rev = ev.revision();
                    break false;
                }
                if w.spec.range.contains(ev.key()) && last_in_range != Some(ev.revision()) {
                    if batch_revs == WATCH_BATCH_REVS {
                        w.next_rev = ev.revision();
                        break false;
                    }
                    batch_revs += 1;
                    last_in_range = Some(ev.revision());
                }
                if let Some(out) = w.spec.resolve(ev) {
                    out_bytes += out.encoded_len(w.spec.prev_kv);
                    self.scratch.push(out.clone());
                }
                last_rev = Some(ev.revision());
                self.budget = self.budget.saturating_sub(1);
                i += 1;
            };
            // etcd's header on history is the store's revision when it read
            // it (`syncWatchers`), not the revision of the batch's last event.
            let last = self.scratch.last().map_or(0, |e| e.revision());
            pass.header_rev = self.fanout.max(last);
            emit(pass, sink, id, w, self.scratch);
            pass.header_rev = 0;
            if finished {
                // Every event in the ring is handled; the applier has pushed, or
                // will push after this lock is released, everything above it.
                w.next_rev = w.next_rev.max(hist.last_event() + 1);
                w.phase = Phase::Live;
                st.overflowed = false;
            } else {
                st.catchup.push_back(id);
            }
        }
        self.scratch.clear();
        // Initial states waiting for admission are not work this stream
        // can do now: it waits for the gate instead of spinning.
        st.catchup.len() > self.blocked
    }

    /// One page of an Initial-phase watcher's snapshot (about `room` bytes,
    /// at least one entry), as PUT events in responses with header revision
    /// R; after the last page, the marker (no events, revision R) and the
    /// switch to reading the ring from R + 1. Returns the bytes handed out.
    fn initial_page<S: Sink>(
        &mut self,
        pass: &mut Pass,
        sink: &mut S,
        id: i64,
        w: &mut Watcher,
        room: usize,
    ) -> usize {
        let init = w.initial.as_mut().expect("Initial phase has its state");
        if let Some(p) = &init.permit {
            p.touch();
        }
        let snap = init.snap.clone();
        let range = &w.spec.range;
        let lower = match &init.after {
            Some(k) => Bound::Excluded(k.as_ref()),
            None => Bound::Included(range.start().as_ref()),
        };
        let upper = match range.end() {
            Some(e) => Bound::Excluded(e.as_ref()),
            None => Bound::Unbounded,
        };
        let entries = match &w.spec.filter {
            None => Some(snap.data()),
            Some(f) => snap.index_entries(f.index, &f.value),
        };
        self.scratch.clear();
        let mut bytes = 0;
        let mut done = true;
        if let Some(map) = entries.filter(|_| w.spec.accepts_kind(EventKind::Put)) {
            for (_, kv) in map.range::<_, [u8]>((lower, upper)) {
                if bytes >= room || self.budget == 0 {
                    done = false;
                    break;
                }
                let ev = Arc::new(CachedEvent::shared(EventKind::Put, kv.clone(), None));
                bytes += ev.encoded_len(false);
                self.scratch.push(ev);
                self.budget = self.budget.saturating_sub(1);
                init.after = Some(kv.key.clone());
            }
        }
        let r = snap.revision();
        pass.header_rev = r;
        emit(pass, sink, id, w, self.scratch);
        pass.header_rev = 0;
        self.scratch.clear();
        if done {
            // "Initial state complete at R": a response for this watch id
            // with no events; nothing live has been handed to it yet.
            let mut header = pass.header;
            header.revision = r;
            sink.frame(progress_frame(header, id));
            w.initial = None;
            w.phase = Phase::Catchup;
        }
        bytes
    }
}

// === frame building ===

/// Where a pass puts its frames: `Vec<WatchFrame>` (the general API) or a
/// gRPC byte buffer (the gateway's hot path).
trait Sink {
    /// A pre-built frame (created, canceled, progress).
    fn frame(&mut self, f: WatchFrame);
    /// A response carrying `events` (already cut to the frame size).
    fn events(&mut self, head: &FrameHead, events: &[Arc<CachedEvent>], prev_kv: bool);
    /// Frames handed out so far.
    fn frames(&self) -> usize;
}

impl Sink for Vec<WatchFrame> {
    fn frame(&mut self, f: WatchFrame) {
        self.push(f);
    }

    fn events(&mut self, head: &FrameHead, events: &[Arc<CachedEvent>], prev_kv: bool) {
        self.push(WatchFrame::new(head, events.to_vec(), prev_kv));
    }

    fn frames(&self) -> usize {
        self.len()
    }
}

/// Writes gRPC messages straight into the connection's buffer.
struct GrpcSink<'a> {
    buf: &'a mut BytesMut,
    frames: usize,
    /// Reserved at the first write of a pass (about the caller's soft
    /// limit): one allocation of about a chunk, not a doubling series, and
    /// none at all while the stream waits, so an idle stream pins no buffer.
    reserve: usize,
}

impl GrpcSink<'_> {
    fn room(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.reserve);
        }
    }
}

impl Sink for GrpcSink<'_> {
    fn frame(&mut self, f: WatchFrame) {
        self.room();
        f.write_grpc(self.buf);
        self.frames += 1;
    }

    fn events(&mut self, head: &FrameHead, events: &[Arc<CachedEvent>], prev_kv: bool) {
        self.room();
        write_grpc_message(self.buf, head, events, prev_kv);
        self.frames += 1;
    }

    fn frames(&self) -> usize {
        self.frames
    }
}

/// What one pass knows while cutting frames.
struct Pass {
    /// Ids for every header; `revision` is set per frame.
    header: ResponseHeader,
    max: usize,
    /// The store's compaction revision as far as the cache knows it.
    compacted: i64,
    /// Event bytes handed out this pass.
    bytes: usize,
    events: u64,
    /// Header revision of event responses; 0: the last event's revision
    /// (initial-state pages say R instead, their events being older, and
    /// history replays the fan-out revision, as etcd's).
    header_rev: i64,
    /// The highest header revision sent in this pass.
    sent_rev: i64,
}

/// Hands `events` (ascending, every one for this watcher) to watcher `id`
/// in frames of at most `pass.max` bytes, cutting between revisions (or
/// inside one, with `fragment`, when the watcher asked for it).
fn emit<S: Sink>(
    pass: &mut Pass,
    sink: &mut S,
    id: i64,
    w: &mut Watcher,
    events: &[Arc<CachedEvent>],
) {
    if events.is_empty() {
        return;
    }
    w.sent_since_tick = true;
    // etcd reads prev_kv at revision - 1 when it sends; below the store's
    // compaction that read fails and the event goes without it.
    let wants_prev = w.spec.prev_kv;
    let compacted = pass.compacted;
    let prev_at = |ev: &CachedEvent| wants_prev && ev.revision() > compacted;
    let mut start = 0;
    let mut bytes = 0;
    let mut pk = prev_at(&events[0]);
    for (i, ev) in events.iter().enumerate() {
        let this_pk = prev_at(ev);
        if this_pk != pk {
            if i > start {
                pass.out(sink, id, &events[start..i], pk, false, bytes);
                start = i;
                bytes = 0;
            }
            pk = this_pk;
        }
        let len = ev.encoded_len(pk);
        if i > start && bytes + len > pass.max {
            let same_rev = events[i - 1].revision() == ev.revision();
            if !same_rev || w.fragment {
                pass.out(sink, id, &events[start..i], pk, same_rev, bytes);
                start = i;
                bytes = 0;
            }
        }
        bytes += len;
    }
    pass.out(sink, id, &events[start..], pk, false, bytes);
}

impl Pass {
    fn out<S: Sink>(
        &mut self,
        sink: &mut S,
        id: i64,
        events: &[Arc<CachedEvent>],
        prev_kv: bool,
        fragment: bool,
        bytes: usize,
    ) {
        let mut header = self.header;
        header.revision = if self.header_rev > 0 {
            self.header_rev
        } else {
            events.last().map_or(0, |e| e.revision())
        };
        self.sent_rev = self.sent_rev.max(header.revision);
        sink.events(
            &FrameHead {
                header,
                watch_id: id,
                fragment,
                ..Default::default()
            },
            events,
            prev_kv,
        );
        self.bytes += bytes;
        self.events += events.len() as u64;
    }
}

/// The queue's group batches of one pass, merged per group: a watcher gets
/// one response for everything its group received since the last pass.
#[derive(Debug, Default)]
struct Merged {
    /// `(group, events ascending)`; only the first `len` entries are in use
    /// (the vectors keep their capacity from pass to pass).
    groups: Vec<(GroupId, Vec<Arc<CachedEvent>>)>,
    len: usize,
}

impl Merged {
    fn add(&mut self, group: GroupId, events: &[Arc<CachedEvent>]) {
        let slot = match self.groups[..self.len]
            .iter()
            .position(|(g, _)| *g == group)
        {
            Some(i) => i,
            None => {
                if self.len == self.groups.len() {
                    self.groups.push((group, Vec::new()));
                }
                self.groups[self.len].0 = group;
                self.len += 1;
                self.len - 1
            }
        };
        self.groups[slot].1.extend(events.iter().cloned());
    }

    /// Hands every merged batch to the group's Live watchers on this stream.
    fn flush<S: Sink>(&mut self, st: &mut StreamState, pass: &mut Pass, sink: &mut S) {
        let StreamState {
            groups, watchers, ..
        } = st;
        for (group, events) in &mut self.groups[..self.len] {
            let last_rev = events.last().map_or(0, |e| e.revision());
            if let Some(slots) = groups.get(group) {
                for &slot in slots {
                    let Some((id, w)) = watchers.slot_mut(slot) else {
                        continue;
                    };
                    if w.phase != Phase::Live {
                        continue;
                    }
                    let from = events.partition_point(|e| e.revision() < w.next_rev);
                    emit(pass, sink, id, w, &events[from..]);
                    w.next_rev = w.next_rev.max(last_rev + 1);
                }
            }
            events.clear();
        }
        self.len = 0;
    }
}

/// Ticks of the progress timer never come faster than this, whatever the
/// configuration says (a zero interval disables them).
pub(crate) const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(10);
