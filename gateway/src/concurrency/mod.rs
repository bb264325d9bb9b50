//! etcd's Lock and Election services (`v3lockpb.Lock`,
//! `v3electionpb.Election`), built the way etcd builds them: as clients of
//! the KV, Lease and Watch API (etcd's `v3lock`/`v3election` run
//! `clientv3/concurrency` against their own server). Written once over
//! [`EtcdApi`], so `lookout store` runs them on its store and a gateway on
//! its cache and upstream.
//!
//! ```text
//!   Lock(name, lease)            txn: create name/<lease hex> if absent ─> owner = lowest create rev
//!     └ not owner ─> wait_deletes: last key created before mine ─> watch it until DELETE ─> again
//!   Campaign(name, lease, value) the same keys and wait, value = the candidate's
//!   Observe(name)                first-created key under name/, then its PUTs until its DELETE
//! ```
//!
//! On a gateway every wait is a watch on the cache: a thousand clients
//! queued on one lock are a thousand cache watchers and no upstream watch.
//! A gateway that does not cache the lock's prefix forwards the whole call
//! to its upstream instead ([`EtcdApi::concurrency_upstream`]).
//!
//! It must never report a lock or leadership before etcd would (the
//! owner is decided by create revisions the store assigned), never leave a
//! waiter's key behind when the waiter gives up (cancelled or failed
//! waits delete it, as etcd's do), and never answer differently from etcd
//! for the same calls (the same keys, headers, errors).

mod election;
mod lock;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use lookout_proto::mvccpb::event::EventType;
use lookout_proto::pb::{
    self, Compare, DeleteRangeRequest, LeaseGrantRequest, RangeRequest, RequestOp, ResponseHeader,
    TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, compare,
    range_request::{SortOrder, SortTarget},
    request_op, watch_request,
};
use lookout_proto::pb::{kv_server::Kv, lease_server::Lease};
use tonic::Status;

use crate::api::{ApiResult, CallMeta, EtcdApi, WatchEvent, inner};

pub use election::ElectionService;
pub use lock::LockService;

/// `routes` plus the Lock and Election services over `api`, taking
/// requests up to `max_in` bytes.
pub fn add_routes<A: EtcdApi>(
    routes: tonic::service::Routes,
    api: &A,
    max_in: usize,
) -> tonic::service::Routes {
    use lookout_proto::v3electionpb::election_server::ElectionServer;
    use lookout_proto::v3lockpb::lock_server::LockServer;
    routes
        .add_service(
            LockServer::new(LockService::new(api.clone())).max_decoding_message_size(max_in),
        )
        .add_service(
            ElectionServer::new(ElectionService::new(api.clone()))
                .max_decoding_message_size(max_in),
        )
}

/// The TTL etcd's `concurrency.NewSession` grants when a call names no
/// lease (lease 0): the key then lives this long, nobody keeps it alive.
const DEFAULT_SESSION_TTL: i64 = 60;

/// The KV calls Lock and Election make, over one backend, as the client
/// whose call they serve: each carries that client's metadata (its token)
/// and connection (its certificate), so the backend checks them as the
/// client's own KV calls, as etcd's in-process clients do.
#[derive(Debug, Clone)]
pub(crate) struct Client<A> {
    api: A,
    meta: CallMeta,
}

impl<A: EtcdApi> Client<A> {
    pub(crate) fn new(api: A) -> Self {
        Self {
            api,
            meta: CallMeta::default(),
        }
    }

    /// The same backend, calling as the sender of `meta`.
    pub(crate) fn with(&self, meta: CallMeta) -> Self {
        Self {
            api: self.api.clone(),
            meta,
        }
    }

    pub(crate) fn api(&self) -> &A {
        &self.api
    }

    async fn txn(&self, r: TxnRequest) -> ApiResult<TxnResponse> {
        as_client(inner(self.api.kv().txn(self.meta.request(r)).await))
    }

    async fn range(&self, r: RangeRequest) -> ApiResult<pb::RangeResponse> {
        as_client(inner(self.api.kv().range(self.meta.request(r)).await))
    }

    async fn delete(&self, key: Bytes) -> ApiResult<pb::DeleteRangeResponse> {
        as_client(inner(
            self.api
                .kv()
                .delete_range(self.meta.request(DeleteRangeRequest {
                    key,
                    ..Default::default()
                }))
                .await,
        ))
    }

    /// The session lease of a call: the caller's, or (lease 0) a new one
    /// of [`DEFAULT_SESSION_TTL`], as `concurrency.NewSession` does.
    async fn session(&self, lease: i64) -> ApiResult<i64> {
        if lease != 0 {
            return Ok(lease);
        }
        let r = as_client(inner(
            self.api
                .lease()
                .lease_grant(self.meta.request(LeaseGrantRequest {
                    ttl: DEFAULT_SESSION_TTL,
                    id: 0,
                }))
                .await,
        ))?;
        Ok(r.id)
    }

    /// Waits until `key` is deleted, watching from `rev` (etcd's
    /// `waitDelete`).
    async fn wait_delete(&self, key: Bytes, rev: i64) -> ApiResult<()> {
        let mut replies = self.watch(key, Bytes::new(), rev).await?;
        while let Some(reply) = replies.next().await {
            let reply = reply?;
            for ev in &reply.events {
                if ev.to_event(false).r#type == EventType::Delete as i32 {
                    return Ok(());
                }
            }
            if reply.head.canceled {
                return Err(canceled(&reply.head));
            }
        }
        Err(crate::error::lost_watcher())
    }

    /// Waits until every key under `prefix` created at or before
    /// `max_create_rev` is gone, newest first (etcd's `waitDeletes`), and
    /// answers the header of the last Range, which found none.
    async fn wait_deletes(&self, prefix: &Bytes, max_create_rev: i64) -> ApiResult<ResponseHeader> {
        loop {
            let mut r = prefix_range(prefix);
            r.sort_target = SortTarget::Create as i32;
            r.sort_order = SortOrder::Descend as i32;
            r.limit = 1;
            r.max_create_revision = max_create_rev;
            // Serializable is enough once the answer's revision is past
            // our own key (created at `max_create_rev + 1`): every key
            // created before it is then visible, and none can be created
            // before it later. It spares a gateway its revision probe per
            // wait. A backend behind our key (a gateway whose cache lags a
            // write it timed out waiting for) is asked again,
            // linearizably.
            r.serializable = true;
            let mut resp = self.range(r.clone()).await?;
            if resp.header.as_ref().map_or(0, |h| h.revision) <= max_create_rev {
                r.serializable = false;
                resp = self.range(r).await?;
            }
            let header = resp.header.unwrap_or_default();
            let Some(last) = resp.kvs.into_iter().next() else {
                return Ok(header);
            };
            self.wait_delete(last.key, header.revision).await?;
        }
    }

    /// The first-created key under `prefix` (`WithFirstCreate`).
    async fn first_created(&self, prefix: &Bytes) -> ApiResult<pb::RangeResponse> {
        self.range(first_created(prefix)).await
    }

    /// One watch on `[key, range_end)` from `rev`, open until dropped.
    async fn watch(
        &self,
        key: Bytes,
        range_end: Bytes,
        rev: i64,
    ) -> ApiResult<crate::api::WatchReplies<A::Event>> {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key,
                    range_end,
                    start_revision: rev,
                    ..Default::default()
                },
            )),
        };
        // The request side stays open: the backend ends a watch stream
        // whose requests end.
        let requests = futures::stream::once(async move { create })
            .chain(futures::stream::pending())
            .boxed();
        as_client(self.api.watch(self.meta.clone(), requests).await)
    }
}

/// An error as etcd's services pass it on: they call the KV API through
/// clientv3, which turns every etcd server error into its own error type,
/// and gRPC then sends that with code Unknown (the message unchanged).
/// Transport errors keep their code.
fn as_client<T>(r: ApiResult<T>) -> ApiResult<T> {
    r.map_err(|s| {
        if s.message().starts_with("etcdserver: ") {
            crate::error::as_client_error(s.message())
        } else {
            s
        }
    })
}

/// The status a cancelled wait answers: the watch was compacted away
/// (clientv3's `ErrCompacted`) or refused.
fn canceled(head: &pb::WatchResponse) -> Status {
    if head.compact_revision > 0 {
        crate::error::wait_compacted()
    } else if head.cancel_reason.is_empty() {
        crate::error::lost_watcher()
    } else {
        crate::error::wait_canceled(&head.cancel_reason)
    }
}

/// `name/`: the prefix every candidate key of `name` lives under.
fn key_prefix(name: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(name.len() + 1);
    b.put_slice(name);
    b.put_u8(b'/');
    b.freeze()
}

/// `prefix` + the lease ID in lower-case hex (Go's `%x`).
fn candidate_key(prefix: &[u8], lease: i64) -> Bytes {
    let hex = format!("{lease:x}");
    let mut b = BytesMut::with_capacity(prefix.len() + hex.len());
    b.put_slice(prefix);
    b.put_slice(hex.as_bytes());
    b.freeze()
}

/// A Range over every key under `prefix`.
fn prefix_range(prefix: &Bytes) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: lookout_cache::prefix_end(prefix).unwrap_or_else(|| Bytes::from_static(b"\0")),
        ..Default::default()
    }
}

/// `WithFirstCreate`: the key under `prefix` with the lowest create
/// revision.
fn first_created(prefix: &Bytes) -> RangeRequest {
    let mut r = prefix_range(prefix);
    r.sort_target = SortTarget::Create as i32;
    r.sort_order = SortOrder::Ascend as i32;
    r.limit = 1;
    r
}

/// `create_revision(key) == rev`.
fn created_at(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn op_put(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

fn op_get(key: &Bytes) -> RequestOp {
    op_range(RangeRequest {
        key: key.clone(),
        ..Default::default()
    })
}

/// A txn that deletes `key` unconditionally.
fn delete_txn(key: &Bytes) -> TxnRequest {
    TxnRequest {
        success: vec![op_delete(key)],
        ..Default::default()
    }
}

fn op_delete(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            },
        )),
    }
}

/// The `i`-th response of a txn as a Range's key-values (empty when it is
/// not a Range).
fn range_kvs(t: &TxnResponse, i: usize) -> &[lookout_proto::mvccpb::KeyValue] {
    match t.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

/// Deletes a waiter's key if the call is abandoned (the client went away
/// or the wait failed), as etcd's `Unlock`/`Resign` after a failed wait.
/// Armed before the key is written, so a client that goes away while the
/// write is in flight leaves no key behind either; disarmed once the call
/// succeeds.
struct Cleanup<A: EtcdApi> {
    client: Option<Client<A>>,
    txn: TxnRequest,
}

impl<A: EtcdApi> Cleanup<A> {
    fn new(client: &Client<A>, txn: TxnRequest) -> Self {
        Self {
            client: Some(client.clone()),
            txn,
        }
    }

    /// What to run if abandoned from now on.
    fn set(&mut self, txn: TxnRequest) {
        self.txn = txn;
    }

    fn disarm(mut self) {
        self.client = None;
    }
}

impl<A: EtcdApi> Drop for Cleanup<A> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let txn = std::mem::take(&mut self.txn);
        // Outlives the call whose future is being dropped; bounded by the
        // backend's own write path.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = client.txn(txn).await {
                    tracing::warn!(error = %e, "could not remove an abandoned lock or election key");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_etcds() {
        let p = key_prefix(b"mylock");
        assert_eq!(&p[..], b"mylock/");
        assert_eq!(
            &candidate_key(&p, 0x694d7b3a1c0e5a04)[..],
            b"mylock/694d7b3a1c0e5a04"
        );
        let r = first_created(&p);
        assert_eq!(&r.range_end[..], b"mylock0");
        assert_eq!((r.limit, r.sort_order), (1, SortOrder::Ascend as i32));
    }
}
