//! The event history ring: recent events in revision order, bounded by count
//! and by bytes, so watchers can resume and slow watchers can catch up by a
//! revision cursor without any per-watcher copy.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::event::CachedEvent;

/// Recent events, complete for every revision in `[start, last]`.
#[derive(Debug)]
pub(crate) struct History {
    events: VecDeque<Arc<CachedEvent>>,
    bytes: usize,
    /// Every event with a revision in `[start, last]` is held; below `start`
    /// the ring knows nothing.
    start: i64,
    /// The cache's applied revision (events or upstream progress).
    last: i64,
    /// Revision of the newest event held or evicted: events are only ever
    /// appended above it, and a watcher handed over from the ring resumes
    /// above it, never above a progress-only `last`.
    last_event: i64,
    /// `compact_revision` told to a watcher whose cursor is below `start`.
    floor_report: i64,
    max_events: usize,
    max_bytes: usize,
}

/// Where a revision cursor stands against the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Events from this index on have revisions `>= rev`.
    At(usize),
    /// The revision is older than the ring holds: cancel with this
    /// `compact_revision`.
    FellOff(i64),
}

impl History {
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            start: 1,
            last: 0,
            last_event: 0,
            floor_report: 0,
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Empties the ring at revision `at` (initial list or relist);
    /// `compact_revision` is what watchers below it are told.
    pub(crate) fn reset(&mut self, at: i64, compact_revision: i64) {
        self.events.clear();
        self.bytes = 0;
        self.start = at + 1;
        self.last = at;
        self.last_event = at;
        self.floor_report = compact_revision;
    }

    /// Appends a batch of complete revisions (ascending, all above
    /// `last_event`) and records the ring as complete through `through`.
    /// Evicts whole revisions from the front to stay within both budgets.
    pub(crate) fn append(&mut self, batch: &[Arc<CachedEvent>], through: i64) {
        debug_assert!(batch.first().is_none_or(|e| e.revision() > self.last_event));
        for ev in batch {
            debug_assert!(
                ev.revision() >= self.last_event,
                "history must stay ordered"
            );
            self.last_event = ev.revision();
            self.bytes += ev.weight();
            self.events.push_back(ev.clone());
        }
        self.last = self.last.max(through);
        self.evict();
    }

    /// Upstream progress: complete through `rev` without events.
    pub(crate) fn advance(&mut self, rev: i64) {
        self.last = self.last.max(rev);
    }

    /// The upstream compacted at `rev`: revisions below it no longer exist
    /// there, so the ring stops serving them too, and a watch from below is
    /// cancelled with `compact_revision = rev` as etcd would. Never moves
    /// past the applied revision (`last + 1`), so the ring stays complete.
    pub(crate) fn compact(&mut self, rev: i64) {
        let rev = rev.min(self.last + 1);
        if rev <= self.start {
            return;
        }
        while self.events.front().is_some_and(|e| e.revision() < rev) {
            let e = self.events.pop_front().expect("front exists");
            self.bytes -= e.weight();
        }
        self.start = rev;
        self.floor_report = rev;
    }

    fn evict(&mut self) {
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(rev) = self.events.front().map(|e| e.revision()) else {
                break;
            };
            while self.events.front().is_some_and(|e| e.revision() == rev) {
                let e = self.events.pop_front().expect("front exists");
                self.bytes -= e.weight();
            }
            self.start = rev + 1;
            self.floor_report = self.start;
        }
    }

    pub(crate) fn start(&self) -> i64 {
        self.start
    }

    pub(crate) fn last(&self) -> i64 {
        self.last
    }

    pub(crate) fn last_event(&self) -> i64 {
        self.last_event
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Positions a cursor at the first event with revision `>= rev`.
    pub(crate) fn cursor(&self, rev: i64) -> Cursor {
        if rev < self.start {
            return Cursor::FellOff(self.floor_report.max(1));
        }
        Cursor::At(self.events.partition_point(|e| e.revision() < rev))
    }

    pub(crate) fn get(&self, idx: usize) -> Option<&Arc<CachedEvent>> {
        self.events.get(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use bytes::Bytes;
    use lookout_proto::mvccpb::KeyValue;

    fn ev(rev: i64, key: &str, val_len: usize) -> Arc<CachedEvent> {
        Arc::new(CachedEvent::new(
            EventKind::Put,
            &KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                value: Bytes::from(vec![b'x'; val_len]),
                lease: 0,
            },
            None,
        ))
    }

    #[test]
    fn evicts_whole_revisions_by_count() {
        let mut h = History::new(3, usize::MAX);
        h.reset(10, 0);
        assert_eq!(h.cursor(11), Cursor::At(0));
        assert_eq!(h.cursor(10), Cursor::FellOff(1));
        h.append(&[ev(11, "a", 1)], 11);
        h.append(&[ev(12, "a", 1), ev(12, "b", 1)], 12);
        assert_eq!((h.len(), h.start()), (3, 11));
        // Revision 13 pushes the count over 3: revision 11 goes, whole.
        h.append(&[ev(13, "c", 1)], 13);
        assert_eq!((h.len(), h.start(), h.last()), (3, 12, 13));
        assert_eq!(h.cursor(11), Cursor::FellOff(12));
        assert_eq!(h.cursor(12), Cursor::At(0));
        assert_eq!(h.cursor(13), Cursor::At(2));
        assert_eq!(h.cursor(14), Cursor::At(3));
        // Revision 14 evicts both events of revision 12 together.
        h.append(&[ev(14, "d", 1)], 14);
        assert_eq!((h.len(), h.start()), (2, 13));
    }

    #[test]
    fn compaction_trims_the_ring_and_reports_its_revision() {
        let mut h = History::new(usize::MAX, usize::MAX);
        h.reset(1, 0);
        for r in 2..=6 {
            h.append(&[ev(r, "k", 1)], r);
        }
        h.compact(4);
        assert_eq!((h.len(), h.start(), h.last()), (3, 4, 6));
        assert_eq!(h.cursor(3), Cursor::FellOff(4));
        assert_eq!(h.cursor(4), Cursor::At(0));
        // An older compaction changes nothing; one past the applied
        // revision stops at last + 1.
        h.compact(2);
        assert_eq!(h.start(), 4);
        h.compact(100);
        assert_eq!((h.len(), h.start(), h.bytes()), (0, 7, 0));
        assert_eq!(h.cursor(6), Cursor::FellOff(7));
        assert_eq!(h.cursor(7), Cursor::At(0));
    }

    #[test]
    fn evicts_by_bytes_and_tracks_progress() {
        let one = ev(1, "k", 1000).weight();
        let mut h = History::new(usize::MAX, one * 2 + 10);
        h.reset(0, 0);
        for r in 1..=5 {
            h.append(&[ev(r, "k", 1000)], r);
        }
        assert_eq!((h.len(), h.start()), (2, 4));
        assert!(h.bytes() <= one * 2 + 10);
        h.advance(9);
        assert_eq!((h.last(), h.last_event()), (9, 5));
        assert_eq!(h.cursor(6), Cursor::At(2));
        // A relist resets and reports the upstream's compaction revision.
        h.reset(20, 15);
        assert_eq!(h.cursor(19), Cursor::FellOff(15));
        assert_eq!((h.len(), h.bytes(), h.start()), (0, 0, 21));
    }
}
