//! Watch groups and the fan-out of applied events to the streams that hold
//! their members.
//!
//! ```text
//!   batch ──> index.stab(key) ──> group ──(filters)──> Arc<[events]> per group
//!                                   └─> member streams ──> one push per stream
//! ```
//!
//! A push lands in a stream's queue as `(group, shared events)`; the stream's
//! consumer expands it to the watchers of that group it holds. So the
//! applier's cost is O(log groups + matched groups x member streams) per
//! event, never a walk over watchers.
//!
//! Groups with an index filter are not in the main interval index: they sit
//! in one small interval index per `(index, value)`, found by hash. An event
//! only looks in the buckets of its old and new value for each index, so
//! 1,000 watchers filtered to 1,000 different nodes cost an event two hash
//! probes, not 1,000 group checks:
//!
//! ```text
//!   event (key, node: n1 -> n2) ──> filtered[node]["n1"].stab(key) ──> DELETE (moved out)
//!                               └─> filtered[node]["n2"].stab(key) ──> PUT
//! ```

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use crate::event::CachedEvent;
use bytes::Bytes;

use crate::group::GroupSpec;
use crate::index::{GroupId, GroupIndex};
use crate::metrics::CacheMetrics;
use crate::slots::IdMap;
use crate::stream::state::{ENTRY_COST, Pending, StreamShared};

#[derive(Debug)]
struct GroupEntry {
    spec: Arc<GroupSpec>,
    members: Vec<Member>,
}

/// A stream holding at least one watcher of the group.
#[derive(Debug)]
struct Member {
    stream: Arc<StreamShared>,
    /// How many of the group's watchers live on that stream.
    watchers: u32,
}

/// Every group and every open stream of one cache.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    index: GroupIndex,
    /// Groups with an index filter: per declared index, value -> the
    /// interval index of those groups' ranges.
    filtered: Vec<HashMap<Bytes, GroupIndex>>,
    groups: IdMap<GroupId, GroupEntry>,
    by_spec: HashMap<Arc<GroupSpec>, GroupId>,
    /// Open streams, for the rare broadcast (a relist).
    streams: IdMap<u64, Weak<StreamShared>>,
    next_group: GroupId,
}

/// Buffers the applier reuses from batch to batch.
#[derive(Debug, Default)]
pub(crate) struct FanoutScratch {
    per_group: IdMap<GroupId, Vec<Arc<CachedEvent>>>,
}

impl Registry {
    pub(crate) fn add_stream(&mut self, s: &Arc<StreamShared>) {
        self.streams.insert(s.id, Arc::downgrade(s));
    }

    pub(crate) fn remove_stream(&mut self, id: u64) {
        self.streams.remove(&id);
    }

    pub(crate) fn streams(&self) -> impl Iterator<Item = Arc<StreamShared>> + '_ {
        self.streams.values().filter_map(Weak::upgrade)
    }

    /// Adds one watcher of `stream` to the group for `spec`, creating it.
    pub(crate) fn join(
        &mut self,
        spec: GroupSpec,
        stream: &Arc<StreamShared>,
        metrics: &CacheMetrics,
    ) -> (GroupId, Arc<GroupSpec>) {
        let gid = match self.by_spec.get(&spec) {
            Some(g) => *g,
            None => {
                self.next_group += 1;
                let gid = self.next_group;
                let spec = Arc::new(spec);
                match &spec.filter {
                    None => self.index.insert(&spec.range, gid),
                    Some(f) => {
                        if self.filtered.len() <= f.index {
                            self.filtered.resize_with(f.index + 1, HashMap::new);
                        }
                        self.filtered[f.index]
                            .entry(f.value.clone())
                            .or_default()
                            .insert(&spec.range, gid);
                    }
                }
                self.by_spec.insert(spec.clone(), gid);
                self.groups.insert(
                    gid,
                    GroupEntry {
                        spec,
                        members: Vec::new(),
                    },
                );
                metrics.groups.fetch_add(1, Relaxed);
                gid
            }
        };
        let g = self.groups.get_mut(&gid).expect("group exists");
        match g.members.iter_mut().find(|m| m.stream.id == stream.id) {
            Some(m) => m.watchers += 1,
            None => g.members.push(Member {
                stream: stream.clone(),
                watchers: 1,
            }),
        }
        (gid, g.spec.clone())
    }

    /// Removes one watcher of stream `stream_id` from group `gid`; drops the
    /// group when it was the last.
    pub(crate) fn leave(&mut self, gid: GroupId, stream_id: u64, metrics: &CacheMetrics) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if let Some(pos) = g.members.iter().position(|m| m.stream.id == stream_id) {
            g.members[pos].watchers -= 1;
            if g.members[pos].watchers == 0 {
                g.members.swap_remove(pos);
            }
        }
        if g.members.is_empty() {
            let g = self.groups.remove(&gid).expect("present");
            match &g.spec.filter {
                None => self.index.remove(&g.spec.range, gid),
                Some(f) => {
                    if let Some(ix) = self.filtered[f.index].get_mut(f.value.as_ref()) {
                        ix.remove(&g.spec.range, gid);
                        if ix.is_empty() {
                            self.filtered[f.index].remove(f.value.as_ref());
                        }
                    }
                }
            }
            self.by_spec.remove(&g.spec);
            metrics.groups.fetch_sub(1, Relaxed);
        }
    }

    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Hands `batch` (complete revisions, ascending) to every stream with a
    /// matching watcher: one queue push per (stream, group), the events shared.
    ///
    /// Each push carries a whole batch for one group, so a stream that
    /// overflows part-way through a batch still has every watcher at a
    /// revision boundary: those whose group got in are past the batch, the
    /// others read it from the ring.
    pub(crate) fn fan_out(
        &self,
        batch: &[Arc<CachedEvent>],
        scratch: &mut FanoutScratch,
        queue_limit: usize,
        metrics: &CacheMetrics,
    ) {
        for ev in batch {
            for gid in self.index.stab(ev.key()) {
                let g = &self.groups[&gid];
                if g.spec.accepts_kind(ev.kind()) {
                    scratch.per_group.entry(gid).or_default().push(ev.clone());
                }
            }
            if self.filtered.is_empty() {
                continue;
            }
            for (by_value, (old, new)) in self.filtered.iter().zip(ev.all_index_values()) {
                let mut visit = |value: &Bytes| {
                    let Some(ix) = by_value.get(value.as_ref()) else {
                        return;
                    };
                    for gid in ix.stab(ev.key()) {
                        if let Some(out) = self.groups[&gid].spec.resolve(ev) {
                            scratch.per_group.entry(gid).or_default().push(out.clone());
                        }
                    }
                };
                if let Some(n) = new {
                    visit(n);
                }
                if let Some(o) = old
                    && new.as_ref() != Some(o)
                {
                    visit(o);
                }
            }
        }
        for (gid, events) in scratch.per_group.drain() {
            let g = &self.groups[&gid];
            let bytes: usize = events
                .iter()
                .map(|e| e.encoded_len(g.spec.prev_kv))
                .sum::<usize>()
                + ENTRY_COST;
            let shared: Arc<[Arc<CachedEvent>]> = events.into();
            for m in &g.members {
                m.stream.push_live(
                    Pending::Events {
                        group: gid,
                        events: shared.clone(),
                        bytes,
                    },
                    bytes,
                    queue_limit,
                    metrics,
                );
            }
        }
    }
}
