//! The KV service: Range from the cache (or upstream when the cache cannot
//! answer exactly), writes forwarded and held until the cache has them.
//!
//! Auth, as etcd checks it: a read served from the cache is checked here
//! (read permission on its range, every compare and range of a read-only
//! txn); a forwarded call travels with the client's token when it has one
//! (the store checks it), else only after the same check passed here
//! (see `auth`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use lookout_cache::{CacheError, CallAs, KeyRange, WriteScope, validate_range};
use lookout_consensus::auth::{check_delete, check_put, check_range, check_txn};
use lookout_proto::pb::request_op;
use lookout_proto::pb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use tonic::{Request, Response, Status};

use crate::auth::{Creds, Who};
use crate::error::GatewayError;
use crate::shared::Shared;

#[derive(Debug, Clone)]
pub(crate) struct KvService {
    shared: Arc<Shared>,
}

impl KvService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// A Range the cache cannot answer, as `who`.
    async fn forward_range(&self, who: &Who, req: RangeRequest) -> Result<RangeResponse, Status> {
        let s = &self.shared;
        let as_ = s
            .auth
            .forward(who, |st, w| check_range(st, w, &req.key, &req.range_end))?;
        s.metrics.ranges_forwarded.fetch_add(1, Relaxed);
        let mut resp = s
            .forward(as_)
            .kv(req, |mut c, r| async move { c.range(r).await })
            .await?;
        s.restamp(&mut resp.header);
        Ok(resp)
    }
}

/// The keys attached to each lease a write names (`LeaseTimeToLive` with
/// keys, as the gateway), for a check made here: a put onto a lease needs
/// write permission on the keys already on it.
pub(crate) async fn lease_keys(
    s: &Shared,
    leases: impl IntoIterator<Item = i64>,
) -> Result<std::collections::HashMap<i64, Vec<bytes::Bytes>>, Status> {
    let mut m = std::collections::HashMap::new();
    for id in leases {
        if id == 0 || m.contains_key(&id) {
            continue;
        }
        let req = lookout_proto::pb::LeaseTimeToLiveRequest { id, keys: true };
        let r = s
            .forward(CallAs::Gateway)
            .lease(req, |mut c, r| async move { c.lease_time_to_live(r).await })
            .await?;
        m.insert(id, r.keys);
    }
    Ok(m)
}

/// Every lease a put of `t` names (both branches, nested txns).
fn txn_leases(t: &TxnRequest, out: &mut Vec<i64>) {
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) if p.lease != 0 => out.push(p.lease),
            Some(request_op::Request::RequestTxn(n)) => txn_leases(n, out),
            _ => {}
        }
    }
}

/// Whether a write check made here must know leases' keys: only when the
/// store cannot judge the client itself and auth is on.
fn needs_lease_keys(s: &Shared, who: &Who) -> bool {
    !who.store_judges() && s.auth.state(who).enabled
}

impl KvService {
    /// A Range with an index filter: always from the cache (the store cannot
    /// filter, and forwarding would answer unfiltered). A past revision is
    /// rebuilt from the history ring or refused; a revision the cache has
    /// not reached yet is waited for if the store has it, else etcd's
    /// "future revision".
    async fn filtered_range(
        &self,
        who: &Who,
        req: RangeRequest,
        range: &KeyRange,
    ) -> Result<RangeResponse, Status> {
        let s = &self.shared;
        s.ready().await?;
        check_filter(s, range, &req.index, &req.value)?;
        s.auth
            .check(who, |st, w| check_range(st, w, &req.key, &req.range_end))?;
        let mut snap = s.read_snapshot(req.serializable).await?;
        if req.revision > snap.revision() {
            let current = s.read_index.current_revision(s.cache.upstream()).await?;
            if req.revision > current {
                return Err(crate::error::future_revision());
            }
            snap = s
                .cache
                .wait_for_revision(req.revision, s.config.read_timeout)
                .await?;
        }
        let resp = s.cache.range_at(&snap, &req)?;
        s.metrics.ranges_cached.fetch_add(1, Relaxed);
        Ok(resp)
    }
}

/// Refuses an index filter this gateway could never serve: a range it does
/// not cache, an unknown index, a value without an index, a range outside
/// the index's scope.
fn check_filter(
    s: &Shared,
    range: &KeyRange,
    index: &str,
    value: &bytes::Bytes,
) -> Result<(), Status> {
    if !s.cache.covers(range) {
        return Err(GatewayError::FilterOutOfScope.into());
    }
    s.cache
        .indexes()
        .resolve(range, index, value)
        .map_err(Status::from)?;
    Ok(())
}

/// Whether a Txn (at any depth) holds a Range with an index filter; a
/// filter that could never be served (unknown index, bad value, a range
/// outside the index's scope or the cache) is refused with the same error a
/// plain filtered Range gets, before anything else is said about the Txn.
fn txn_filters(s: &Shared, req: &TxnRequest) -> Result<bool, Status> {
    let mut any = false;
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r))
                if !r.index.is_empty() || !r.value.is_empty() =>
            {
                let range = KeyRange::from_request(&r.key, &r.range_end);
                check_filter(s, &range, &r.index, &r.value)?;
                any = true;
            }
            Some(request_op::Request::RequestTxn(t)) => any |= txn_filters(s, t)?,
            _ => {}
        }
    }
    Ok(any)
}

/// Whether a put or delete of the Txn (either branch, at any depth) names a
/// cached key.
fn txn_writes_cached(s: &Shared, req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(p)) => s.cache.holds(&p.key),
            Some(request_op::Request::RequestDeleteRange(d)) => s
                .cache
                .touches(&KeyRange::from_request(&d.key, &d.range_end)),
            Some(request_op::Request::RequestTxn(t)) => txn_writes_cached(s, t),
            _ => false,
        })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let creds = Creds::of_request(&request);
        let req = request.into_inner();
        let s = &self.shared;
        // etcd checks the request before anything else: a bad one gets
        // InvalidArgument even while the store is unreachable.
        validate_range(&req)?;
        let who = s.auth.who(&creds).await?;
        // Storm control: a list (more than one key, not just a count) runs
        // only with a permit; a burst beyond the queue gets
        // ResourceExhausted with a retry hint instead of piling up.
        let _permit = if !req.range_end.is_empty() && !req.count_only {
            Some(s.lists.enter(&s.metrics.lists).await?)
        } else {
            None
        };
        let range = KeyRange::from_request(&req.key, &req.range_end);
        if !req.index.is_empty() || !req.value.is_empty() {
            return self
                .filtered_range(&who, req, &range)
                .await
                .map(Response::new);
        }
        // A read at another revision than the cache's current one: the store
        // answers it (old data, compacted, or "future revision") exactly.
        let other_rev = req.revision > 0 && req.revision != s.cache.revision();
        if !s.cache.covers(&range) || other_rev {
            return self.forward_range(&who, req).await.map(Response::new);
        }
        let snap = s.read_snapshot(req.serializable).await?;
        // Checked against the copy of the auth state as it is now, after
        // the read index (as etcd checks after its own).
        s.auth
            .check(&who, |st, w| check_range(st, w, &req.key, &req.range_end))?;
        match s.cache.range_at(&snap, &req) {
            Ok(resp) => {
                s.metrics.ranges_cached.fetch_add(1, Relaxed);
                Ok(Response::new(resp))
            }
            // The cache moved past the asked revision meanwhile.
            Err(CacheError::RevisionNotCached { .. }) => {
                self.forward_range(&who, req).await.map(Response::new)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let s = &self.shared;
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        let req = request.into_inner();
        let leases = if needs_lease_keys(s, &who) && req.lease != 0 {
            lease_keys(s, [req.lease]).await?
        } else {
            Default::default()
        };
        let as_ = s
            .auth
            .forward(&who, |st, w| check_put(st, &leases, w, &req))?;
        let scope = if s.cache.holds(&req.key) {
            WriteScope::Inside
        } else {
            WriteScope::Outside
        };
        let mut resp = s
            .forward(as_)
            .kv(req, |mut c, r| async move { c.put(r).await })
            .await?;
        s.after_write(resp.header.as_ref(), scope).await;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let s = &self.shared;
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        let req = request.into_inner();
        let as_ = s.auth.forward(&who, |st, w| check_delete(st, w, &req))?;
        let range = KeyRange::from_request(&req.key, &req.range_end);
        let mut resp = s
            .forward(as_)
            .kv(req, |mut c, r| async move { c.delete_range(r).await })
            .await?;
        let scope = if !s.cache.touches(&range) {
            WriteScope::Outside
        } else if resp.deleted > 0 && s.cache.covers(&range) {
            WriteScope::Inside
        } else {
            WriteScope::Unknown
        };
        s.after_write(resp.header.as_ref(), scope).await;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let s = &self.shared;
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        let req = request.into_inner();
        let no_leases = std::collections::HashMap::new();
        // A read-only txn the cache answers is checked here, every compare
        // and range of both branches, whoever sent it.
        let check = || {
            s.auth
                .check(&who, |st, w| check_txn(st, &no_leases, w, &req))
        };
        if let Some(r) = crate::txn::from_cache(s, &req, check).await {
            return r.map(Response::new);
        }
        if txn_filters(s, &req)? {
            // The store would ignore the filter and answer unfiltered.
            return Err(GatewayError::FilterInTxn.into());
        }
        let leases = if needs_lease_keys(s, &who) {
            let mut ids = Vec::new();
            txn_leases(&req, &mut ids);
            lease_keys(s, ids).await?
        } else {
            Default::default()
        };
        let as_ = s
            .auth
            .forward(&who, |st, w| check_txn(st, &leases, w, &req))?;
        let scope = if txn_writes_cached(s, &req) {
            WriteScope::Unknown
        } else {
            WriteScope::Outside
        };
        let mut resp = s
            .forward(as_)
            .kv(req, |mut c, r| async move { c.txn(r).await })
            .await?;
        s.after_write(resp.header.as_ref(), scope).await;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let s = &self.shared;
        // etcd 3.4 lets anyone compact; a token must still be valid.
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        s.auth.named(&who)?;
        let req = request.into_inner();
        let revision = req.revision;
        let mut resp = s
            .forward(s.auth.pass(&who))
            .kv(req, |mut c, r| async move { c.compact(r).await })
            .await?;
        s.after_write(resp.header.as_ref(), WriteScope::Unknown)
            .await;
        // The store dropped everything below req.revision: so does the ring,
        // so a watch from there is cancelled with compact_revision as etcd
        // would, not replayed.
        s.cache.note_compaction(revision);
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }
}
