//! Catch-up: watchers that read the history ring by revision cursor
//! (started in the past, or sent back by a full queue), and initial-state
//! watchers paging through their snapshot, served round robin within a
//! scan budget per pass. At the ring's end a watcher turns Live.

use std::ops::Bound;
use std::sync::Arc;

use crate::event::{CachedEvent, EventKind};
use crate::gate::InitialGate;
use crate::history::{Cursor, History};
use crate::index::GroupId;
use crate::metrics::CacheMetrics;
use crate::stream::emit::{Pass, compact_cancel, emit, progress_frame};
use crate::stream::sink::Sink;
use crate::stream::state::{Phase, StreamState, Watcher};

/// One catch-up pass over the Catchup watchers, round robin.
/// Revisions with events for the watcher per history response: etcd's
/// `watchBatchMaxRevs`.
pub(super) const WATCH_BATCH_REVS: usize = 1000;

pub(super) struct CatchUp<'a> {
    pub(super) hist: &'a History,
    /// Ring events scanned at most (bounds the time the locks are held).
    pub(super) budget: usize,
    /// Output bytes at most (a few frames), so one pass stays short.
    pub(super) allowance: usize,
    pub(super) fanout: i64,
    pub(super) scratch: &'a mut Vec<Arc<CachedEvent>>,
    pub(super) gate: &'a Arc<InitialGate>,
    /// Initial states skipped this pass for want of admission.
    pub(super) blocked: usize,
}

impl CatchUp<'_> {
    /// Returns whether work remains.
    pub(super) fn run<S: Sink>(
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
