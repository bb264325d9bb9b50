//! Read-only transactions answered from one cache snapshot, exactly as
//! etcd 3.4 evaluates them (`etcdserver/apply.go`: `applyCompare`,
//! `compareKV`): a compare over a range holds only if it holds for every
//! key; over no key it is evaluated against an empty key-value, except a
//! VALUE compare, which then fails.
//!
//! ```text
//!   TxnRequest ─ reads only, within the cached prefixes, no revision ─> snapshot
//!        │                                       compares ─> branch ─> ranges
//!        └─ anything else (writes, nested txns, revisions, > 128 ops) ─> upstream
//! ```

use std::ops::Bound;
use std::sync::atomic::Ordering::Relaxed;

use lookout_cache::{KeyRange, Snapshot, evaluate_range, validate_range};
use lookout_proto::pb::{Compare, ResponseOp, TxnRequest, TxnResponse, request_op, response_op};
use tonic::Status;

use crate::shared::Shared;

/// etcd's default `--max-txn-ops`. Larger txns go to the store, which
/// answers with its own limit.
const MAX_TXN_OPS: usize = 128;

/// `Some(answer)` when the txn only reads keys the cache holds; `None` when
/// it must go to the store. `check` (the caller's permissions) runs once
/// the cache is known to answer, before anything is read.
pub(crate) async fn from_cache(
    shared: &Shared,
    req: &TxnRequest,
    check: impl FnOnce() -> Result<(), Status>,
) -> Option<Result<TxnResponse, Status>> {
    if !shared.cache.is_ready() || !eligible(shared, req) {
        return None;
    }
    if let Err(e) = check() {
        return Some(Err(e));
    }
    // etcd serves a read-only txn without the read index when every range
    // in it is serializable.
    let serializable = ops(req).all(|r| r.serializable);
    let snap = match shared.read_snapshot(serializable).await {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    let succeeded = req.compare.iter().all(|c| compare(&snap, c));
    let branch = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut responses = Vec::with_capacity(branch.len());
    for op in branch {
        let Some(request_op::Request::RequestRange(r)) = &op.request else {
            return None;
        };
        // The nested header carries only the revision, as etcd's does.
        let resp = evaluate_range(&snap, r).ok()?;
        responses.push(ResponseOp {
            response: Some(response_op::Response::ResponseRange(resp)),
        });
    }
    shared.metrics.txns_cached.fetch_add(1, Relaxed);
    Some(Ok(TxnResponse {
        header: Some(shared.cache.header(snap.revision())),
        succeeded,
        responses,
    }))
}

/// Every range of both branches (only meaningful once `eligible`).
fn ops(req: &TxnRequest) -> impl Iterator<Item = &lookout_proto::pb::RangeRequest> {
    req.success
        .iter()
        .chain(&req.failure)
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => Some(r),
            _ => None,
        })
}

fn eligible(shared: &Shared, req: &TxnRequest) -> bool {
    let n = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if n > MAX_TXN_OPS {
        return false;
    }
    let covered = |key: &bytes::Bytes, end: &bytes::Bytes| {
        shared.cache.covers(&KeyRange::from_request(key, end))
    };
    let compares_ok = req
        .compare
        .iter()
        .all(|c| !c.key.is_empty() && covered(&c.key, &c.range_end));
    let ops_ok = req
        .success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                r.revision == 0
                    && validate_range(r).is_ok()
                    && covered(&r.key, &r.range_end)
                    && (r.index.is_empty() && r.value.is_empty()
                        || shared
                            .cache
                            .indexes()
                            .resolve(
                                &KeyRange::from_request(&r.key, &r.range_end),
                                &r.index,
                                &r.value,
                            )
                            .is_ok())
            }
            _ => false,
        });
    compares_ok && ops_ok
}

/// etcd's `applyCompare` over the snapshot (the one implementation, in
/// `lookout_semantics`, that the store's txns use too).
fn compare(snap: &Snapshot, c: &Compare) -> bool {
    let range = KeyRange::from_request(&c.key, &c.range_end);
    if range.is_empty() {
        return lookout_semantics::compare::compare(c, std::iter::empty());
    }
    let bounds = (
        Bound::Included(range.start().as_ref()),
        match range.end() {
            Some(e) => Bound::Excluded(e.as_ref()),
            None => Bound::Unbounded,
        },
    );
    let kvs = snap
        .data()
        .range::<_, [u8]>(bounds)
        .map(|(_, kv)| kv.as_ref());
    lookout_semantics::compare::compare(c, kvs)
}
