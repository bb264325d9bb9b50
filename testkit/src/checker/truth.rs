//! The store's history of what a watcher watches, as the checker needs it:
//! one entry per event (ascending revisions, a revision's events in the
//! store's order) and a running content digest.
//!
//! ```text
//!   (revision, tag) per event ──from_events──> revs [r1, r2, r2, r3 ...]
//!                                              cum  [0, d1, d1+d2, ...]  (wrapping sums)
//!   digest of any contiguous slice = cum[b] - cum[a]   (O(1))
//! ```

/// A 64-bit FNV-1a hash: the content tags fold keys and values with it.
#[inline]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64 over (rev, tag): a sum of these is order-independent but
/// sensitive to any single changed event.
#[inline]
pub(super) fn mix(rev: i64, tag: u64) -> u64 {
    let mut z = (rev as u64) ^ tag.rotate_left(29);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The digest term of the `k`-th event (from 0) of revision `rev`: the
/// position is folded in so events of one revision delivered in another
/// order than the store's are caught. The first event of a revision (the
/// only one, for single-key writes) is plain `mix(rev, tag)`.
#[inline]
pub(super) fn entry_digest(rev: i64, tag: u64, k: u64) -> u64 {
    mix(rev, tag ^ k.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// The store's history the watchers are judged against.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    /// One entry per event, ascending; a revision with several events
    /// (a transaction, a range delete) appears that many times.
    revs: Vec<i64>,
    /// `cum[i]` = wrapping sum of the entry digests of `revs[..i]`.
    cum: Vec<u64>,
    has_digest: bool,
    /// Revisions holding more than one event, with their event count,
    /// ascending; empty when every revision is one event.
    multi: Vec<(i64, u32)>,
}

impl Truth {
    /// From events `(rev, tag)` read back from the store: any order across
    /// revisions, the store's order within one. An event listed twice
    /// (same revision and tag) counts once.
    pub fn from_events(mut events: Vec<(i64, u64)>) -> Self {
        // Stable: keeps the store's order of a revision's events.
        events.sort_by_key(|e| e.0);
        let mut revs = Vec::with_capacity(events.len());
        let mut cum = Vec::with_capacity(events.len() + 1);
        let mut multi: Vec<(i64, u32)> = Vec::new();
        let mut tags_here: Vec<u64> = Vec::new();
        let mut acc = 0u64;
        cum.push(acc);
        for (rev, tag) in events {
            if revs.last() != Some(&rev) {
                tags_here.clear();
            } else if tags_here.contains(&tag) {
                continue;
            }
            let k = tags_here.len() as u64;
            tags_here.push(tag);
            if k == 1 {
                multi.push((rev, 2));
            } else if k > 1
                && let Some(m) = multi.last_mut()
            {
                m.1 += 1;
            }
            acc = acc.wrapping_add(entry_digest(rev, tag, k));
            revs.push(rev);
            cum.push(acc);
        }
        Self {
            revs,
            cum,
            has_digest: true,
            multi,
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
            multi: Vec::new(),
        }
    }

    /// One entry per event, ascending.
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

    /// Index of the first entry at or above `rev`.
    pub(super) fn lower(&self, rev: i64) -> usize {
        self.revs.partition_point(|r| *r < rev)
    }

    /// Index of the first entry above `rev`.
    pub(super) fn upper(&self, rev: i64) -> usize {
        self.revs.partition_point(|r| *r <= rev)
    }

    /// Number of events in `[lo, hi]`.
    pub fn count(&self, lo: i64, hi: i64) -> u64 {
        let a = self.lower(lo);
        let b = self.upper(hi).max(a);
        (b - a) as u64
    }

    /// Digest of the entries `[a, b)` (indices).
    pub(super) fn digest_between(&self, a: usize, b: usize) -> u64 {
        self.cum[b].wrapping_sub(self.cum[a])
    }

    /// The revisions with several events, with their counts.
    pub(super) fn multi(&self) -> &[(i64, u32)] {
        &self.multi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_events_of_one_revision_stay_in_order() {
        let t = Truth::from_events(vec![(5, 1), (4, 9), (5, 2), (5, 1), (6, 3)]);
        assert_eq!(t.revisions(), &[4, 5, 5, 6]);
        assert_eq!(t.multi(), &[(5, 2)]);
        assert_eq!(t.count(5, 5), 2);
        // The same events of revision 5 in the other order digest differently.
        let swapped = Truth::from_events(vec![(4, 9), (5, 2), (5, 1), (6, 3)]);
        assert_ne!(
            t.digest_between(0, 4),
            swapped.digest_between(0, 4),
            "position inside a revision is part of the content"
        );
    }
}
