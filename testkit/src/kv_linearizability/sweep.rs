//! The sweep over the store's revisions in order: each revision is either
//! claimed by acknowledged writes (checked against it) or left for the
//! unknown writes and lease expiries that could explain it; reads are
//! checked as the sweep passes their revision.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::answers::{check_acked_write, check_read};
use super::index::Index;
use super::ops::{Op, Outcome, Request, TxnOp};
use super::simulate::{same_events, simulate};
use super::sink::{LIN, Sink};
use crate::kv_history::{Ev, EvKind, Phase, RevisionLog, State, range_contains};

/// A revision no acknowledged write claims.
pub(super) struct Unclaimed {
    pub(super) rev: i64,
    /// Unknown writes with exactly this revision's effect.
    pub(super) candidates: Vec<usize>,
    /// A lease whose keys are exactly what this revision deleted.
    pub(super) lease: Option<(i64, Vec<Bytes>)>,
    /// Unknown writes with this effect that the real-time order excludes.
    pub(super) too_early: Vec<usize>,
}

/// Acknowledged writes answered at a revision past the log's end.
pub(super) fn lost_acked_writes(
    claims: &BTreeMap<i64, Vec<usize>>,
    last: i64,
    ops: &[Op],
    sink: &mut Sink,
) {
    for (&rev, claimants) in claims.range(last + 1..) {
        for &i in claimants {
            sink.push(
                "durability",
                format!(
                    "acknowledged write lost: answered at revision {rev}, the store's history ends at {last}: {}",
                    ops[i].describe()
                ),
            );
        }
    }
}

/// Reads at revisions past the log's end.
pub(super) fn reads_beyond_log(
    reads: &BTreeMap<i64, Vec<usize>>,
    last: i64,
    ops: &[Op],
    sink: &mut Sink,
) {
    for (&at, list) in reads.range(last + 1..) {
        for &i in list {
            sink.push(
                LIN,
                format!(
                    "read at revision {at}, beyond the store's history (ends at {last}): {}",
                    ops[i].describe()
                ),
            );
        }
    }
}

/// Sweeps `log`, setting the point of every claimed write and every read
/// the log covers, and returns the unclaimed revisions in order.
pub(super) fn sweep(
    log: &RevisionLog,
    ops: &[Op],
    ix: &Index,
    point: &mut [Option<i64>],
    sink: &mut Sink,
) -> Vec<Unclaimed> {
    let mut unclaimed: Vec<Unclaimed> = Vec::new();
    let mut read_iter = ix.sorted.reads.iter().peekable();
    log.sweep(|phase, rev, state| {
        if phase == Phase::After {
            // A read at a revision the log lacks is checked at the next
            // one the log has, and flagged by check_read.
            while let Some((&at, list)) = read_iter.next_if(|(at, _)| **at <= rev) {
                for &i in list {
                    check_read(&ops[i], at, rev, state, sink);
                    point[i] = Some(at);
                }
            }
            return;
        }
        let events = log.events_at(rev);
        match ix.sorted.claims.get(&rev) {
            Some(list) => check_claimed(list, rev, state, events, ops, point, sink),
            None => unclaimed.push(unclaimed_at(rev, state, events, ops, ix, sink)),
        }
    });
    unclaimed
}

/// The acknowledged writes claiming `rev`, against `state` (the state at
/// `rev - 1`) and the revision's `events`.
fn check_claimed(
    list: &[usize],
    rev: i64,
    state: &State,
    events: &[Ev],
    ops: &[Op],
    point: &mut [Option<i64>],
    sink: &mut Sink,
) {
    if list.len() > 1 {
        let d: Vec<String> = list.iter().map(|&i| ops[i].describe()).collect();
        sink.push(
            LIN,
            format!(
                "{} writes answered with the same revision {rev}: {}",
                list.len(),
                d.join("; ")
            ),
        );
    }
    for &i in list {
        point[i] = Some(rev);
        check_acked_write(&ops[i], rev, state, events, sink);
    }
}

/// Who could explain an unclaimed `rev`: unknown writes with its effect
/// from `state` (the state at `rev - 1`), or an expiring lease. A put
/// names its writers by value; a delete-only revision can only be matched
/// by effect.
fn unclaimed_at(
    rev: i64,
    state: &State,
    events: &[Ev],
    ops: &[Op],
    ix: &Index,
    sink: &mut Sink,
) -> Unclaimed {
    let mut candidates = Vec::new();
    let mut too_early = Vec::new();
    let first_put = events.iter().find(|e| e.kind == EvKind::Put);
    let pool: Vec<usize> = match first_put {
        Some(e) => ix.by_value.get(&e.kv.value).cloned().unwrap_or_default(),
        None => ix
            .sorted
            .unknown
            .iter()
            .copied()
            .filter(|&i| deletes_first(&ops[i].req, events))
            .collect(),
    };
    for i in pool {
        if !matches!(ops[i].out, Outcome::Unknown(_)) {
            if let (Outcome::Ok(r), Some(_)) = (&ops[i].out, first_put)
                && r.wrote()
            {
                sink.push(
                    LIN,
                    format!(
                        "revision {rev} {events:?} is the effect of a write acknowledged at revision {}: {}",
                        r.rev(),
                        ops[i].describe()
                    ),
                );
            }
            continue;
        }
        let sim = simulate(&ops[i].req, state, rev);
        if !same_events(&sim.events, events) {
            continue;
        }
        match ix.rt.max_before(ops[i].call) {
            Some((p, _)) if p >= rev => too_early.push(i),
            _ => candidates.push(i),
        }
    }
    let lease = if first_put.is_none() {
        lease_explanation(state, events)
    } else {
        None
    };
    Unclaimed {
        rev,
        candidates,
        lease,
        too_early,
    }
}
/// True when the request's delete could have removed the first key
/// deleted in `events`.
fn deletes_first(req: &Request, events: &[Ev]) -> bool {
    let Some(first) = events.first() else {
        return false;
    };
    let hit = |k: &Bytes, e: &Bytes| range_contains(k, e, &first.kv.key);
    match req {
        Request::Delete { key, range_end } => hit(key, range_end),
        Request::Txn {
            success, failure, ..
        } => success.iter().chain(failure).any(|t| match t {
            TxnOp::Delete { key, range_end } => hit(key, range_end),
            _ => false,
        }),
        _ => false,
    }
}

/// `Some((lease, keys))` when `events` delete exactly the keys attached to
/// one lease in `state`.
fn lease_explanation(state: &State, events: &[Ev]) -> Option<(i64, Vec<Bytes>)> {
    let first = events.first()?;
    let lease = state.get(&first.kv.key)?.lease;
    if lease == 0 || events.iter().any(|e| e.kind != EvKind::Delete) {
        return None;
    }
    let mut want: Vec<&Bytes> = state
        .values()
        .filter(|kv| kv.lease == lease)
        .map(|kv| &kv.key)
        .collect();
    want.sort();
    let mut got: Vec<&Bytes> = events.iter().map(|e| &e.kv.key).collect();
    got.sort();
    (want == got).then(|| (lease, got.into_iter().cloned().collect()))
}
