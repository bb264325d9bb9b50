//! Sums of the verdicts over many watchers, as a load run reports them.

use super::judge::Judgement;
use super::watcher::{WatchCheck, WatchEnd};

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Compaction cancels at or below an event already received (see
    /// [`Judgement::bad_cancel`]); left out of the JSON when zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_cancels: u64,
    /// Untrue progress notifications (see [`Judgement::bad_progress`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_progress: u64,
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
        self.bad_cancels += u64::from(j.bad_cancel);
        self.bad_progress += j.bad_progress;
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
        self.bad_cancels += o.bad_cancels;
        self.bad_progress += o.bad_progress;
    }

    /// No missing, duplicate, out-of-order, unexpected or altered event,
    /// and no untrue cancel or progress.
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.undelivered == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.content_mismatch == 0
            && self.cancelled == 0
            && self.lost == 0
            && self.bad_cancels == 0
            && self.bad_progress == 0
    }
}
