//! [`Shared`]: the state every service of a gateway holds, and the read
//! and write waits they all go through. It names no service, so every
//! service can name it without a cycle back through `server.rs`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use lookout_cache::{Cache, CacheError, EtcdUpstream, Snapshot, WriteScope};
use lookout_proto::pb::{ResponseHeader, StatusResponse};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::admission::Gate;
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::keepalive::hub::KeepAliveHub;
use crate::metrics::GatewayMetrics;
use crate::readindex::ReadIndex;

/// State every service shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cache: Cache,
    /// The typed upstream (the cache holds it as `dyn Upstream`): its
    /// channel carries the forwarded Maintenance and Cluster calls.
    pub(crate) upstream: Arc<EtcdUpstream>,
    pub(crate) config: GatewayConfig,
    pub(crate) member_id: u64,
    pub(crate) advertise_url: String,
    pub(crate) metrics: GatewayMetrics,
    /// Cancelled on shutdown: long-lived streams end on it.
    pub(crate) shutdown: CancellationToken,
    /// The store's last Status, reused for a few seconds by our Status.
    /// A blocking mutex: held only to copy the value, never across an await.
    pub(crate) upstream_status: parking_lot::Mutex<Option<(Instant, StatusResponse)>>,
    /// Coalesces the revision probes of concurrent linearizable reads.
    pub(crate) read_index: Arc<ReadIndex>,
    /// Storm control: lists and watch catch-ups running at once.
    pub(crate) lists: Gate,
    pub(crate) catchups: Gate,
    /// Every client keep-alive stream shares one upstream stream.
    pub(crate) keepalive: KeepAliveHub,
    /// The `--resolver-prefix` registration lease (0: none yet).
    pub(crate) resolver_lease: std::sync::atomic::AtomicI64,
    /// gRPC started/handled counters (`grpc_server_*_total`).
    pub(crate) grpc: Arc<crate::telemetry::grpc::GrpcMetrics>,
    /// Who clients are and what they may do (the store's users and roles,
    /// `--auth-config`).
    pub(crate) auth: Arc<crate::auth::GatewayAuth>,
}

impl Shared {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Waits (bounded by the read timeout) for the cache's first list.
    pub(crate) async fn ready(&self) -> Result<(), Status> {
        if self.is_shutting_down() {
            return Err(GatewayError::ShuttingDown.into());
        }
        if self.cache.is_ready() {
            return Ok(());
        }
        self.cache
            .wait_ready(self.config.read_timeout)
            .await
            .map(|_| ())
            .map_err(Status::from)
    }

    /// The snapshot a read is served from: the current one for a
    /// serializable read; for a linearizable one, one at or after the
    /// store's current revision (one cheap upstream probe shared with the
    /// reads arriving meanwhile, then a bounded wait, never a fallback read
    /// upstream).
    pub(crate) async fn read_snapshot(&self, serializable: bool) -> Result<Arc<Snapshot>, Status> {
        self.ready().await?;
        if serializable {
            return Ok(self.cache.snapshot());
        }
        let rev = self
            .read_index
            .current_revision(self.cache.upstream())
            .await?;
        self.cache
            .metrics()
            .upstream_revision
            .fetch_max(rev, Relaxed);
        match self
            .cache
            .wait_for_revision(rev, self.config.read_timeout)
            .await
        {
            Ok(s) => Ok(s),
            Err(e) => {
                if matches!(e, CacheError::Timeout { .. }) {
                    self.metrics.read_timeouts.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "linearizable read timed out");
                }
                Err(e.into())
            }
        }
    }

    /// Holds a write's response until the cache has applied its revision,
    /// so the client's next read through this gateway sees the write.
    /// Bounded: the write happened either way, so past the bound the
    /// response goes out and a counter records it.
    pub(crate) async fn after_write(&self, header: Option<&ResponseHeader>, scope: WriteScope) {
        let Some(rev) = header.map(|h| h.revision) else {
            return;
        };
        if self.cache.revision() >= rev {
            return;
        }
        if let Err(e) = self
            .cache
            .wait_for_write(rev, scope, self.config.write_wait_timeout)
            .await
        {
            self.metrics.write_wait_timeouts.fetch_add(1, Relaxed);
            tracing::warn!(revision = rev, error = %e, "write answered before the cache applied it");
        }
    }

    /// Forwarded responses carry the store's member id; clients talking to
    /// this gateway see the gateway's, as in every cached response.
    pub(crate) fn restamp(&self, header: &mut Option<ResponseHeader>) {
        if let Some(h) = header {
            h.member_id = self.member_id;
        }
    }

    /// A future that resolves once shutdown starts.
    pub(crate) fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown.clone().cancelled_owned()
    }
}
