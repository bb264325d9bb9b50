//! A set of revisions kept as runs of consecutive numbers, so a watcher that
//! receives every revision in order holds one run however long the test.

/// Sorted, disjoint, non-adjacent inclusive runs of revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevSet {
    runs: Vec<(i64, i64)>,
    len: u64,
}

impl RevSet {
    /// Adds `rev`; false if it was already present.
    #[inline]
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
        self.insert_inside(rev)
    }

    /// `rev` is not above the last run: find its place among the runs.
    fn insert_inside(&mut self, rev: i64) -> bool {
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

    /// How many of the ascending `sorted` revisions are in the set (a
    /// revision listed twice counts twice).
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
}
