//! Linearizability of multi-key etcd operations (Put, DeleteRange, Txn
//! with compares, Range now, serializable or at a revision), with the
//! store's revisions as the witness order.
//!
//! ```text
//!   RevisionLog (every revision's events)      ops (call, return | unknown, request, response)
//!        │                                         │
//!        └── sweep revisions in order ──────────────┤
//!              before r: each acknowledged write claiming r must produce
//!                        exactly r's events from the state at r - 1;
//!                        an unclaimed r is a candidate for the unknown
//!                        writes (or lease expiries) whose effect it is
//!              after r:  each read answered at r must equal the state at r
//!        match unclaimed revisions to unknown writes (bipartite, each once)
//!        real time: an op that returned before B was called has a
//!                   revision <= B's (< when B writes)
//! ```
//!
//! Why revisions make this tractable: etcd orders every write by one
//! global revision and every read names the revision it saw, so the
//! linearization is given, not searched; what is left to check is that it
//! is a legal one. A write whose client got no answer (timed out,
//! connection lost) is unknown: it may have taken effect once at any
//! revision after every op that finished before it was called, or never.
//! Every written value is unique, so a revision containing a put names its
//! writer; delete-only revisions are matched by their effect.
//!
//! [`check`] runs its phases in this order, one file each: `index` (ops by
//! claimed or read revision, real-time bounds, writers by value), `sweep`
//! (with `answers` and `simulate`: each revision against its claimants or
//! its candidate explanations), `unknown` (the matching), `order` (real
//! time, read-your-writes), `clock`. The order matters only for which
//! messages `sink` keeps when there are many.

mod answers;
mod clock;
mod index;
mod ops;
mod order;
mod simulate;
mod sink;
mod sweep;
#[cfg(test)]
mod tests;
mod unknown;

use bytes::Bytes;

pub use self::clock::RevisionClock;
use self::index::{Index, RealTime, sort_ops, writers_by_value};
pub use self::ops::{
    CmpResult, CmpTarget, Compare, Op, Outcome, Request, Response, TxnOp, TxnResult,
};
use self::order::{read_your_writes, real_time_order};
use self::sink::Sink;
use self::sweep::{lost_acked_writes, reads_beyond_log, sweep};
use self::unknown::explain_unclaimed;
use crate::kv_history::{RevisionLog, Violation};

/// Keys of one lease deleted together at one revision, with no client
/// request that could have done it: the lease expired (or was revoked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseDeletion {
    pub lease: i64,
    pub rev: i64,
    pub keys: Vec<Bytes>,
    /// An unknown client delete could also explain this revision, so the
    /// lease checker must not blame the lease for it.
    pub ambiguous: bool,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub ops: usize,
    pub writes_acked: usize,
    pub writes_unknown: usize,
    /// Unknown writes found in the history (the rest never took effect).
    pub unknown_applied: usize,
    pub reads: usize,
    pub revisions: usize,
    pub lease_deletions: Vec<LeaseDeletion>,
    /// Per op: the revision it took effect at (writes) or read at.
    pub point: Vec<Option<i64>>,
    pub clock: RevisionClock,
    pub violations: Vec<Violation>,
}

/// Checks `ops` against the store's history `log` (see the module doc).
///
/// The phases run in a fixed order because the first messages are the
/// ones kept when a broken run produces many.
pub fn check(log: &RevisionLog, ops: &[Op]) -> Report {
    let mut sink = Sink::default();
    let mut point: Vec<Option<i64>> = vec![None; ops.len()];
    let mut report = Report {
        ops: ops.len(),
        revisions: log.revisions().count(),
        ..Default::default()
    };
    let ix = Index {
        sorted: sort_ops(ops, &mut report),
        rt: RealTime::new(ops),
        by_value: writers_by_value(ops),
    };
    let last = log.last_revision();
    lost_acked_writes(&ix.sorted.claims, last, ops, &mut sink);
    let unclaimed = sweep(log, ops, &ix, &mut point, &mut sink);
    reads_beyond_log(&ix.sorted.reads, last, ops, &mut sink);
    explain_unclaimed(
        log,
        ops,
        &ix,
        &unclaimed,
        &mut point,
        &mut report,
        &mut sink,
    );
    real_time_order(ops, &point, &ix.rt, &mut sink);
    read_your_writes(ops, &mut sink);
    report.clock = RevisionClock::of_points(ops, &point);
    report.point = point;
    report.violations = sink.finish();
    report
}
