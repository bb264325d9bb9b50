//! [`EtcdApi`] for `lookout store`: the store's own gRPC services
//! ([`EtcdService`]) called in process, and its watch streams.

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use lookout_cache::AuthChannel;
use lookout_consensus::{EtcdService, Store, to_status};
use lookout_proto::mvccpb::Event;
use lookout_proto::pb::{
    LeaseKeepAliveRequest, RangeRequest, ResponseHeader, WatchCreateRequest, WatchRequest,
};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ApiResult, CallMeta, EtcdApi, KeepAlives, WatchReplies, WatchReply, refuse_extensions,
};

/// The store's services, as the HTTP layer and Lock/Election call them.
#[derive(Debug, Clone)]
pub struct StoreApi {
    store: Store,
    svc: EtcdService,
}

impl StoreApi {
    pub fn new(store: Store) -> Self {
        Self {
            svc: EtcdService::new(store.clone()),
            store,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl EtcdApi for StoreApi {
    type Event = Event;
    type Kv = EtcdService;
    type Lease = EtcdService;
    type Cluster = EtcdService;
    type Maintenance = EtcdService;
    type Auth = EtcdService;

    fn kv(&self) -> &EtcdService {
        &self.svc
    }

    fn lease(&self) -> &EtcdService {
        &self.svc
    }

    fn cluster(&self) -> &EtcdService {
        &self.svc
    }

    fn maintenance(&self) -> &EtcdService {
        &self.svc
    }

    fn auth(&self) -> &EtcdService {
        &self.svc
    }

    /// etcd checks nothing on keep-alives.
    async fn lease_keep_alive(
        &self,
        _meta: CallMeta,
        requests: BoxStream<'static, LeaseKeepAliveRequest>,
    ) -> ApiResult<KeepAlives> {
        let store = self.store.clone();
        Ok(requests
            .then(move |r| {
                let store = store.clone();
                async move { store.lease_keep_alive(r.id).await.map_err(to_status) }
            })
            .boxed())
    }

    async fn watch(
        &self,
        meta: CallMeta,
        requests: BoxStream<'static, WatchRequest>,
    ) -> ApiResult<WatchReplies<Event>> {
        // The store's stream task ends (and unregisters its watchers) as
        // soon as `requests` ends, which the HTTP layer arranges when its
        // client goes away.
        let creds = lookout_consensus::server::credentials(&meta.request(()));
        let rx = self.store.watch_as(creds, requests);
        Ok(ReceiverStream::new(rx)
            .map_err(to_status)
            .map_ok(WatchReply::from_response)
            .boxed())
    }

    fn check_watch_extensions(&self, c: &WatchCreateRequest) -> ApiResult<()> {
        refuse_extensions(&c.index, &c.value, c.initial_state)
    }

    fn check_range_extensions(&self, r: &RangeRequest) -> ApiResult<()> {
        refuse_extensions(&r.index, &r.value, false)
    }

    async fn concurrency_upstream(
        &self,
        _name: &[u8],
        _meta: &CallMeta,
    ) -> ApiResult<Option<AuthChannel>> {
        Ok(None)
    }

    fn restamp(&self, _header: &mut Option<ResponseHeader>) {}
}
