//! When revisions happened in real time, as far as the ops that saw them
//! bound it; the lease checker uses this to date expiries.

use super::ops::{Op, Outcome, linearizable_point};
use crate::kv_history::Nanos;

/// When revisions happened, bounded by the ops that saw them.
#[derive(Debug, Clone, Default)]
pub struct RevisionClock {
    /// (revision, earliest return of an op at this revision or later),
    /// ascending by revision.
    by_rev_ret: Vec<(i64, Nanos)>,
    /// (revision, latest call of an op at this revision or earlier),
    /// ascending by revision.
    by_rev_call: Vec<(i64, Nanos)>,
}

impl RevisionClock {
    fn new(points: &[(i64, Nanos, Option<Nanos>)]) -> Self {
        let mut rets: Vec<(i64, Nanos)> = points
            .iter()
            .filter_map(|(p, _, r)| r.map(|r| (*p, r)))
            .collect();
        rets.sort_unstable();
        for i in (0..rets.len().saturating_sub(1)).rev() {
            rets[i].1 = rets[i].1.min(rets[i + 1].1);
        }
        let mut calls: Vec<(i64, Nanos)> = points.iter().map(|(p, c, _)| (*p, *c)).collect();
        calls.sort_unstable();
        for i in 1..calls.len() {
            calls[i].1 = calls[i].1.max(calls[i - 1].1);
        }
        Self {
            by_rev_ret: rets,
            by_rev_call: calls,
        }
    }

    /// The clock of a checked history. An unknown write bounds only from
    /// the call side: the client never saw it return.
    pub(super) fn of_points(ops: &[Op], point: &[Option<i64>]) -> Self {
        let pts: Vec<(i64, Nanos, Option<Nanos>)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| {
                let p = point[i]?;
                match &op.out {
                    Outcome::Ok(_) if linearizable_point(op).is_some() => {
                        Some((p, op.call, Some(op.ret)))
                    }
                    Outcome::Unknown(_) => Some((p, op.call, None)),
                    _ => None,
                }
            })
            .collect();
        Self::new(&pts)
    }

    /// A time by which revision `rev` certainly existed: the earliest
    /// return of an op that saw `rev` or a later revision.
    pub fn committed_by(&self, rev: i64) -> Option<Nanos> {
        let i = self.by_rev_ret.partition_point(|(p, _)| *p < rev);
        self.by_rev_ret.get(i).map(|(_, t)| *t)
    }

    /// A time before which revision `rev` certainly did not exist: the
    /// latest call of an op whose revision is below `rev`.
    pub fn not_before(&self, rev: i64) -> Option<Nanos> {
        let i = self.by_rev_call.partition_point(|(p, _)| *p < rev);
        i.checked_sub(1).map(|i| self.by_rev_call[i].1)
    }
}
