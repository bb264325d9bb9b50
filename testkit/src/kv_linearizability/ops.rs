//! What the clients asked and were answered: the requests, responses and
//! outcomes the checker reads, and how an op is shown in a violation.

use bytes::Bytes;

use crate::kv_history::{Kv, Nanos, State, show};

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
    pub(super) fn describe(&self) -> String {
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

/// The revision a completed op is linearized at, for ops that are
/// linearizable (not serializable reads, not reads at a past revision).
pub(super) fn linearizable_point(op: &Op) -> Option<i64> {
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
