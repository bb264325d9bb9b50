//! The watch checker: does every watcher see every event of its range, in
//! order, exactly once?
//!
//! ```text
//!   event(rev, tag) ──> WatchCheck::observe ──> in order | duplicate | out of order
//!                        (online, O(1) per in-order event)
//!   run ends ──> Truth (the store's own history of the prefix, read back once)
//!            ──> WatchCheck::judge(truth, upto) ──> missing / unexpected / content
//! ```
//!
//! Online, a watcher only knows what it has seen: revisions are kept as runs
//! of consecutive numbers ([`RevSet`]), so a healthy watcher on a store where
//! only our writer writes holds a single run however long the test. Whether a
//! revision is *missing* can only be decided at the end, against the truth:
//! the writer's acknowledged puts are in it by construction, and a put that
//! timed out is *unknown* — it counts as missing only if the store's history
//! shows it was applied, never just because the writer gave up on it.
//!
//! The checker assumes one event per revision in the watched range, which is
//! what `lookout-load`'s writers produce (single-key puts). It must never
//! decide that an event is missing from the writer's point of view alone.

use crate::payload;

/// Sorted, disjoint, non-adjacent inclusive runs of revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevSet {
    runs: Vec<(i64, i64)>,
    len: u64,
}

impl RevSet {
    /// Adds `rev`; false if it was already present.
    pub fn insert(&mut self, rev: i64) -> bool {
        // Fast path: in-order delivery extends or follows the last run.
        match self.runs.last_mut() {
            None => {
                self.runs.push((rev, rev));
                self.len += 1;
                return true;
            }
            Some((_, end)) if rev == *end + 1 => {
                *end = rev;
                self.len += 1;
                return true;
            }
            Some((_, end)) if rev > *end + 1 => {
                self.runs.push((rev, rev));
                self.len += 1;
                return true;
            }
            Some(_) => {}
        }
        // First run whose end is >= rev; rev <= last end, so it exists.
        let i = self.runs.partition_point(|&(_, e)| e < rev);
        if self.runs[i].0 <= rev {
            return false;
        }
        let joins_prev = i > 0 && self.runs[i - 1].1 + 1 == rev;
        let joins_next = self.runs[i].0 - 1 == rev;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.runs[i - 1].1 = self.runs[i].1;
                self.runs.remove(i);
            }
            (true, false) => self.runs[i - 1].1 = rev,
            (false, true) => self.runs[i].0 = rev,
            (false, false) => self.runs.insert(i, (rev, rev)),
        }
        self.len += 1;
        true
    }

    pub fn contains(&self, rev: i64) -> bool {
        let i = self.runs.partition_point(|&(_, e)| e < rev);
        i < self.runs.len() && self.runs[i].0 <= rev
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max(&self) -> Option<i64> {
        self.runs.last().map(|r| r.1)
    }

    /// The runs, ascending.
    pub fn runs(&self) -> &[(i64, i64)] {
        &self.runs
    }

    /// How many of the ascending `sorted` revisions are in the set.
    pub fn count_in(&self, sorted: &[i64]) -> u64 {
        self.runs
            .iter()
            .map(|&(lo, hi)| {
                let a = sorted.partition_point(|r| *r < lo);
                let b = sorted.partition_point(|r| *r <= hi);
                (b - a) as u64
            })
            .sum()
    }
}

/// What one delivered event was, from its watcher's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Newer than everything seen so far.
    InOrder,
    /// Seen before.
    Duplicate,
    /// Not seen before, but older than something already seen.
    OutOfOrder,
    /// Older than the revision the watcher asked to start from.
    BeforeStart,
}

/// How a watcher's stream ended, as far as the checker is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WatchEnd {
    /// Still open (or closed by us at the end of the run).
    #[default]
    Open,
    /// Cancelled by the server with `compact_revision`: the client must
    /// relist. Events after this point are not expected from this watch.
    CompactCancelled { compact_revision: i64 },
    /// Cancelled by the server for another reason.
    Cancelled { reason: String },
    /// Its stream failed and could not be resumed within the bounds.
    Lost { reason: String },
}

/// One watcher's online record.
#[derive(Debug, Clone)]
pub struct WatchCheck {
    start_rev: i64,
    last_rev: i64,
    received: RevSet,
    events: u64,
    duplicates: u64,
    out_of_order: u64,
    before_start: u64,
    /// Wrapping sum of `mix(rev, tag)` over distinct received revisions, so
    /// content (key, value, type) can be compared with the truth in O(1).
    digest: u64,
    end: WatchEnd,
}

impl WatchCheck {
    /// A watcher that asked for every event from `start_rev` on.
    pub fn new(start_rev: i64) -> Self {
        Self {
            start_rev,
            last_rev: 0,
            received: RevSet::default(),
            events: 0,
            duplicates: 0,
            out_of_order: 0,
            before_start: 0,
            digest: 0,
            end: WatchEnd::Open,
        }
    }

    /// Records one delivered event with revision `rev` and content `tag`
    /// (see [`event_tag`]).
    pub fn observe(&mut self, rev: i64, tag: u64) -> Delivery {
        self.events += 1;
        if rev < self.start_rev {
            self.before_start += 1;
            return Delivery::BeforeStart;
        }
        if rev > self.last_rev {
            self.received.insert(rev);
            self.last_rev = rev;
            self.digest = self.digest.wrapping_add(mix(rev, tag));
            Delivery::InOrder
        } else if self.received.insert(rev) {
            self.out_of_order += 1;
            self.digest = self.digest.wrapping_add(mix(rev, tag));
            Delivery::OutOfOrder
        } else {
            self.duplicates += 1;
            Delivery::Duplicate
        }
    }

    /// The revision to resume from after a broken stream.
    pub fn next_rev(&self) -> i64 {
        self.start_rev.max(self.last_rev + 1)
    }

    pub fn start_rev(&self) -> i64 {
        self.start_rev
    }

    /// Highest revision seen, 0 before the first event.
    pub fn last_rev(&self) -> i64 {
        self.last_rev
    }

    pub fn received(&self) -> &RevSet {
        &self.received
    }

    /// Every delivery, duplicates included.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn is_open(&self) -> bool {
        self.end == WatchEnd::Open
    }

    pub fn end(&self) -> &WatchEnd {
        &self.end
    }

    /// Marks how the stream ended; the first end wins.
    pub fn set_end(&mut self, end: WatchEnd) {
        if self.end == WatchEnd::Open {
            self.end = end;
        }
    }

    /// Judges this watcher against the store's history: every truth revision
    /// in `[start_rev, upto]` must have been received (up to the cancel point
    /// for a compact-cancelled watcher), nothing outside the truth may have
    /// been received, and the received content must match the truth's.
    ///
    /// What is owed but absent is split in two: *missing* — skipped while a
    /// later revision was delivered, a silent gap — and *undelivered* — past
    /// the last revision this watcher got when the run stopped waiting
    /// (late, or its stream was lost): the client can tell it is behind.
    pub fn judge(&self, truth: &Truth, upto: i64) -> Judgement {
        let hi = match self.end {
            // After a compaction cancel the client relists: nothing more is
            // owed by this watch.
            WatchEnd::CompactCancelled { .. } => upto.min(self.last_rev),
            _ => upto,
        };
        let expected = truth.count(self.start_rev, hi);
        let expected_received = self.received_between(truth, self.start_rev, hi);
        let received_in_truth = self.received.count_in(&truth.revs);
        let unexpected = self.received.len() - received_in_truth + self.before_start;
        let absent = expected - expected_received;
        let undelivered = if self.last_rev < hi {
            truth.count(self.start_rev.max(self.last_rev + 1), hi)
        } else {
            0
        };
        let missing = absent - undelivered;
        let content_ok = if truth.has_digest && missing == 0 && unexpected == 0 {
            // received == truth ∩ [start, max(hi, last)] exactly here.
            let top = hi.max(self.last_rev);
            let all = truth.count(self.start_rev, top);
            (all == self.received.len()).then(|| truth.digest(self.start_rev, top) == self.digest)
        } else {
            None
        };
        Judgement {
            expected,
            missing,
            undelivered,
            unexpected,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            content_ok,
        }
    }

    fn received_between(&self, truth: &Truth, lo: i64, hi: i64) -> u64 {
        let a = truth.revs.partition_point(|r| *r < lo);
        let b = truth.revs.partition_point(|r| *r <= hi);
        self.received.count_in(&truth.revs[a..b])
    }
}

/// The verdict on one watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Judgement {
    /// Truth revisions this watcher owed.
    pub expected: u64,
    /// Owed, absent, and older than something delivered: a silent gap.
    pub missing: u64,
    /// Owed, absent, and newer than everything delivered: late, or cut off
    /// by a lost stream.
    pub undelivered: u64,
    /// Received revisions that are not in the store's history (or older
    /// than the watcher's start).
    pub unexpected: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// `Some(false)` when the set of revisions was right but a key, value or
    /// type differed; `None` when not checkable.
    pub content_ok: Option<bool>,
}

impl Judgement {
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.undelivered == 0
            && self.unexpected == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.content_ok != Some(false)
    }
}

/// The store's history of the watched prefix: ascending revisions and, when
/// known, a content digest per revision.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    revs: Vec<i64>,
    /// `cum[i]` = wrapping sum of `mix` over `revs[..i]`.
    cum: Vec<u64>,
    has_digest: bool,
}

impl Truth {
    /// From events `(rev, tag)` read back from the store (any order).
    pub fn from_events(mut events: Vec<(i64, u64)>) -> Self {
        events.sort_unstable_by_key(|e| e.0);
        events.dedup_by_key(|e| e.0);
        let mut cum = Vec::with_capacity(events.len() + 1);
        let mut acc = 0u64;
        cum.push(acc);
        for &(rev, tag) in &events {
            acc = acc.wrapping_add(mix(rev, tag));
            cum.push(acc);
        }
        Self {
            revs: events.into_iter().map(|e| e.0).collect(),
            cum,
            has_digest: true,
        }
    }

    /// From revisions only (the writer's acknowledgements) when the store's
    /// history could not be read: content is then not checked.
    pub fn from_revisions(mut revs: Vec<i64>) -> Self {
        revs.sort_unstable();
        revs.dedup();
        Self {
            revs,
            cum: Vec::new(),
            has_digest: false,
        }
    }

    pub fn revisions(&self) -> &[i64] {
        &self.revs
    }

    pub fn has_digest(&self) -> bool {
        self.has_digest
    }

    pub fn contains(&self, rev: i64) -> bool {
        self.revs.binary_search(&rev).is_ok()
    }

    pub fn max(&self) -> Option<i64> {
        self.revs.last().copied()
    }

    fn bounds(&self, lo: i64, hi: i64) -> (usize, usize) {
        let a = self.revs.partition_point(|r| *r < lo);
        let b = self.revs.partition_point(|r| *r <= hi);
        (a, b.max(a))
    }

    /// Number of revisions in `[lo, hi]`.
    pub fn count(&self, lo: i64, hi: i64) -> u64 {
        let (a, b) = self.bounds(lo, hi);
        (b - a) as u64
    }

    fn digest(&self, lo: i64, hi: i64) -> u64 {
        let (a, b) = self.bounds(lo, hi);
        self.cum[b].wrapping_sub(self.cum[a])
    }
}

/// The content tag of one event: key, type and the writer's sequence number
/// (or the whole value for foreign values).
pub fn event_tag(is_delete: bool, key: &[u8], value: &[u8]) -> u64 {
    event_tag_stamped(is_delete, key, value, payload::decode(value))
}

/// [`event_tag`] when the value's stamp is already parsed (`stamp` must be
/// `payload::decode(value)`).
pub fn event_tag_stamped(
    is_delete: bool,
    key: &[u8],
    value: &[u8],
    stamp: Option<payload::Stamp>,
) -> u64 {
    let v = match stamp {
        Some(s) => s.seq,
        None => payload::fnv1a(value),
    };
    payload::fnv1a(key) ^ v.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(is_delete)
}

/// splitmix64 over (rev, tag): a sum of these is order-independent but
/// sensitive to any single changed event.
fn mix(rev: i64, tag: u64) -> u64 {
    let mut z = (rev as u64) ^ tag.rotate_left(29);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sums of the verdicts over many watchers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckTotals {
    pub watchers: u64,
    /// Watchers that received everything they were owed, nothing else.
    pub clean: u64,
    pub compact_cancelled: u64,
    pub cancelled: u64,
    pub lost: u64,
    /// Events delivered, duplicates included.
    pub events: u64,
    pub expected: u64,
    /// Silent gaps (see [`Judgement::missing`]).
    pub missing: u64,
    /// Not delivered by the deadline (see [`Judgement::undelivered`]).
    #[serde(default)]
    pub undelivered: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub content_mismatch: u64,
}

impl CheckTotals {
    /// Adds one watcher's record and verdict.
    pub fn add(&mut self, check: &WatchCheck, j: &Judgement) {
        self.watchers += 1;
        self.events += check.events();
        self.expected += j.expected;
        self.missing += j.missing;
        self.undelivered += j.undelivered;
        self.duplicates += j.duplicates;
        self.out_of_order += j.out_of_order;
        self.unexpected += j.unexpected;
        if j.content_ok == Some(false) {
            self.content_mismatch += 1;
        }
        match check.end() {
            WatchEnd::Open => {}
            WatchEnd::CompactCancelled { .. } => self.compact_cancelled += 1,
            WatchEnd::Cancelled { .. } => self.cancelled += 1,
            WatchEnd::Lost { .. } => self.lost += 1,
        }
        if j.is_clean()
            && matches!(
                check.end(),
                WatchEnd::Open | WatchEnd::CompactCancelled { .. }
            )
        {
            self.clean += 1;
        }
    }

    /// Merges another total into this one.
    pub fn merge(&mut self, o: &CheckTotals) {
        self.watchers += o.watchers;
        self.clean += o.clean;
        self.compact_cancelled += o.compact_cancelled;
        self.cancelled += o.cancelled;
        self.lost += o.lost;
        self.events += o.events;
        self.expected += o.expected;
        self.missing += o.missing;
        self.undelivered += o.undelivered;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
        self.content_mismatch += o.content_mismatch;
    }

    /// No missing, duplicate, out-of-order, unexpected or altered event.
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.undelivered == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.content_mismatch == 0
            && self.cancelled == 0
            && self.lost == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revset_merges_runs() {
        let mut s = RevSet::default();
        for r in [1, 2, 3, 7, 8, 5] {
            assert!(s.insert(r));
        }
        assert_eq!(s.runs(), &[(1, 3), (5, 5), (7, 8)]);
        assert!(s.insert(4));
        assert!(s.insert(6));
        assert_eq!(s.runs(), &[(1, 8)]);
        assert!(!s.insert(5));
        assert_eq!(s.len(), 8);
        assert!(s.contains(8) && !s.contains(9) && !s.contains(0));
        assert_eq!(s.count_in(&[0, 2, 4, 9, 10]), 2);
    }

    #[test]
    fn revset_inserts_between_runs() {
        let mut s = RevSet::default();
        for r in [10, 20, 30] {
            s.insert(r);
        }
        assert!(s.insert(15));
        assert!(s.insert(21));
        assert!(s.insert(9));
        assert_eq!(s.runs(), &[(9, 10), (15, 15), (20, 21), (30, 30)]);
    }

    #[test]
    fn judge_counts_missing_against_truth_not_writer() {
        // Truth: 5..=9; 7 was a put that timed out but was applied.
        let truth = Truth::from_events((5..=9).map(|r| (r, r as u64 * 3)).collect());
        let mut w = WatchCheck::new(5);
        for r in [5, 6, 8, 9] {
            w.observe(r, r as u64 * 3);
        }
        let j = w.judge(&truth, 9);
        assert_eq!((j.expected, j.missing, j.unexpected), (5, 1, 0));
        assert_eq!(j.content_ok, None);
    }

    #[test]
    fn late_tail_is_undelivered_not_missing() {
        let truth = Truth::from_revisions((1..=10).collect());
        let mut w = WatchCheck::new(1);
        for r in [1, 2, 4, 5, 6] {
            w.observe(r, 0);
        }
        let j = w.judge(&truth, 10);
        assert_eq!((j.missing, j.undelivered), (1, 4));
        assert!(!j.is_clean());
        let nothing = WatchCheck::new(1).judge(&truth, 10);
        assert_eq!((nothing.missing, nothing.undelivered), (0, 10));
    }

    #[test]
    fn content_digest_catches_altered_event() {
        let truth = Truth::from_events((1..=4).map(|r| (r, 100 + r as u64)).collect());
        let mut good = WatchCheck::new(1);
        let mut bad = WatchCheck::new(1);
        for r in 1..=4 {
            good.observe(r, 100 + r as u64);
            bad.observe(r, if r == 3 { 0 } else { 100 + r as u64 });
        }
        assert_eq!(good.judge(&truth, 4).content_ok, Some(true));
        assert_eq!(bad.judge(&truth, 4).content_ok, Some(false));
    }

    #[test]
    fn compact_cancel_owes_nothing_after_cancel() {
        let truth = Truth::from_revisions((1..=10).collect());
        let mut w = WatchCheck::new(1);
        for r in 1..=4 {
            w.observe(r, 0);
        }
        w.set_end(WatchEnd::CompactCancelled {
            compact_revision: 6,
        });
        let j = w.judge(&truth, 10);
        assert_eq!((j.expected, j.missing), (4, 0));
    }
}
