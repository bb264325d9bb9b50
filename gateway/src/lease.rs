//! The Lease service: every call forwarded to the store; a revoke's
//! response waits until the cache has applied the deletes it caused;
//! `LeaseKeepAlive` is one upstream stream per client stream.
//!
//! ```text
//!   client stream ──requests──> pump task ──mpsc──> upstream LeaseKeepAlive
//!   client stream <──responses (member id restamped)── upstream
//!   shutdown: the client stream ends with Unavailable (clientv3 retries elsewhere)
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::Stream;
use lookout_proto::pb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::error::GatewayError;
use crate::server::Shared;

#[derive(Debug, Clone)]
pub(crate) struct LeaseService {
    shared: Arc<Shared>,
}

impl LeaseService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

/// Aborts the request pump when the response stream goes away, and keeps
/// the open-streams gauge honest.
struct KeepAliveGuard {
    shared: Arc<Shared>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAliveGuard {
    fn drop(&mut self) {
        self.pump.abort();
        self.shared.metrics.keepalive_streams.fetch_sub(1, Relaxed);
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let s = &self.shared;
        s.metrics.forwarded.fetch_add(1, Relaxed);
        let mut resp = s.cache.upstream().lease_grant(request.into_inner()).await?;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let s = &self.shared;
        s.metrics.forwarded.fetch_add(1, Relaxed);
        let mut resp = s
            .cache
            .upstream()
            .lease_revoke(request.into_inner())
            .await?;
        // Revoking deletes the lease's keys: hold the answer until the
        // cache has those deletes, like any write.
        s.after_write(resp.header.as_ref()).await;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let s = self.shared.clone();
        if s.is_shutting_down() {
            return Err(GatewayError::ShuttingDown.into());
        }
        let mut inbound = request.into_inner();
        // etcd answers the stream's headers with its first response, so the
        // upstream stream opens only once there is a request to send.
        let Some(first) = inbound.message().await? else {
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        };
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.try_send(first);
        s.metrics.forwarded.fetch_add(1, Relaxed);
        let upstream = s.cache.upstream().lease_keep_alive(rx).await?;
        let pump = tokio::spawn(async move {
            // Client EOF drops `tx`: the upstream sees EOF and ends its
            // side cleanly, as etcd ends the stream on a client close.
            while let Ok(Some(m)) = inbound.message().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        s.metrics.keepalive_streams.fetch_add(1, Relaxed);
        let guard = KeepAliveGuard {
            shared: s.clone(),
            pump,
        };
        let stopping = Box::pin(s.stopping());
        let state = (upstream, stopping, Some(guard));
        let stream = futures::stream::unfold(state, |(mut up, mut stopping, guard)| async move {
            let guard = guard?;
            tokio::select! {
                m = up.message() => match m {
                    Ok(Some(mut r)) => {
                        guard.shared.restamp(&mut r.header);
                        Some((Ok(r), (up, stopping, Some(guard))))
                    }
                    Ok(None) => None,
                    Err(st) => Some((Err(st), (up, stopping, None))),
                },
                _ = &mut stopping => {
                    Some((Err(GatewayError::ShuttingDown.into()), (up, stopping, None)))
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let s = &self.shared;
        s.metrics.forwarded.fetch_add(1, Relaxed);
        let mut resp = s
            .cache
            .upstream()
            .lease_time_to_live(request.into_inner())
            .await?;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let s = &self.shared;
        s.metrics.forwarded.fetch_add(1, Relaxed);
        let mut resp = s
            .cache
            .upstream()
            .lease_leases(request.into_inner())
            .await?;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }
}
