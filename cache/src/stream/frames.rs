//! The delivery half of a watch stream ([`WatchFrames`]): waiting for
//! work, and one production pass under the stream lock (drain the queue,
//! merged per group; catch up; answer progress), written into a sink.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::error::CacheError;
use crate::event::CachedEvent;
use crate::frame::WatchFrame;
use crate::gate::STALE_AFTER;
use crate::index::GroupId;
use crate::inner::CacheInner;
use crate::stream::catchup::CatchUp;
use crate::stream::emit::{Merged, Pass, compact_cancel, emit, progress_frame};
use crate::stream::lifecycle::close;
use crate::stream::sink::{GrpcSink, Sink};
use crate::stream::state::{Pending, Phase, StreamShared, StreamState, sleep_until_opt};

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

impl WatchFrames {
    pub(super) fn new(
        shared: Arc<StreamShared>,
        cache: Arc<CacheInner>,
        interval: Duration,
    ) -> Self {
        Self {
            shared,
            cache,
            next_tick: (!interval.is_zero()).then(|| Instant::now() + interval),
            tick_due: false,
            leaves: Vec::new(),
            merged: Merged::default(),
            scratch: Vec::new(),
            initial_blocked: false,
        }
    }

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
                _ = tokio::time::sleep(STALE_AFTER / 2), if blocked => {}
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

        let tick_due = std::mem::take(&mut self.tick_due);
        st.sent_rev = st.sent_rev.max(pass.sent_rev);
        answer_progress(st, cache, fanout, tick_due, queue_left, sink);

        cache.metrics.events_out.fetch_add(pass.events, Relaxed);
        if st.queued_bytes < cfg.stream_queue_bytes {
            self.shared.space.notify_waiters();
        }
        (more || queue_left, false)
    }
}

/// The progress answers of one pass: a requested progress response
/// (deferred while any watcher is not Live), and on a timer tick one per
/// idle Live watcher that asked for `progress_notify`.
fn answer_progress<S: Sink>(
    st: &mut StreamState,
    cache: &CacheInner,
    fanout: i64,
    tick_due: bool,
    queue_left: bool,
    sink: &mut S,
) {
    // Not while batches wait in the queue: a progress answer says every
    // event up to its revision was delivered.
    if st.progress_requested && !queue_left && st.watchers.values().all(|w| w.phase == Phase::Live)
    {
        st.progress_requested = false;
        sink.frame(progress_frame(cache.header(fanout.max(st.sent_rev)), -1));
    }

    if tick_due {
        for (id, w) in st.watchers.iter_mut() {
            if w.progress_notify && w.announced && w.phase == Phase::Live && !w.sent_since_tick {
                sink.frame(progress_frame(
                    cache.header(fanout.max(w.next_rev - 1)),
                    *id,
                ));
            }
            w.sent_since_tick = false;
        }
    }
}

impl Drop for WatchFrames {
    fn drop(&mut self) {
        close(&self.cache, &self.shared);
    }
}
