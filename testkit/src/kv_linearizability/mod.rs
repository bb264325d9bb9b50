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

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::kv_history::{
    Ev, EvKind, Kv, Nanos, Phase, RevisionLog, State, Violation, range_contains, show, state_range,
};

/// What a compare looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmpTarget {
    Value(Bytes),
    Version(i64),
    Create(i64),
    Mod(i64),
    Lease(i64),
}

/// etcd's compare results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// A single-key compare of a Txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub target: CmpTarget,
    pub result: CmpResult,
}

impl Compare {
    /// etcd's `applyCompare` for one key: a value compare on an absent key
    /// fails; the other targets compare against zeros.
    pub fn holds(&self, state: &State) -> bool {
        let kv = state.get(&self.key);
        let ord = match (&self.target, kv) {
            (CmpTarget::Value(_), None) => return false,
            (CmpTarget::Value(v), Some(kv)) => kv.value[..].cmp(&v[..]),
            (CmpTarget::Version(x), kv) => kv.map_or(0, |k| k.version).cmp(x),
            (CmpTarget::Create(x), kv) => kv.map_or(0, |k| k.create_revision).cmp(x),
            (CmpTarget::Mod(x), kv) => kv.map_or(0, |k| k.mod_revision).cmp(x),
            (CmpTarget::Lease(x), kv) => kv.map_or(0, |k| k.lease).cmp(x),
        };
        use std::cmp::Ordering::*;
        match self.result {
            CmpResult::Equal => ord == Equal,
            CmpResult::NotEqual => ord != Equal,
            CmpResult::Greater => ord == Greater,
            CmpResult::Less => ord == Less,
        }
    }
}

/// One operation inside a Txn branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: Bytes,
        value: Bytes,
        lease: i64,
    },
    Delete {
        key: Bytes,
        range_end: Bytes,
    },
    Range {
        key: Bytes,
        range_end: Bytes,
    },
}

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Put {
        key: Bytes,
        value: Bytes,
        lease: i64,
    },
    Delete {
        key: Bytes,
        range_end: Bytes,
    },
    Txn {
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    /// `revision` 0 reads now; `serializable` reads are not linearizable
    /// and are only checked to be one consistent revision (and the
    /// client's own writes on the same session).
    Range {
        key: Bytes,
        range_end: Bytes,
        revision: i64,
        serializable: bool,
    },
}

impl Request {
    /// True for requests that may write.
    pub fn may_write(&self) -> bool {
        !matches!(self, Request::Range { .. })
    }
}

/// The answer to one op of a Txn branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    Put,
    Delete { deleted: i64 },
    Range { kvs: Vec<Kv> },
}

/// What the server answered (`rev` is the response header's revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Put {
        rev: i64,
    },
    Delete {
        rev: i64,
        deleted: i64,
    },
    Txn {
        rev: i64,
        succeeded: bool,
        results: Vec<TxnResult>,
    },
    Range {
        rev: i64,
        kvs: Vec<Kv>,
    },
}

impl Response {
    pub fn rev(&self) -> i64 {
        match self {
            Response::Put { rev }
            | Response::Delete { rev, .. }
            | Response::Txn { rev, .. }
            | Response::Range { rev, .. } => *rev,
        }
    }

    /// True when this answer says the op created a revision.
    pub fn wrote(&self) -> bool {
        match self {
            Response::Put { .. } => true,
            Response::Delete { deleted, .. } => *deleted > 0,
            Response::Txn { results, .. } => results.iter().any(|r| match r {
                TxnResult::Put => true,
                TxnResult::Delete { deleted } => *deleted > 0,
                TxnResult::Range { .. } => false,
            }),
            Response::Range { .. } => false,
        }
    }
}

/// How an op ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Response),
    /// No answer (timeout, connection lost, an error that does not say
    /// whether it was applied): a write may or may not have happened.
    Unknown(String),
    /// A definite failure: nothing happened (a read's error, a validation
    /// error).
    Failed(String),
}

/// One op of one client.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    /// The server and its incarnation the op went to (read-your-writes
    /// holds within one session: same client, same server process).
    pub session: u64,
    pub call: Nanos,
    /// When the answer arrived or the client gave up.
    pub ret: Nanos,
    pub req: Request,
    pub out: Outcome,
}

impl Op {
    fn describe(&self) -> String {
        let out = match &self.out {
            Outcome::Ok(r) => short_response(r),
            Outcome::Unknown(e) => format!("unknown ({e})"),
            Outcome::Failed(e) => format!("failed ({e})"),
        };
        format!(
            "client {} [{:.3}s..{:.3}s] {} -> {out}",
            self.client,
            secs(self.call),
            secs(self.ret),
            short_request(&self.req)
        )
    }
}

fn secs(n: Nanos) -> f64 {
    n as f64 / 1e9
}

fn short_request(r: &Request) -> String {
    match r {
        Request::Put { key, value, lease } => {
            let l = if *lease != 0 {
                format!(" lease {lease:x}")
            } else {
                String::new()
            };
            format!("Put {}={}{l}", show(key), show(value))
        }
        Request::Delete { key, range_end } => {
            format!("Delete [{}, {})", show(key), show(range_end))
        }
        Request::Txn {
            compares,
            success,
            failure,
        } => format!("Txn if {compares:?} then {success:?} else {failure:?}"),
        Request::Range {
            key,
            range_end,
            revision,
            serializable,
        } => format!(
            "Range [{}, {}) rev {revision}{}",
            show(key),
            show(range_end),
            if *serializable { " serializable" } else { "" }
        ),
    }
}

fn short_response(r: &Response) -> String {
    match r {
        Response::Range { rev, kvs } => format!("rev {rev}, {} kvs {kvs:?}", kvs.len()),
        Response::Txn {
            rev,
            succeeded,
            results,
        } => format!("rev {rev} succeeded={succeeded} {results:?}"),
        other => format!("{other:?}"),
    }
}

/// The effect a request has on a state, as the store would compute it.
#[derive(Debug, Default)]
struct Sim {
    succeeded: Option<bool>,
    events: Vec<Ev>,
    results: Vec<TxnResult>,
}

fn simulate(req: &Request, state: &State, rev: i64) -> Sim {
    let ops: Vec<TxnOp>;
    let mut sim = Sim::default();
    let branch: &[TxnOp] = match req {
        Request::Put { key, value, lease } => {
            ops = vec![TxnOp::Put {
                key: key.clone(),
                value: value.clone(),
                lease: *lease,
            }];
            &ops
        }
        Request::Delete { key, range_end } => {
            ops = vec![TxnOp::Delete {
                key: key.clone(),
                range_end: range_end.clone(),
            }];
            &ops
        }
        Request::Range { .. } => return sim,
        Request::Txn {
            compares,
            success,
            failure,
        } => {
            let ok = compares.iter().all(|c| c.holds(state));
            sim.succeeded = Some(ok);
            if ok { success } else { failure }
        }
    };
    // Writes earlier in the branch, seen by later ops of the same branch.
    let mut overlay: BTreeMap<Bytes, Option<Kv>> = BTreeMap::new();
    let view = |overlay: &BTreeMap<Bytes, Option<Kv>>, key: &Bytes, end: &[u8]| -> Vec<Kv> {
        let mut m: BTreeMap<Bytes, Kv> = state_range(state, key, end)
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        for (k, v) in overlay {
            if range_contains(key, end, k) {
                match v {
                    Some(kv) => {
                        m.insert(k.clone(), kv.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
        }
        m.into_values().collect()
    };
    for op in branch {
        match op {
            TxnOp::Put { key, value, lease } => {
                let prev = state.get(key).cloned();
                let cur = match overlay.get(key) {
                    Some(v) => v.clone(),
                    None => prev.clone(),
                };
                let kv = Kv {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: cur.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: cur.as_ref().map_or(1, |p| p.version + 1),
                    lease: *lease,
                };
                overlay.insert(key.clone(), Some(kv.clone()));
                sim.events.push(Ev {
                    kind: EvKind::Put,
                    kv,
                    prev,
                });
                sim.results.push(TxnResult::Put);
            }
            TxnOp::Delete { key, range_end } => {
                let gone = view(&overlay, key, range_end);
                for kv in &gone {
                    overlay.insert(kv.key.clone(), None);
                    sim.events.push(Ev {
                        kind: EvKind::Delete,
                        kv: Kv {
                            key: kv.key.clone(),
                            mod_revision: rev,
                            ..Default::default()
                        },
                        prev: state.get(&kv.key).cloned(),
                    });
                }
                sim.results.push(TxnResult::Delete {
                    deleted: gone.len() as i64,
                });
            }
            TxnOp::Range { key, range_end } => {
                sim.results.push(TxnResult::Range {
                    kvs: view(&overlay, key, range_end),
                });
            }
        }
    }
    sim
}

fn same_events(a: &[Ev], b: &[Ev]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.same(y, x.prev.is_some() && y.prev.is_some()))
}

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

/// At most this many messages per check; the rest are counted.
const MAX_MESSAGES: usize = 40;

struct Sink {
    out: Vec<Violation>,
    dropped: usize,
}

impl Sink {
    fn push(&mut self, checker: &'static str, m: String) {
        if self.out.len() < MAX_MESSAGES {
            self.out.push(Violation::new(checker, m));
        } else {
            self.dropped += 1;
        }
    }
}

const LIN: &str = "linearizability";

/// Checks `ops` against the store's history `log` (see the module doc).
pub fn check(log: &RevisionLog, ops: &[Op]) -> Report {
    let mut sink = Sink {
        out: Vec::new(),
        dropped: 0,
    };
    let mut point: Vec<Option<i64>> = vec![None; ops.len()];
    let mut report = Report {
        ops: ops.len(),
        revisions: log.revisions().count(),
        ..Default::default()
    };

    // Claims of acknowledged writes and the reads to check, by revision.
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

    // Real-time lower bounds of unknown writes: they must come after every
    // op with a known point that returned before they were called.
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
    let max_before = |t: Nanos| -> Option<(i64, usize)> {
        let n = by_ret.partition_point(|(r, _, _)| *r < t);
        n.checked_sub(1).map(|k| prefix_max[k])
    };

    // Values -> the requests that write them (values are unique per run).
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

    // Unclaimed revisions: (rev, ops with the same effect, a lease whose
    // keys are exactly what it deleted, content-matching ops that the
    // real-time order excludes).
    struct Unclaimed {
        rev: i64,
        candidates: Vec<usize>,
        lease: Option<(i64, Vec<Bytes>)>,
        too_early: Vec<usize>,
    }
    let mut unclaimed: Vec<Unclaimed> = Vec::new();
    let last = log.last_revision();
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

    let mut read_iter = reads.iter().peekable();
    let mut check_reads =
        |upto: i64, state: &State, sink: &mut Sink, point: &mut Vec<Option<i64>>| {
            while let Some((&at, list)) = read_iter.next_if(|(at, _)| **at <= upto) {
                for &i in list {
                    check_read(&ops[i], at, upto, state, sink);
                    point[i] = Some(at);
                }
            }
        };

    log.sweep(|phase, rev, state| {
        if phase == Phase::After {
            check_reads(rev, state, &mut sink, &mut point);
            return;
        }
        {
            let events = log.events_at(rev);
            match claims.get(&rev) {
                Some(list) => {
                    if list.len() > 1 {
                        let d: Vec<String> = list.iter().map(|&i| ops[i].describe()).collect();
                        sink.push(
                            LIN,
                            format!("{} writes answered with the same revision {rev}: {}", list.len(), d.join("; ")),
                        );
                    }
                    for &i in list {
                        point[i] = Some(rev);
                        check_acked_write(&ops[i], rev, state, events, &mut sink);
                    }
                }
                None => {
                    let mut candidates = Vec::new();
                    let mut too_early = Vec::new();
                    let first_put = events.iter().find(|e| e.kind == EvKind::Put);
                    let pool: Vec<usize> = match first_put {
                        Some(e) => by_value.get(&e.kv.value).cloned().unwrap_or_default(),
                        None => unknown
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
                        match max_before(ops[i].call) {
                            Some((p, _)) if p >= rev => too_early.push(i),
                            _ => candidates.push(i),
                        }
                    }
                    let lease = if first_put.is_none() {
                        lease_explanation(state, events)
                    } else {
                        None
                    };
                    unclaimed.push(Unclaimed {
                        rev,
                        candidates,
                        lease,
                        too_early,
                    });
                }
            }
        }
    });
    // Reads at revisions past the log's end.
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

    // Each unknown write explains at most one revision (Kuhn's matching).
    // Revisions only a client can explain go first: Kuhn's augmenting
    // paths never unmatch a matched revision, so a lease expiry can take
    // an unknown delete only when no such revision needs it.
    let adj: Vec<Vec<usize>> = unclaimed.iter().map(|x| x.candidates.clone()).collect();
    let mut order: Vec<usize> = (0..unclaimed.len()).collect();
    order.sort_by_key(|&u| unclaimed[u].lease.is_some());
    let mut owner: HashMap<usize, usize> = HashMap::new();
    for u in order {
        let mut seen = std::collections::HashSet::new();
        augment(u, &adj, &mut owner, &mut seen);
    }
    let matched: HashMap<usize, usize> = owner.iter().map(|(op, u)| (*u, *op)).collect();
    for (u, x) in unclaimed.iter().enumerate() {
        if let Some(&i) = matched.get(&u) {
            point[i] = Some(x.rev);
            report.unknown_applied += 1;
            continue;
        }
        if let Some((lease, keys)) = &x.lease {
            report.lease_deletions.push(LeaseDeletion {
                lease: *lease,
                rev: x.rev,
                keys: keys.clone(),
                ambiguous: !x.candidates.is_empty(),
            });
            continue;
        }
        let events = log.events_at(x.rev);
        let why = if let Some(&i) = x.too_early.first() {
            let (p, j) = max_before(ops[i].call).unwrap_or((0, i));
            format!(
                "its only writer {} was called after {} (revision {p}) had returned",
                ops[i].describe(),
                ops[j].describe()
            )
        } else if !x.candidates.is_empty() {
            format!(
                "its writer(s) already took effect at another revision (applied twice?): {}",
                x.candidates
                    .iter()
                    .map(|&i| ops[i].describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        } else {
            "no request of any client has this effect".to_string()
        };
        sink.push(
            LIN,
            format!(
                "revision {} {events:?} is explained by no write: {why}",
                x.rev
            ),
        );
    }

    // Real-time order among all ops with a point.
    for (i, op) in ops.iter().enumerate() {
        let Some(p) = point[i] else { continue };
        if linearizable_point(op).is_none() && !matches!(op.out, Outcome::Unknown(_)) {
            continue;
        }
        let writes = match &op.out {
            Outcome::Ok(r) => op.req.may_write() && r.wrote(),
            _ => true,
        };
        if let Some((q, j)) = max_before(op.call)
            && (q > p || (writes && q == p))
            && j != i
        {
            sink.push(
                LIN,
                format!(
                    "real-time order: {} (revision {q}) returned before {} (revision {p}) was called",
                    ops[j].describe(),
                    op.describe()
                ),
            );
        }
    }

    // Read-your-writes for serializable reads within one session.
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].client, ops[i].call));
    let mut own: HashMap<(usize, u64), (i64, usize)> = HashMap::new();
    for &i in &order {
        let op = &ops[i];
        let key = (op.client, op.session);
        match (&op.req, &op.out) {
            (
                Request::Range {
                    revision: 0,
                    serializable: true,
                    ..
                },
                Outcome::Ok(r),
            ) => {
                if let Some(&(w, j)) = own.get(&key)
                    && r.rev() < w
                {
                    sink.push(
                        LIN,
                        format!(
                            "read-your-writes: {} saw revision {} after its own {} on the same server",
                            op.describe(),
                            r.rev(),
                            ops[j].describe()
                        ),
                    );
                }
            }
            (_, Outcome::Ok(r)) if op.req.may_write() && r.wrote() => {
                let e = own.entry(key).or_insert((0, i));
                if r.rev() >= e.0 {
                    *e = (r.rev(), i);
                }
            }
            _ => {}
        }
    }

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
    report.clock = RevisionClock::new(&pts);
    if sink.dropped > 0 {
        sink.out.push(Violation::new(
            LIN,
            format!("... and {} more", sink.dropped),
        ));
    }
    report.point = point;
    report.violations = sink.out;
    report
}

/// The revision a completed op is linearized at, for ops that are
/// linearizable (not serializable reads, not reads at a past revision).
fn linearizable_point(op: &Op) -> Option<i64> {
    let Outcome::Ok(r) = &op.out else { return None };
    match &op.req {
        Request::Range {
            revision,
            serializable,
            ..
        } => (*revision == 0 && !serializable).then_some(r.rev()),
        _ => Some(r.rev()),
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

fn augment(
    u: usize,
    adj: &[Vec<usize>],
    owner: &mut HashMap<usize, usize>,
    seen: &mut std::collections::HashSet<usize>,
) -> bool {
    for &op in &adj[u] {
        if !seen.insert(op) {
            continue;
        }
        let free = match owner.get(&op) {
            None => true,
            Some(&v) => augment(v, adj, owner, seen),
        };
        if free {
            owner.insert(op, u);
            return true;
        }
    }
    false
}

fn check_acked_write(op: &Op, rev: i64, state: &State, events: &[Ev], sink: &mut Sink) {
    let Outcome::Ok(resp) = &op.out else { return };
    let sim = simulate(&op.req, state, rev);
    let mut bad = Vec::new();
    if !same_events(&sim.events, events) {
        bad.push(format!(
            "the store's revision {rev} is {events:?}, this write makes {:?}",
            sim.events
        ));
    }
    match resp {
        Response::Txn {
            succeeded, results, ..
        } => {
            if sim.succeeded != Some(*succeeded) {
                bad.push(format!(
                    "compares evaluate to {:?} at revision {}",
                    sim.succeeded,
                    rev - 1
                ));
            }
            if *results != sim.results {
                bad.push(format!("results should be {:?}", sim.results));
            }
        }
        Response::Delete { deleted, .. } if sim.events.len() as i64 != *deleted => {
            bad.push(format!("{} keys were there to delete", sim.events.len()));
        }
        _ => {}
    }
    if !bad.is_empty() {
        sink.push(LIN, format!("{}: {}", op.describe(), bad.join("; ")));
    }
}

/// Checks a read-like op answered at `at` against `state` (the state at
/// `now`, which is `at` unless the log lacks `at`).
fn check_read(op: &Op, at: i64, now: i64, state: &State, sink: &mut Sink) {
    let Outcome::Ok(resp) = &op.out else { return };
    let mut bad = Vec::new();
    if now != at {
        bad.push(format!("revision {at} is missing from the store's history"));
    }
    match (&op.req, resp) {
        (
            Request::Range {
                key,
                range_end,
                revision,
                ..
            },
            Response::Range { rev, kvs },
        ) => {
            let want = state_range(state, key, range_end);
            if *kvs != want {
                bad.push(format!("the store had {want:?} at revision {at}"));
            }
            if *revision > 0 && *rev < *revision {
                bad.push(format!(
                    "header revision {rev} below the revision {revision} read"
                ));
            }
        }
        (Request::Delete { key, range_end }, Response::Delete { .. }) => {
            let want = state_range(state, key, range_end);
            if !want.is_empty() {
                bad.push(format!(
                    "nothing deleted, but the store had {want:?} at revision {at}"
                ));
            }
        }
        (
            Request::Txn { .. },
            Response::Txn {
                succeeded, results, ..
            },
        ) => {
            let sim = simulate(&op.req, state, at + 1);
            if !sim.events.is_empty() {
                bad.push(format!(
                    "a read-only answer, but at revision {at} it would write {:?}",
                    sim.events
                ));
            }
            if sim.succeeded != Some(*succeeded) {
                bad.push(format!(
                    "compares evaluate to {:?} at revision {at}",
                    sim.succeeded
                ));
            }
            if sim.events.is_empty() && *results != sim.results {
                bad.push(format!("results should be {:?}", sim.results));
            }
        }
        _ => bad.push("response does not fit the request".into()),
    }
    if !bad.is_empty() {
        sink.push(LIN, format!("{}: {}", op.describe(), bad.join("; ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_history::tests::{b, log_of};

    fn op(client: usize, call: Nanos, ret: Nanos, req: Request, out: Outcome) -> Op {
        Op {
            client,
            session: client as u64,
            call,
            ret,
            req,
            out,
        }
    }

    fn put(k: &str, v: &str) -> Request {
        Request::Put {
            key: b(k),
            value: b(v),
            lease: 0,
        }
    }

    fn get(k: &str) -> Request {
        Request::Range {
            key: b(k),
            range_end: Bytes::new(),
            revision: 0,
            serializable: false,
        }
    }

    fn ok(r: Response) -> Outcome {
        Outcome::Ok(r)
    }

    fn kvs(log: &RevisionLog, rev: i64, k: &str) -> Vec<Kv> {
        state_range(&log.state_at(rev), &b(k), b"")
    }

    /// a=1 at 2, b=1 at 3, then a txn at 4 that swaps a to 2 and writes c.
    fn base() -> (RevisionLog, Vec<Op>) {
        let log = log_of(&[
            (2, &[("a", Some("1"))]),
            (3, &[("b", Some("1"))]),
            (4, &[("a", Some("2")), ("c", Some("1"))]),
        ]);
        let txn = Request::Txn {
            compares: vec![Compare {
                key: b("a"),
                target: CmpTarget::Value(b("1")),
                result: CmpResult::Equal,
            }],
            success: vec![
                TxnOp::Put {
                    key: b("a"),
                    value: b("2"),
                    lease: 0,
                },
                TxnOp::Put {
                    key: b("c"),
                    value: b("1"),
                    lease: 0,
                },
            ],
            failure: vec![TxnOp::Range {
                key: b("a"),
                range_end: Bytes::new(),
            }],
        };
        let ops = vec![
            op(0, 0, 10, put("a", "1"), ok(Response::Put { rev: 2 })),
            op(1, 5, 20, put("b", "1"), ok(Response::Put { rev: 3 })),
            op(
                0,
                21,
                30,
                txn,
                ok(Response::Txn {
                    rev: 4,
                    succeeded: true,
                    results: vec![TxnResult::Put, TxnResult::Put],
                }),
            ),
            op(
                2,
                31,
                40,
                get("a"),
                ok(Response::Range {
                    rev: 4,
                    kvs: kvs(&log, 4, "a"),
                }),
            ),
        ];
        (log, ops)
    }

    #[test]
    fn a_legal_multi_key_history_passes() {
        let (log, ops) = base();
        let r = check(&log, &ops);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.writes_acked, r.reads), (3, 1));
        assert_eq!(r.clock.committed_by(3), Some(20));
        assert_eq!(r.clock.not_before(4), Some(5));
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        let (log, mut ops) = base();
        // Called after the txn returned, answered at revision 3.
        ops[3].out = ok(Response::Range {
            rev: 3,
            kvs: kvs(&log, 3, "a"),
        });
        let r = check(&log, &ops);
        assert!(
            format!("{:?}", r.violations).contains("real-time order"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_read_that_does_not_match_its_revision_is_a_violation() {
        let (log, mut ops) = base();
        ops[3].out = ok(Response::Range {
            rev: 4,
            kvs: kvs(&log, 3, "a"),
        });
        let r = check(&log, &ops);
        assert!(
            format!("{:?}", r.violations).contains("the store had"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_txn_whose_compare_cannot_hold_is_a_violation() {
        let (log, mut ops) = base();
        // The txn says it failed, yet a == 1 at revision 3 and it wrote.
        if let Outcome::Ok(Response::Txn { succeeded, .. }) = &mut ops[2].out {
            *succeeded = false;
        }
        let r = check(&log, &ops);
        assert!(!r.violations.is_empty());
        // A half-applied txn: revision 4 lacks c.
        let (_, ops) = base();
        let torn = log_of(&[
            (2, &[("a", Some("1"))]),
            (3, &[("b", Some("1"))]),
            (4, &[("a", Some("2"))]),
        ]);
        let r = check(&torn, &ops);
        assert!(
            format!("{:?}", r.violations).contains("this write makes"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        let (log, mut ops) = base();
        ops.push(op(3, 50, 60, put("d", "1"), ok(Response::Put { rev: 5 })));
        let r = check(&log, &ops);
        assert!(
            format!("{:?}", r.violations).contains("acknowledged write lost"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn unknown_writes_may_apply_once_after_their_call_or_never() {
        let (mut log, mut ops) = base();
        // An unknown put found at revision 5, and one never applied.
        let prev = log.state_at(4).get(&b("b")).cloned();
        log.push_revision(
            5,
            vec![crate::kv_history::tests::put(
                "b",
                "u1",
                5,
                prev.as_ref(),
                0,
            )],
        );
        ops.push(op(
            3,
            41,
            45,
            put("b", "u1"),
            Outcome::Unknown("timeout".into()),
        ));
        ops.push(op(
            4,
            41,
            45,
            put("b", "u2"),
            Outcome::Unknown("timeout".into()),
        ));
        let r = check(&log, &ops);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.unknown_applied, 1);
        // The same unknown put cannot explain a revision before ops that
        // finished before it was called: call it after the read at 4... and
        // claim it applied at 4's place by moving the read later.
        let mut late = ops.clone();
        late[3].out = ok(Response::Range {
            rev: 5,
            kvs: kvs(&log, 5, "a"),
        });
        late[3].ret = 40;
        // The read at revision 5 returned at 40, before the unknown put
        // was called at 41: the put cannot be revision 5.
        let r = check(&log, &late);
        assert!(
            format!("{:?}", r.violations).contains("was called after"),
            "{:?}",
            r.violations
        );
        // A revision nobody wrote.
        let mut phantom = log.clone();
        let prev = log.state_at(5).get(&b("a")).cloned();
        phantom.push_revision(
            6,
            vec![crate::kv_history::tests::put(
                "a",
                "ghost",
                6,
                prev.as_ref(),
                0,
            )],
        );
        let r = check(&phantom, &ops);
        assert!(
            format!("{:?}", r.violations).contains("explained by no write"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_write_applied_twice_is_a_violation() {
        let (mut log, mut ops) = base();
        let s4 = log.state_at(4);
        log.push_revision(
            5,
            vec![crate::kv_history::tests::put(
                "b",
                "u1",
                5,
                s4.get(&b("b")),
                0,
            )],
        );
        let s5 = log.state_at(5);
        log.push_revision(
            6,
            vec![crate::kv_history::tests::put(
                "b",
                "u1",
                6,
                s5.get(&b("b")),
                0,
            )],
        );
        ops.push(op(
            3,
            41,
            45,
            put("b", "u1"),
            Outcome::Unknown("timeout".into()),
        ));
        let r = check(&log, &ops);
        assert!(
            format!("{:?}", r.violations).contains("applied twice"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn lease_expiry_explains_deleting_exactly_a_leases_keys() {
        let mut log = RevisionLog::new(1, State::new());
        let p1 = crate::kv_history::tests::put("x", "1", 2, None, 7);
        let p2 = crate::kv_history::tests::put("y", "1", 3, None, 7);
        log.push_revision(2, vec![p1.clone()]);
        log.push_revision(3, vec![p2.clone()]);
        log.push_revision(
            4,
            vec![
                crate::kv_history::tests::del("x", 4, &p1.kv),
                crate::kv_history::tests::del("y", 4, &p2.kv),
            ],
        );
        let lp = |k: &str| Request::Put {
            key: b(k),
            value: b("1"),
            lease: 7,
        };
        let ops = vec![
            op(0, 0, 1, lp("x"), ok(Response::Put { rev: 2 })),
            op(0, 2, 3, lp("y"), ok(Response::Put { rev: 3 })),
        ];
        let r = check(&log, &ops);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.lease_deletions.len(), 1);
        assert_eq!(r.lease_deletions[0].lease, 7);
        // Deleting only one of the lease's keys is no expiry.
        let mut half = RevisionLog::new(1, State::new());
        half.push_revision(2, vec![p1.clone()]);
        half.push_revision(3, vec![p2]);
        half.push_revision(4, vec![crate::kv_history::tests::del("x", 4, &p1.kv)]);
        let r = check(&half, &ops);
        assert!(
            format!("{:?}", r.violations).contains("explained by no write"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn serializable_reads_must_see_the_clients_own_writes() {
        let (log, mut ops) = base();
        ops.push(op(
            0,
            31,
            32,
            Request::Range {
                key: b("a"),
                range_end: Bytes::new(),
                revision: 0,
                serializable: true,
            },
            ok(Response::Range {
                rev: 3,
                kvs: kvs(&log, 3, "a"),
            }),
        ));
        let r = check(&log, &ops);
        assert!(
            format!("{:?}", r.violations).contains("read-your-writes"),
            "{:?}",
            r.violations
        );
        // Another client's serializable read may lag.
        ops.last_mut().unwrap().client = 9;
        ops.last_mut().unwrap().session = 9;
        assert!(check(&log, &ops).violations.is_empty());
    }

    #[test]
    fn reads_at_a_revision_see_that_revision() {
        let (log, mut ops) = base();
        ops.push(op(
            5,
            50,
            60,
            Request::Range {
                key: b("a"),
                range_end: b("d"),
                revision: 3,
                serializable: false,
            },
            ok(Response::Range {
                rev: 4,
                kvs: state_range(&log.state_at(3), &b("a"), b"d"),
            }),
        ));
        assert!(check(&log, &ops).violations.is_empty());
        ops.last_mut().unwrap().out = ok(Response::Range {
            rev: 4,
            kvs: state_range(&log.state_at(4), &b("a"), b"d"),
        });
        assert!(!check(&log, &ops).violations.is_empty());
    }
}
