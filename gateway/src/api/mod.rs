//! [`EtcdApi`]: one backend's etcd v3 services, as the HTTP layer and the
//! Lock and Election services call them. The store implements it by calling
//! `Store` directly ([`StoreApi`]); the gateway over its cache and its
//! upstream (`GatewayApi`). Everything above it (every `/v3` JSON path,
//! `/v1`, Lock, Election) is written once for both.
//!
//! ```text
//!   HTTP (/v3/*, /v1/*) ─┐
//!   Lock, Election ──────┼─> EtcdApi ─┬─ StoreApi:   consensus::EtcdService (Store)
//!                        │            └─ GatewayApi: KvService, LeaseService, ... (cache + upstream)
//!   gRPC clients ────────┴──────────────> the same service values, through tonic
//! ```
//!
//! Unary calls go through the tonic service traits themselves ([`Kv`],
//! [`Lease`], ...), so an answer over HTTP is exactly the gRPC answer; the
//! two streams the HTTP layer feeds from a request body (Watch,
//! LeaseKeepAlive) have methods of their own.
//!
//! Watch replies carry their events as [`WatchEvent`]s: the store hands out
//! `mvccpb::Event`s, the gateway the cache's shared `Arc<CachedEvent>`s whose
//! JSON is built once per event for every HTTP watcher.

mod gateway;
mod store;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use lookout_cache::AuthChannel;
use lookout_cache::CachedEvent;
use lookout_proto::mvccpb::Event;
use lookout_proto::pb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, RangeRequest, ResponseHeader,
    WatchCreateRequest, WatchRequest, WatchResponse, auth_server::Auth, cluster_server::Cluster,
    kv_server::Kv, lease_server::Lease, maintenance_server::Maintenance,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::http::text;

pub(crate) use gateway::GatewayApi;
pub use store::StoreApi;

/// What an etcd API call answers: the message, or etcd's status (code and
/// message exactly as the gRPC API would send them).
pub type ApiResult<T> = Result<T, Status>;

/// A stream of watch replies, ended when the watch stream is over.
pub type WatchReplies<E> = BoxStream<'static, ApiResult<WatchReply<E>>>;

/// A stream of keep-alive answers.
pub type KeepAlives = BoxStream<'static, ApiResult<LeaseKeepAliveResponse>>;

/// A tonic answer without its metadata.
pub fn inner<T>(r: Result<Response<T>, Status>) -> ApiResult<T> {
    r.map(Response::into_inner)
}

/// What a call says about its sender, as the backend's services read it:
/// the gRPC metadata (`token`, `authorization`) and the request's
/// extensions (the TLS connection's client certificate). Calls made on a
/// client's behalf (a watch stream opened for an HTTP request, Lock's KV
/// calls) carry their client's.
#[derive(Debug, Clone, Default)]
pub struct CallMeta {
    pub metadata: MetadataMap,
    pub extensions: http::Extensions,
}

impl CallMeta {
    /// The sender of `r`.
    pub fn of<T>(r: &Request<T>) -> Self {
        Self {
            metadata: r.metadata().clone(),
            extensions: r.extensions().clone(),
        }
    }

    /// A request for `msg` from the same sender.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        Request::from_parts(self.metadata.clone(), self.extensions.clone(), msg)
    }
}

/// One backend's etcd v3 API. Every call answers what the matching gRPC
/// method answers on that backend (same header, same errors).
pub trait EtcdApi: Clone + Send + Sync + 'static {
    /// How this backend hands out watch events.
    type Event: WatchEvent;
    type Kv: Kv;
    type Lease: Lease;
    type Cluster: Cluster;
    type Maintenance: Maintenance;
    type Auth: Auth;

    fn kv(&self) -> &Self::Kv;
    fn lease(&self) -> &Self::Lease;
    fn cluster(&self) -> &Self::Cluster;
    fn maintenance(&self) -> &Self::Maintenance;
    fn auth(&self) -> &Self::Auth;

    /// One keep-alive stream from the sender of `meta`: an answer per
    /// request, in order.
    fn lease_keep_alive(
        &self,
        meta: CallMeta,
        requests: BoxStream<'static, LeaseKeepAliveRequest>,
    ) -> impl Future<Output = ApiResult<KeepAlives>> + Send;
    /// One watch stream, as gRPC `Watch` serves it: `requests` are the
    /// client's messages. The implementation may end the stream when
    /// `requests` ends; the HTTP layer keeps `requests` open for as long as
    /// its client is connected, and ends it when the client goes away.
    /// Each create is checked as the sender of `meta` (etcd resolves the
    /// stream's token again per create).
    fn watch(
        &self,
        meta: CallMeta,
        requests: BoxStream<'static, WatchRequest>,
    ) -> impl Future<Output = ApiResult<WatchReplies<Self::Event>>> + Send;
    /// Checks a create's Lookout extension fields (index filter,
    /// `initial_state`) before a stream is opened, so the readable API can
    /// answer 400 instead of a stream that is cancelled at once.
    fn check_watch_extensions(&self, c: &WatchCreateRequest) -> ApiResult<()>;
    /// The same for a Range's extension fields, which gRPC clients of the
    /// store never send (etcd ignores unknown fields) but HTTP users may.
    fn check_range_extensions(&self, r: &RangeRequest) -> ApiResult<()>;
    /// Where Lock and Election calls on `name` go: `None` when this backend
    /// serves them itself, else a channel to the upstream that does (a
    /// gateway that does not cache `name/`), carrying the token of the
    /// sender of `meta`.
    fn concurrency_upstream(
        &self,
        name: &[u8],
        meta: &CallMeta,
    ) -> impl Future<Output = ApiResult<Option<AuthChannel>>> + Send;
    /// Puts this backend's identity in an answer it forwarded.
    fn restamp(&self, header: &mut Option<ResponseHeader>);
}

/// The store serves no index filters: refuse them rather than answer
/// unfiltered.
pub(crate) fn refuse_extensions(index: &str, value: &[u8], initial_state: bool) -> ApiResult<()> {
    if index.is_empty() && value.is_empty() && !initial_state {
        return Ok(());
    }
    Err(crate::error::store_refuses_extensions())
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
    /// The event as etcd's message (Lock and Election read it).
    fn to_event(&self, prev_kv: bool) -> Event;
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

    fn to_event(&self, _prev_kv: bool) -> Event {
        self.clone()
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

    fn to_event(&self, prev_kv: bool) -> Event {
        CachedEvent::to_event(self, prev_kv)
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
