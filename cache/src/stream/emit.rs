//! Cutting events into watch responses: a pass's header and frame size,
//! the per-watcher split into frames (prev_kv below the compaction,
//! fragments), the merged group batches of a pass, and the ready-made
//! progress and compact-cancel responses.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use lookout_proto::pb::ResponseHeader;

use crate::event::CachedEvent;
use crate::frame::{FrameHead, WatchFrame};
use crate::index::GroupId;
use crate::metrics::CacheMetrics;
use crate::stream::sink::Sink;
use crate::stream::state::{Phase, StreamState, Watcher};

pub(super) fn progress_frame(header: ResponseHeader, watch_id: i64) -> WatchFrame {
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
pub(super) fn compact_cancel<S: Sink>(
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

/// What one pass knows while cutting frames.
pub(super) struct Pass {
    /// Ids for every header; `revision` is set per frame.
    pub(super) header: ResponseHeader,
    pub(super) max: usize,
    /// The store's compaction revision as far as the cache knows it.
    pub(super) compacted: i64,
    /// Event bytes handed out this pass.
    pub(super) bytes: usize,
    pub(super) events: u64,
    /// Header revision of event responses; 0: the last event's revision
    /// (initial-state pages say R instead, their events being older, and
    /// history replays the fan-out revision, as etcd's).
    pub(super) header_rev: i64,
    /// The highest header revision sent in this pass.
    pub(super) sent_rev: i64,
}

/// Hands `events` (ascending, every one for this watcher) to watcher `id`
/// in frames of at most `pass.max` bytes, cutting between revisions (or
/// inside one, with `fragment`, when the watcher asked for it).
pub(super) fn emit<S: Sink>(
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
pub(super) struct Merged {
    /// `(group, events ascending)`; only the first `len` entries are in use
    /// (the vectors keep their capacity from pass to pass).
    groups: Vec<(GroupId, Vec<Arc<CachedEvent>>)>,
    len: usize,
}

impl Merged {
    pub(super) fn add(&mut self, group: GroupId, events: &[Arc<CachedEvent>]) {
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
    pub(super) fn flush<S: Sink>(&mut self, st: &mut StreamState, pass: &mut Pass, sink: &mut S) {
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
