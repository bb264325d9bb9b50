//! [`EtcdApi`]: the etcd v3 operations the HTTP layer needs, implemented by
//! the store (calling [`Store`] directly) and by the gateway (over the
//! cache), so one HTTP layer serves both.
//!
//! Watch replies carry their events as [`WatchEvent`]s: the store hands out
//! `mvccpb::Event`s, the gateway the cache's shared `Arc<CachedEvent>`s whose
//! JSON is built once per event for every HTTP watcher.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use lookout_cache::CachedEvent;
use lookout_consensus::{Store, to_status};
use lookout_proto::mvccpb::Event;
use lookout_proto::pb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MemberListRequest, MemberListResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, StatusRequest, StatusResponse,
    TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::text;

/// What an etcd API call answers: the message, or etcd's status (code and
/// message exactly as the gRPC API would send them).
pub type ApiResult<T> = Result<T, Status>;

/// A stream of watch replies, ended when the watch stream is over.
pub type WatchReplies<E> = BoxStream<'static, ApiResult<WatchReply<E>>>;

/// A stream of keep-alive answers.
pub type KeepAlives = BoxStream<'static, ApiResult<LeaseKeepAliveResponse>>;

/// The etcd v3 API as the HTTP layer calls it. Every method answers what
/// the matching gRPC method would (same header, same errors).
pub trait EtcdApi: Clone + Send + Sync + 'static {
    /// How this backend hands out watch events.
    type Event: WatchEvent;

    fn range(&self, r: RangeRequest) -> impl Future<Output = ApiResult<RangeResponse>> + Send;
    fn put(&self, r: PutRequest) -> impl Future<Output = ApiResult<PutResponse>> + Send;
    fn delete_range(
        &self,
        r: DeleteRangeRequest,
    ) -> impl Future<Output = ApiResult<DeleteRangeResponse>> + Send;
    fn txn(&self, r: TxnRequest) -> impl Future<Output = ApiResult<TxnResponse>> + Send;
    fn compact(
        &self,
        r: CompactionRequest,
    ) -> impl Future<Output = ApiResult<CompactionResponse>> + Send;
    fn lease_grant(
        &self,
        r: LeaseGrantRequest,
    ) -> impl Future<Output = ApiResult<LeaseGrantResponse>> + Send;
    fn lease_revoke(
        &self,
        r: LeaseRevokeRequest,
    ) -> impl Future<Output = ApiResult<LeaseRevokeResponse>> + Send;
    fn lease_time_to_live(
        &self,
        r: LeaseTimeToLiveRequest,
    ) -> impl Future<Output = ApiResult<LeaseTimeToLiveResponse>> + Send;
    fn lease_leases(
        &self,
        r: LeaseLeasesRequest,
    ) -> impl Future<Output = ApiResult<LeaseLeasesResponse>> + Send;
    /// One keep-alive stream: an answer per request, in order.
    fn lease_keep_alive(
        &self,
        requests: BoxStream<'static, LeaseKeepAliveRequest>,
    ) -> impl Future<Output = ApiResult<KeepAlives>> + Send;
    fn status(&self, r: StatusRequest) -> impl Future<Output = ApiResult<StatusResponse>> + Send;
    fn member_list(
        &self,
        r: MemberListRequest,
    ) -> impl Future<Output = ApiResult<MemberListResponse>> + Send;
    /// One watch stream, as gRPC `Watch` serves it: `requests` are the
    /// client's messages. The implementation may end the stream when
    /// `requests` ends; the HTTP layer keeps `requests` open for as long as
    /// its client is connected, and ends it when the client goes away.
    fn watch(
        &self,
        requests: BoxStream<'static, WatchRequest>,
    ) -> impl Future<Output = ApiResult<WatchReplies<Self::Event>>> + Send;
    /// Checks a create's Lookout extension fields (index filter,
    /// `initial_state`) before a stream is opened, so the readable API can
    /// answer 400 instead of a stream that is cancelled at once.
    fn check_watch_extensions(&self, c: &WatchCreateRequest) -> ApiResult<()>;
}

/// The store serves no index filters: refuse them rather than answer
/// unfiltered.
fn refuse_extensions(index: &str, value: &[u8], initial_state: bool) -> ApiResult<()> {
    if index.is_empty() && value.is_empty() && !initial_state {
        return Ok(());
    }
    Err(Status::invalid_argument(
        "lookout: index filters and initial_state are served by a lookout gateway (lookout gateway --index), not by the store",
    ))
}

/// One `WatchResponse`: every field but `events` in `head`, the events as
/// the backend shares them.
#[derive(Debug, Clone)]
pub struct WatchReply<E> {
    /// The response with `events` empty.
    pub head: WatchResponse,
    pub events: Vec<E>,
    /// Whether the watcher asked for `prev_kv` (events that carry it
    /// themselves ignore this).
    pub prev_kv: bool,
}

impl WatchReply<Event> {
    /// Splits a decoded response.
    pub fn from_response(mut r: WatchResponse) -> Self {
        let events = std::mem::take(&mut r.events);
        Self {
            head: r,
            events,
            prev_kv: false,
        }
    }
}

/// One watch event in the two JSON forms the HTTP layer writes.
pub trait WatchEvent: Send + Sync + 'static {
    /// The event's `mod_revision`.
    fn revision(&self) -> i64;
    /// The readable `/v1/watch` line (JSON object, no newline).
    fn line(&self) -> Bytes;
    /// The `mvccpb.Event` in etcd's gateway JSON, as `/v3/watch` writes it.
    fn etcd_json(&self, prev_kv: bool) -> Bytes;
}

impl WatchEvent for Event {
    fn revision(&self) -> i64 {
        self.kv.as_ref().map_or(0, |kv| kv.mod_revision)
    }

    fn line(&self) -> Bytes {
        text::event_line(self)
    }

    fn etcd_json(&self, _prev_kv: bool) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("messages serialize"))
    }
}

/// Slots of [`CachedEvent::derived`] the HTTP layer uses.
const SLOT_LINE: usize = 0;
const SLOT_ETCD_PLAIN: usize = 1;
const SLOT_ETCD_PREV: usize = 2;

impl WatchEvent for Arc<CachedEvent> {
    fn revision(&self) -> i64 {
        CachedEvent::revision(self)
    }

    fn line(&self) -> Bytes {
        // Built by the first HTTP watcher that delivers the event, shared
        // by every other one (and kept with the event in the history ring).
        self.derived(SLOT_LINE, |e| text::event_line(&e.to_event(false)))
    }

    fn etcd_json(&self, prev_kv: bool) -> Bytes {
        let slot = if prev_kv {
            SLOT_ETCD_PREV
        } else {
            SLOT_ETCD_PLAIN
        };
        self.derived(slot, |e| {
            Bytes::from(serde_json::to_vec(&e.to_event(prev_kv)).expect("messages serialize"))
        })
    }
}

// === impl EtcdApi for Store ===

impl EtcdApi for Store {
    type Event = Event;

    async fn range(&self, r: RangeRequest) -> ApiResult<RangeResponse> {
        refuse_extensions(&r.index, &r.value, false)?;
        Store::range(self, r).await.map_err(to_status)
    }

    async fn put(&self, r: PutRequest) -> ApiResult<PutResponse> {
        Store::put(self, r).await.map_err(to_status)
    }

    async fn delete_range(&self, r: DeleteRangeRequest) -> ApiResult<DeleteRangeResponse> {
        Store::delete_range(self, r).await.map_err(to_status)
    }

    async fn txn(&self, r: TxnRequest) -> ApiResult<TxnResponse> {
        Store::txn(self, r).await.map_err(to_status)
    }

    async fn compact(&self, r: CompactionRequest) -> ApiResult<CompactionResponse> {
        Store::compact(self, r).await.map_err(to_status)
    }

    async fn lease_grant(&self, r: LeaseGrantRequest) -> ApiResult<LeaseGrantResponse> {
        Store::lease_grant(self, r).await.map_err(to_status)
    }

    async fn lease_revoke(&self, r: LeaseRevokeRequest) -> ApiResult<LeaseRevokeResponse> {
        Store::lease_revoke(self, r.id).await.map_err(to_status)
    }

    async fn lease_time_to_live(
        &self,
        r: LeaseTimeToLiveRequest,
    ) -> ApiResult<LeaseTimeToLiveResponse> {
        Store::lease_time_to_live(self, r).await.map_err(to_status)
    }

    async fn lease_leases(&self, _r: LeaseLeasesRequest) -> ApiResult<LeaseLeasesResponse> {
        Ok(Store::lease_leases(self).await)
    }

    async fn lease_keep_alive(
        &self,
        requests: BoxStream<'static, LeaseKeepAliveRequest>,
    ) -> ApiResult<KeepAlives> {
        let store = self.clone();
        Ok(requests
            .then(move |r| {
                let store = store.clone();
                async move { store.lease_keep_alive(r.id).await.map_err(to_status) }
            })
            .boxed())
    }

    async fn status(&self, _r: StatusRequest) -> ApiResult<StatusResponse> {
        Store::status(self).await.map_err(to_status)
    }

    async fn member_list(&self, _r: MemberListRequest) -> ApiResult<MemberListResponse> {
        Ok(Store::member_list(self).await)
    }

    async fn watch(
        &self,
        requests: BoxStream<'static, WatchRequest>,
    ) -> ApiResult<WatchReplies<Event>> {
        // The store's stream task ends (and unregisters its watchers) as
        // soon as `requests` ends, which the HTTP layer arranges when its
        // client goes away.
        let rx = Store::watch(self, requests);
        Ok(ReceiverStream::new(rx)
            .map_err(to_status)
            .map_ok(WatchReply::from_response)
            .boxed())
    }

    fn check_watch_extensions(&self, c: &WatchCreateRequest) -> ApiResult<()> {
        refuse_extensions(&c.index, &c.value, c.initial_state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookout_cache::EventKind;
    use lookout_proto::mvccpb::KeyValue;

    #[test]
    fn cached_events_encode_once_for_every_watcher() {
        let kv = KeyValue {
            key: Bytes::from_static(b"k"),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: Bytes::from_static(b"v"),
            lease: 0,
        };
        let prev = KeyValue {
            mod_revision: 2,
            version: 1,
            ..kv.clone()
        };
        let ev = Arc::new(CachedEvent::new(EventKind::Put, &kv, Some(&prev)));
        // Two watchers' deliveries share one buffer per form.
        assert_eq!(ev.line().as_ptr(), ev.line().as_ptr());
        assert_eq!(ev.etcd_json(true).as_ptr(), ev.etcd_json(true).as_ptr());
        // And the forms are what the store's uncached events give.
        let plain = ev.to_event(false);
        assert_eq!(ev.line(), plain.line());
        assert_eq!(ev.etcd_json(false), plain.etcd_json(false));
        assert_eq!(ev.etcd_json(true), ev.to_event(true).etcd_json(true));
        assert!(
            std::str::from_utf8(&ev.etcd_json(true))
                .unwrap()
                .contains("prev_kv")
        );
    }
}
