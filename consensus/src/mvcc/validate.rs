//! Checks etcd makes before a request is proposed (v3rpc's key.go): these
//! never reach the log, so a bad request costs no revision.

use lookout_proto::pb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};

use crate::error::{Error, Result};

/// The checks the cache makes too ([`lookout_semantics::validate_range`]).
///
/// # Errors
/// [`Error::EmptyKey`], [`Error::InvalidSortOption`].
pub fn check_range(r: &RangeRequest) -> Result<()> {
    Ok(lookout_semantics::validate_range(r)?)
}

/// # Errors
/// Empty key, or a value/lease given together with `ignore_*`.
pub fn check_put(p: &PutRequest) -> Result<()> {
    if p.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// # Errors
/// [`Error::EmptyKey`].
pub fn check_delete(d: &DeleteRangeRequest) -> Result<()> {
    if d.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// # Errors
/// Too many operations, a bad nested request, or a key written twice.
pub fn check_txn(t: &TxnRequest, max_txn_ops: usize) -> Result<()> {
    check_txn_ops(t, max_txn_ops)?;
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

fn check_txn_ops(t: &TxnRequest, max: usize) -> Result<()> {
    if t.compare.len() > max || t.success.len() > max || t.failure.len() > max {
        return Err(Error::TooManyOps);
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(Error::EmptyKey);
        }
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r)?,
            Some(request_op::Request::RequestPut(p)) => check_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => check_delete(d)?,
            Some(request_op::Request::RequestTxn(n)) => check_txn_ops(n, max)?,
            None => {}
        }
    }
    Ok(())
}

/// A delete's key span; `end == None` means from `start` to the end.
#[derive(Debug, Clone)]
struct Span {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    point: bool,
}

impl Span {
    fn contains(&self, k: &[u8]) -> bool {
        if self.point {
            return k == self.start.as_slice();
        }
        k >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| k < e.as_slice())
    }
}

/// etcd's checkIntervals: within one branch (and the branches nested in
/// it) no key may be put twice or be put and deleted. Puts in the two
/// branches of one nested txn may repeat, since only one branch runs.
fn check_intervals(ops: &[RequestOp]) -> Result<()> {
    intervals(ops).map(|_| ())
}

fn intervals(ops: &[RequestOp]) -> Result<(std::collections::HashSet<Vec<u8>>, Vec<Span>)> {
    let mut dels: Vec<Span> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(if d.range_end.is_empty() {
                Span {
                    start: d.key.to_vec(),
                    end: None,
                    point: true,
                }
            } else {
                Span {
                    start: d.key.to_vec(),
                    end: (d.range_end.as_ref() != [0]).then(|| d.range_end.to_vec()),
                    point: false,
                }
            }),
            _ => None,
        })
        .collect();
    let mut puts = std::collections::HashSet::new();
    let hits = |dels: &[Span], k: &[u8]| dels.iter().any(|s| s.contains(k));
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || hits(&dels, &k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k = p.key.to_vec();
        if puts.contains(&k) || hits(&dels, &k) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.to_string().into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.to_string().into(),
                    range_end: end.to_string().into(),
                    ..Default::default()
                },
            )),
        }
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let t = |ops: Vec<RequestOp>| {
            check_txn(
                &TxnRequest {
                    success: ops,
                    ..Default::default()
                },
                128,
            )
        };
        assert_eq!(t(vec![put("a"), put("a")]), Err(Error::DuplicateKey));
        assert_eq!(t(vec![put("b"), del("a", "c")]), Err(Error::DuplicateKey));
        assert_eq!(t(vec![put("c"), del("a", "c")]), Ok(()));
        assert_eq!(t(vec![del("a", ""), del("a", "")]), Ok(()));
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![put("x")],
                failure: vec![put("x")],
                ..Default::default()
            })),
        };
        assert_eq!(t(vec![nested.clone()]), Ok(()));
        assert_eq!(t(vec![nested, put("x")]), Err(Error::DuplicateKey));
        let many = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(t(many), Err(Error::TooManyOps));
    }
}
