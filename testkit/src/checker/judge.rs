//! The verdict on one watcher: its online record ([`WatchCheck`]) against
//! the store's history ([`Truth`]).
//!
//! ```text
//!   owed      = truth events in [start, upto]   (up to the cancel point of a
//!                                                compact-cancelled watcher)
//!   missing     = owed, absent, older than something delivered (a silent gap)
//!   undelivered = owed, absent, newer than everything delivered (late / cut off)
//!   unexpected  = received, not in the truth (or before the start)
//!   content     = digest of what was received == digest of what was owed
//!   + duplicates, out of order (counted online), compact_revision above the
//!     last event, progress never below an event nor ahead of one
//! ```

use super::truth::Truth;
use super::watcher::{WatchCheck, WatchEnd};

/// The verdict on one watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Judgement {
    /// Truth events this watcher owed.
    pub expected: u64,
    /// Owed, absent, and older than something delivered: a silent gap.
    pub missing: u64,
    /// Owed, absent, and newer than everything delivered: late, or cut off
    /// by a lost stream.
    pub undelivered: u64,
    /// Received events that are not in the store's history (or older
    /// than the watcher's start).
    pub unexpected: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// `Some(false)` when the set of revisions was right but a key, value,
    /// type or order inside a revision differed; `None` when not checkable.
    pub content_ok: Option<bool>,
    /// Cancelled with a `compact_revision` at or below an event it had
    /// received (the client would relist from a revision it already has).
    pub bad_cancel: bool,
    /// Progress notifications below an event already received, or above
    /// events not yet received.
    pub bad_progress: u64,
}

impl Judgement {
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.undelivered == 0
            && self.unexpected == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.content_ok != Some(false)
            && !self.bad_cancel
            && self.bad_progress == 0
    }
}

/// A progress notification that told a lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressFault {
    /// Reported `progress` after an event at the newer `event` had arrived.
    BelowEvent { progress: i64, event: i64 },
    /// Reported `progress` with `received` events in, while `due` events
    /// up to it were owed.
    AheadOfEvents {
        progress: i64,
        received: u64,
        due: u64,
    },
}

impl WatchCheck {
    /// Judges this watcher against the store's history: every truth event
    /// in `[start_rev, upto]` must have been received (up to the cancel
    /// point for a compact-cancelled watcher), nothing outside the truth
    /// may have been received, and the received content must match.
    ///
    /// What is owed but absent is split in two: *missing* — skipped while a
    /// later revision was delivered, a silent gap — and *undelivered* — past
    /// the last revision this watcher got when the run stopped waiting
    /// (late, or its stream was lost): the client can tell it is behind.
    pub fn judge(&self, truth: &Truth, upto: i64) -> Judgement {
        let compact = matches!(self.end, WatchEnd::CompactCancelled { .. });
        let hi = if compact {
            // After a compaction cancel the client relists: nothing more is
            // owed by this watch.
            upto.min(self.last_rev)
        } else {
            upto
        };
        let a = truth.lower(self.start_rev);
        let b = self.owed_end(truth, hi).max(a);
        let expected = (b - a) as u64;
        let owed_received = self.received_between(truth, a, b);
        let received_in_truth = self.received_between(truth, 0, truth.revisions().len());
        let distinct = self.distinct();
        let unexpected = distinct - received_in_truth + self.before_start;
        let absent = expected - owed_received;
        let undelivered = if self.last_rev < hi {
            truth.count(self.start_rev.max(self.last_rev + 1), hi)
        } else {
            0
        };
        let missing = absent - undelivered;
        let content_ok = if truth.has_digest() && missing == 0 && unexpected == 0 {
            // received == the truth's entries [a, top) exactly here.
            let top = self.owed_end(truth, hi.max(self.last_rev)).max(a);
            ((top - a) as u64 == distinct).then(|| truth.digest_between(a, top) == self.digest)
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
            bad_cancel: self.bad_cancel(),
            bad_progress: self.progress_faults(truth, upto).len() as u64,
        }
    }

    /// Index of the first truth entry not owed when owing up to `limit`.
    /// A compact-cancelled watcher may stop inside its last revision: of
    /// that revision it owes only the events it got (in the store's order).
    fn owed_end(&self, truth: &Truth, limit: i64) -> usize {
        let compact = matches!(self.end, WatchEnd::CompactCancelled { .. });
        if compact && !self.received.is_empty() && limit >= self.last_rev {
            let lo = truth.lower(self.last_rev);
            let all = truth.upper(self.last_rev) - lo;
            lo + (self.got_at(self.last_rev) as usize).min(all)
        } else {
            truth.upper(limit)
        }
    }

    /// Events received among the truth's entries `[a, b)`: per received
    /// revision, the smaller of its entries there and what arrived.
    fn received_between(&self, truth: &Truth, a: usize, b: usize) -> u64 {
        let entries = self.received.count_in(&truth.revisions()[a..b]);
        // Only revisions with several events can have arrived in part.
        let lo = truth.revisions().get(a).copied().unwrap_or(i64::MAX);
        let hi = if b > 0 {
            truth.revisions()[b - 1]
        } else {
            i64::MIN
        };
        let short: u64 = truth
            .multi()
            .iter()
            .filter(|(r, _)| *r >= lo && *r <= hi && self.received.contains(*r))
            .map(|&(r, _)| {
                let owed = truth.upper(r).min(b) - truth.lower(r).max(a);
                (owed as u64).saturating_sub(self.got_at(r))
            })
            .sum();
        entries - short
    }

    /// A compaction cancel must name a revision above the last event this
    /// watcher received (or above its start's predecessor when none).
    fn bad_cancel(&self) -> bool {
        match self.end {
            WatchEnd::CompactCancelled { compact_revision } => {
                let last = if self.received.is_empty() {
                    self.start_rev - 1
                } else {
                    self.last_rev
                };
                compact_revision <= last
            }
            _ => false,
        }
    }

    /// The progress notifications at or below `upto` that were untrue.
    pub fn progress_faults(&self, truth: &Truth, upto: i64) -> Vec<ProgressFault> {
        let Some(rare) = &self.rare else {
            return Vec::new();
        };
        let compact = matches!(self.end, WatchEnd::CompactCancelled { .. });
        let a = truth.lower(self.start_rev);
        let mut faults = Vec::new();
        for n in rare.progress.iter().filter(|n| n.revision <= upto) {
            if n.newest > n.revision {
                faults.push(ProgressFault::BelowEvent {
                    progress: n.revision,
                    event: n.newest,
                });
                continue;
            }
            let due = truth.upper(n.revision).saturating_sub(a) as u64;
            if !compact && n.received < due {
                faults.push(ProgressFault::AheadOfEvents {
                    progress: n.revision,
                    received: n.received,
                    due,
                });
            }
        }
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Truth;

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
        assert!(!j.bad_cancel);
    }

    #[test]
    fn compact_cancel_at_or_below_a_received_event_is_caught() {
        let truth = Truth::from_revisions((1..=10).collect());
        let mut w = WatchCheck::new(1);
        for r in 1..=4 {
            w.observe(r, 0);
        }
        w.set_end(WatchEnd::CompactCancelled {
            compact_revision: 4,
        });
        let j = w.judge(&truth, 10);
        assert!(j.bad_cancel && !j.is_clean());
    }

    /// A transaction writes two keys in one revision: both are owed, a
    /// repeat of one is a duplicate, one of the two alone is a gap.
    #[test]
    fn several_events_in_one_revision() {
        let truth = Truth::from_events(vec![(1, 10), (2, 20), (2, 21), (3, 30)]);
        let feed = |evs: &[(i64, u64)]| {
            let mut w = WatchCheck::new(1);
            for &(r, t) in evs {
                w.observe(r, t);
            }
            w
        };
        let all = feed(&[(1, 10), (2, 20), (2, 21), (3, 30)]);
        let j = all.judge(&truth, 3);
        assert!(j.is_clean(), "{j:?}");
        assert_eq!((j.expected, j.content_ok), (4, Some(true)));

        let dup = feed(&[(1, 10), (2, 20), (2, 20), (2, 21), (3, 30)]);
        let j = dup.judge(&truth, 3);
        assert_eq!((j.duplicates, j.missing, j.content_ok), (1, 0, Some(true)));

        let half = feed(&[(1, 10), (2, 20), (3, 30)]);
        let j = half.judge(&truth, 3);
        assert_eq!((j.missing, j.undelivered, j.unexpected), (1, 0, 0));

        let swapped = feed(&[(1, 10), (2, 21), (2, 20), (3, 30)]);
        let j = swapped.judge(&truth, 3);
        assert_eq!((j.missing, j.content_ok), (0, Some(false)));

        // Cut off by a compaction inside revision 2: a prefix is fine.
        let mut cut = feed(&[(1, 10), (2, 20)]);
        cut.set_end(WatchEnd::CompactCancelled {
            compact_revision: 3,
        });
        let j = cut.judge(&truth, 3);
        assert!(j.is_clean(), "{j:?}");
        assert_eq!((j.expected, j.content_ok), (2, Some(true)));
    }

    #[test]
    fn progress_must_be_true() {
        let truth = Truth::from_events((1..=4).map(|r| (r, r as u64)).collect());
        let mut ok = WatchCheck::new(1);
        ok.observe(1, 1);
        ok.progress(1);
        ok.observe(2, 2);
        assert!(ok.progress_faults(&truth, 4).is_empty());

        let mut ahead = WatchCheck::new(1);
        ahead.observe(1, 1);
        ahead.progress(2);
        assert_eq!(
            ahead.progress_faults(&truth, 4),
            vec![ProgressFault::AheadOfEvents {
                progress: 2,
                received: 1,
                due: 2
            }]
        );
        let mut below = WatchCheck::new(1);
        below.observe(1, 1);
        below.observe(2, 2);
        below.progress(1);
        assert_eq!(below.judge(&truth, 2).bad_progress, 1);
        // Notes above what is judged are not judged.
        assert!(below.progress_faults(&truth, 0).is_empty());
    }
}
