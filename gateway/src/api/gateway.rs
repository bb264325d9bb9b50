//! [`EtcdApi`] for the gateway: the same code paths as its gRPC services
//! (reads from the cache, linearizable by default; writes forwarded and
//! held until the cache has them; Status and MemberList answered here),
//! and watches on cache streams whose frames carry the shared
//! `Arc<CachedEvent>`s, so an event's JSON is built once for every HTTP
//! watcher.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::StreamExt;
use futures::stream::BoxStream;
use lookout_cache::AuthChannel;
use lookout_cache::{CachedEvent, KeyRange, WatchFrame, WatchFrames};
use lookout_proto::pb::{
    LeaseKeepAliveRequest, RangeRequest, ResponseHeader, WatchCreateRequest, WatchRequest,
};
use tokio::sync::mpsc;

use super::{ApiResult, CallMeta, EtcdApi, KeepAlives, WatchReplies, WatchReply};
use crate::auth::{AuthService, Creds};
use crate::cluster::ClusterService;
use crate::error::GatewayError;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::maintenance::MaintenanceService;
use crate::shared::Shared;

/// The gateway's services, as the HTTP layer and Lock/Election call them
/// (the same values its gRPC server routes to).
#[derive(Debug, Clone)]
pub(crate) struct GatewayApi {
    shared: Arc<Shared>,
    kv: KvService,
    lease: LeaseService,
    maintenance: MaintenanceService,
    cluster: ClusterService,
    auth: AuthService,
}

impl GatewayApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            kv: KvService::new(shared.clone()),
            lease: LeaseService::new(shared.clone()),
            maintenance: MaintenanceService::new(shared.clone()),
            cluster: ClusterService::new(shared.clone()),
            auth: AuthService::new(shared.clone()),
            shared,
        }
    }
}

impl EtcdApi for GatewayApi {
    type Event = Arc<CachedEvent>;
    type Kv = KvService;
    type Lease = LeaseService;
    type Cluster = ClusterService;
    type Maintenance = MaintenanceService;
    type Auth = AuthService;

    fn kv(&self) -> &KvService {
        &self.kv
    }

    fn lease(&self) -> &LeaseService {
        &self.lease
    }

    fn cluster(&self) -> &ClusterService {
        &self.cluster
    }

    fn maintenance(&self) -> &MaintenanceService {
        &self.maintenance
    }

    fn auth(&self) -> &AuthService {
        &self.auth
    }

    /// One upstream keep-alive stream per HTTP request, as the gRPC service
    /// opens one per client stream; it ends when the body's requests do.
    async fn lease_keep_alive(
        &self,
        meta: CallMeta,
        mut requests: BoxStream<'static, LeaseKeepAliveRequest>,
    ) -> ApiResult<KeepAlives> {
        let s = self.shared.clone();
        if s.is_shutting_down() {
            return Err(GatewayError::ShuttingDown.into());
        }
        // etcd checks nothing here; --auth-config refuses the nameless.
        if s.auth.has_local() {
            let who = s
                .auth
                .who(&Creds::of(meta.metadata.as_ref(), &meta.extensions))
                .await?;
            s.auth.named(&who)?;
        }
        // The upstream answers its headers with the first response: open
        // it only once there is a request to send.
        let Some(first) = requests.next().await else {
            return Ok(futures::stream::empty().boxed());
        };
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.try_send(first);
        s.metrics.forwarded.fetch_add(1, Relaxed);
        let upstream = s.cache.upstream().lease_keep_alive(rx).await?;
        let pump = tokio::spawn(async move {
            while let Some(r) = requests.next().await {
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let state = (upstream, Some(AbortOnDrop(pump)), s);
        let stream = futures::stream::unfold(state, |(mut up, pump, s)| async move {
            let pump = pump?;
            match up.message().await {
                Ok(Some(mut r)) => {
                    s.restamp(&mut r.header);
                    Some((Ok(r), (up, Some(pump), s)))
                }
                Ok(None) => None,
                Err(st) => Some((Err(st), (up, None, s))),
            }
        });
        Ok(stream.boxed())
    }

    /// A cache stream, fed by the same request reader as gRPC watches; its
    /// frames become replies that share the cache's events.
    async fn watch(
        &self,
        meta: CallMeta,
        requests: BoxStream<'static, WatchRequest>,
    ) -> ApiResult<WatchReplies<Arc<CachedEvent>>> {
        let s = self.shared.clone();
        s.ready().await?;
        let creds = Arc::new(Creds::of(meta.metadata.as_ref(), &meta.extensions));
        let (handle, frames) = s.cache.open_stream();
        let reader = tokio::spawn(crate::watch::read_requests(
            s.clone(),
            requests.map(Ok),
            handle,
            creds,
        ));
        let out = Outbound {
            frames,
            buf: Vec::new(),
            ready: std::collections::VecDeque::new(),
            done: false,
            _reader: AbortOnDrop(reader),
        };
        Ok(futures::stream::unfold(out, Outbound::next).boxed())
    }

    fn check_watch_extensions(&self, c: &WatchCreateRequest) -> ApiResult<()> {
        crate::watch::check_extensions(&self.shared, c)
    }

    fn check_range_extensions(&self, _r: &RangeRequest) -> ApiResult<()> {
        // The KV service itself serves or refuses a filtered Range.
        Ok(())
    }

    /// The cache holds `name/`: waits are cache watchers. Otherwise the
    /// upstream serves the whole call (it has the keys to watch).
    async fn concurrency_upstream(
        &self,
        name: &[u8],
        meta: &CallMeta,
    ) -> ApiResult<Option<AuthChannel>> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        if self.shared.cache.covers(&KeyRange::prefix(prefix)) {
            return Ok(None);
        }
        // The whole call runs upstream, judged there: with the client's
        // token, or nameless.
        let auth = &self.shared.auth;
        let who = auth
            .who(&Creds::of(meta.metadata.as_ref(), &meta.extensions))
            .await?;
        auth.named(&who)?;
        self.shared.metrics.forwarded.fetch_add(1, Relaxed);
        Ok(Some(
            self.shared.upstream.channel_as(&auth.pass(&who)).await?,
        ))
    }

    fn restamp(&self, header: &mut Option<ResponseHeader>) {
        self.shared.restamp(header);
    }
}

/// Aborts a helper task when the stream that needs it is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A cache stream as replies. Dropping it drops the [`WatchFrames`] (the
/// cache frees the stream's watchers) and aborts the request reader.
struct Outbound {
    frames: WatchFrames,
    buf: Vec<WatchFrame>,
    ready: std::collections::VecDeque<WatchFrame>,
    done: bool,
    _reader: AbortOnDrop,
}

impl Outbound {
    async fn next(mut self) -> Option<(ApiResult<WatchReply<Arc<CachedEvent>>>, Self)> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                let reply = WatchReply {
                    head: f.head(),
                    events: f.events().to_vec(),
                    prev_kv: f.prev_kv(),
                };
                return Some((Ok(reply), self));
            }
            if self.done {
                return None;
            }
            match self.frames.next(&mut self.buf).await {
                Ok(()) => self.ready.extend(self.buf.drain(..)),
                Err(_) => {
                    self.done = true;
                    return Some((Err(GatewayError::ShuttingDown.into()), self));
                }
            }
        }
    }
}
