//! One watcher's online record: what it received, judged later against the
//! store's history ([`super::judge`]).
//!
//! ```text
//!   event(rev, tag) ──> observe ──> in order | duplicate | out of order | before start
//!                       (O(1) per in-order event, no allocation)
//!   progress(rev)   ──> noted with what had arrived by then
//!   cancel / lost   ──> set_end
//! ```
//!
//! Revisions are kept as runs ([`RevSet`]) and content as a wrapping sum of
//! per-event digests, so a healthy watcher costs a few dozen bytes however
//! long the run. A revision may carry several events (a transaction, a
//! range delete): the tags of the newest revision's events tell a second
//! event of it from a repeat, and revisions that delivered more than one
//! event are counted aside. Both, and progress notes, live behind one
//! pointer that stays empty for single-key writes.

use super::revset::RevSet;
use super::truth::{entry_digest, mix};

/// What one delivered event was, from its watcher's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Newer than everything seen so far, or another event of the newest
    /// revision.
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

/// A progress notification as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProgressNote {
    pub(super) revision: i64,
    /// Distinct events received before it.
    pub(super) received: u64,
    /// Newest revision received before it (0: none).
    pub(super) newest: i64,
}

/// The part of a record only some watchers need.
#[derive(Debug, Clone, Default)]
pub(super) struct Rare {
    /// Tags of the second and later events received at `last_rev`.
    pub(super) siblings: Vec<u64>,
    /// Revisions that delivered more than one distinct event, with how many
    /// beyond the first, ascending.
    pub(super) extra: Vec<(i64, u32)>,
    pub(super) progress: Vec<ProgressNote>,
}

/// One watcher's online record.
#[derive(Debug, Clone)]
pub struct WatchCheck {
    pub(super) start_rev: i64,
    pub(super) last_rev: i64,
    /// Tag of the first event received at `last_rev`.
    pub(super) last_tag: u64,
    pub(super) received: RevSet,
    pub(super) events: u64,
    pub(super) duplicates: u64,
    pub(super) out_of_order: u64,
    pub(super) before_start: u64,
    /// Wrapping sum of the entry digests of distinct received events, so
    /// content (key, value, type, position) is compared with the truth in O(1).
    pub(super) digest: u64,
    pub(super) end: WatchEnd,
    /// Several events per revision, progress notes; `None` until needed.
    pub(super) rare: Option<Box<Rare>>,
}

impl WatchCheck {
    /// A watcher that asked for every event from `start_rev` on.
    pub fn new(start_rev: i64) -> Self {
        Self {
            start_rev,
            last_rev: 0,
            last_tag: 0,
            received: RevSet::default(),
            events: 0,
            duplicates: 0,
            out_of_order: 0,
            before_start: 0,
            digest: 0,
            end: WatchEnd::Open,
            rare: None,
        }
    }

    /// Records one delivered event with revision `rev` and content `tag`
    /// (any hash of what the event says; the truth must use the same).
    #[inline]
    pub fn observe(&mut self, rev: i64, tag: u64) -> Delivery {
        self.events += 1;
        if rev < self.start_rev {
            self.before_start += 1;
            return Delivery::BeforeStart;
        }
        if rev > self.last_rev {
            self.received.insert(rev);
            self.last_rev = rev;
            self.last_tag = tag;
            if let Some(r) = &mut self.rare {
                r.siblings.clear();
            }
            self.digest = self.digest.wrapping_add(mix(rev, tag));
            Delivery::InOrder
        } else if rev == self.last_rev && !self.received.is_empty() {
            self.same_revision(rev, tag)
        } else if self.received.insert(rev) {
            self.out_of_order += 1;
            self.digest = self.digest.wrapping_add(mix(rev, tag));
            Delivery::OutOfOrder
        } else {
            self.duplicates += 1;
            Delivery::Duplicate
        }
    }

    /// Another event of the newest revision: a repeat, or its next event.
    fn same_revision(&mut self, rev: i64, tag: u64) -> Delivery {
        let rare = self.rare.get_or_insert_with(Box::default);
        if tag == self.last_tag || rare.siblings.contains(&tag) {
            self.duplicates += 1;
            return Delivery::Duplicate;
        }
        rare.siblings.push(tag);
        let k = rare.siblings.len() as u64;
        match rare.extra.last_mut() {
            Some((r, n)) if *r == rev => *n += 1,
            _ => rare.extra.push((rev, 1)),
        }
        self.digest = self.digest.wrapping_add(entry_digest(rev, tag, k));
        Delivery::InOrder
    }

    /// Records a progress notification at `revision`: it must not be below
    /// an event already received, nor above one not yet received.
    pub fn progress(&mut self, revision: i64) {
        let note = ProgressNote {
            revision,
            received: self.distinct(),
            newest: self.last_rev,
        };
        self.rare
            .get_or_insert_with(Box::default)
            .progress
            .push(note);
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

    /// Revisions received (at least one event each).
    pub fn received(&self) -> &RevSet {
        &self.received
    }

    /// Every delivery, duplicates included.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Distinct events received at or after the start.
    pub fn distinct(&self) -> u64 {
        self.received.len()
            + self
                .rare
                .as_ref()
                .map_or(0, |r| r.extra.iter().map(|e| u64::from(e.1)).sum())
    }

    /// Distinct events received at `rev`.
    pub(super) fn got_at(&self, rev: i64) -> u64 {
        if !self.received.contains(rev) {
            return 0;
        }
        let extra = self.rare.as_ref().and_then(|r| {
            r.extra
                .binary_search_by_key(&rev, |e| e.0)
                .ok()
                .map(|i| u64::from(r.extra[i].1))
        });
        1 + extra.unwrap_or(0)
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
}
