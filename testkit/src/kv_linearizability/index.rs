//! The indexes the checker works from, built from the ops once: which
//! revision each answered op points at, the real-time bound on unknown
//! writes, and which requests could have written a value.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::Report;
use super::ops::{Op, Outcome, Request, TxnOp, linearizable_point};
use crate::kv_history::Nanos;

/// Everything the sweep and the matching look ops up by.
pub(super) struct Index {
    pub(super) sorted: Sorted,
    pub(super) rt: RealTime,
    pub(super) by_value: HashMap<Bytes, Vec<usize>>,
}

/// The ops sorted by what the sweep must do with them.
pub(super) struct Sorted {
    /// Acknowledged writes, by the revision they claim.
    pub(super) claims: BTreeMap<i64, Vec<usize>>,
    /// Answered ops that wrote nothing, by the revision they read at.
    pub(super) reads: BTreeMap<i64, Vec<usize>>,
    /// Writes without an answer.
    pub(super) unknown: Vec<usize>,
}

/// Sorts `ops` and counts them into `report`.
pub(super) fn sort_ops(ops: &[Op], report: &mut Report) -> Sorted {
    let mut claims: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let mut reads: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let mut unknown: Vec<usize> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match &op.out {
            Outcome::Ok(resp) => {
                if !op.req.may_write() || !resp.wrote() {
                    report.reads += 1;
                    let at = match &op.req {
                        Request::Range { revision, .. } if *revision > 0 => *revision,
                        _ => resp.rev(),
                    };
                    reads.entry(at).or_default().push(i);
                } else {
                    report.writes_acked += 1;
                    claims.entry(resp.rev()).or_default().push(i);
                }
            }
            Outcome::Unknown(_) if op.req.may_write() => {
                report.writes_unknown += 1;
                unknown.push(i);
            }
            _ => {}
        }
    }
    Sorted {
        claims,
        reads,
        unknown,
    }
}

/// Real-time lower bounds: an op must come after every op with a known
/// point that returned before it was called.
pub(super) struct RealTime {
    /// (return, point, op) of every op with a linearizable point, by return.
    by_ret: Vec<(Nanos, i64, usize)>,
    /// The highest point (and its op) among `by_ret[..=k]`.
    prefix_max: Vec<(i64, usize)>,
}

impl RealTime {
    pub(super) fn new(ops: &[Op]) -> Self {
        let participants: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| linearizable_point(op).is_some())
            .map(|(i, _)| i)
            .collect();
        let mut by_ret: Vec<(Nanos, i64, usize)> = participants
            .iter()
            .map(|&i| (ops[i].ret, linearizable_point(&ops[i]).unwrap_or(0), i))
            .collect();
        by_ret.sort_unstable();
        let mut prefix_max: Vec<(i64, usize)> = Vec::with_capacity(by_ret.len());
        for (k, (_, p, i)) in by_ret.iter().enumerate() {
            let best = match prefix_max.last() {
                Some(&(bp, bi)) if bp >= *p && k > 0 => (bp, bi),
                _ => (*p, *i),
            };
            prefix_max.push(best);
        }
        Self { by_ret, prefix_max }
    }

    /// The highest point, and its op, among ops that returned before `t`.
    pub(super) fn max_before(&self, t: Nanos) -> Option<(i64, usize)> {
        let n = self.by_ret.partition_point(|(r, _, _)| *r < t);
        n.checked_sub(1).map(|k| self.prefix_max[k])
    }
}

/// Values -> the requests that write them. Values are unique per run, so
/// a revision with a put names its possible writers directly.
pub(super) fn writers_by_value(ops: &[Op]) -> HashMap<Bytes, Vec<usize>> {
    let mut by_value: HashMap<Bytes, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let mut add = |v: &Bytes| by_value.entry(v.clone()).or_default().push(i);
        match &op.req {
            Request::Put { value, .. } => add(value),
            Request::Txn {
                success, failure, ..
            } => {
                for t in success.iter().chain(failure) {
                    if let TxnOp::Put { value, .. } = t {
                        add(value);
                    }
                }
            }
            _ => {}
        }
    }
    by_value
}
