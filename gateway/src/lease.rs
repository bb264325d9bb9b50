//! The Lease service: every call forwarded to the store; a revoke's
//! response waits until the cache has applied the deletes it caused;
//! `LeaseKeepAlive` streams all share the gateway's one upstream stream
//! through the [`KeepAliveHub`] (concurrent keep-alives of one lease become
//! one upstream request).
//!
//! ```text
//!   client stream ──requests──> pump task ──per request──> KeepAliveHub ──> upstream
//!   client stream <──responses (member id restamped)── mpsc <── hub answers
//!   shutdown: the client stream ends with Unavailable (clientv3 retries elsewhere)
//! ```
//!
//! Auth, as etcd's: LeaseRevoke needs write permission on every key on the
//! lease, and (as later etcd releases) LeaseTimeToLive with keys needs
//! read permission on each; a client with a token is judged by the store,
//! anyone else here (the lease's keys looked up as the gateway). Grant,
//! keep-alive and listing check nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::Stream;
use lookout_cache::CallAs;
use lookout_proto::pb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use lookout_consensus::auth::{check_lease_revoke, check_range};

use crate::auth::Creds;
use crate::error::GatewayError;
use crate::keepalive::KeepAliveHub;
use crate::shared::Shared;

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
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        s.auth.named(&who)?;
        let mut resp = s
            .forward(s.auth.pass(&who))
            .lease(request.into_inner(), |mut c, r| async move {
                c.lease_grant(r).await
            })
            .await?;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let s = &self.shared;
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        let req = request.into_inner();
        let keys = if who.store_judges() || !s.auth.state(&who).enabled {
            Default::default()
        } else {
            crate::kv::lease_keys(s, [req.id]).await?
        };
        let as_ = s
            .auth
            .forward(&who, |st, w| check_lease_revoke(st, &keys, w, req.id))?;
        let mut resp = s
            .forward(as_)
            .lease(req, |mut c, r| async move { c.lease_revoke(r).await })
            .await?;
        // Revoking deletes the lease's keys: hold the answer until the
        // cache has those deletes, like any write.
        s.after_write(resp.header.as_ref(), lookout_cache::WriteScope::Unknown)
            .await;
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
        // etcd checks nothing on keep-alives; --auth-config refuses a
        // nameless stream.
        if s.auth.has_local() {
            let who = s.auth.who(&Creds::of_request(&request)).await?;
            s.auth.named(&who)?;
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<LeaseKeepAliveResponse, Status>>(64);
        let shared = s.clone();
        let pump = tokio::spawn(async move {
            // One small task per request: answers for different leases come
            // back as the store gives them (clients match them by ID), and a
            // slow lease never holds up another.
            while let Ok(Some(m)) = inbound.message().await {
                let (shared, tx) = (shared.clone(), tx.clone());
                tokio::spawn(async move {
                    let r = KeepAliveHub::keep_alive(&shared, m.id).await.map(|mut r| {
                        shared.restamp(&mut r.header);
                        r
                    });
                    let _ = tx.send(r).await;
                });
            }
            // Client EOF: answers still in flight go out, then the stream
            // ends cleanly as etcd ends it.
        });
        s.metrics.keepalive_streams.fetch_add(1, Relaxed);
        let guard = KeepAliveGuard {
            shared: s.clone(),
            pump,
        };
        let stopping = Box::pin(s.stopping());
        let state = (rx, stopping, Some(guard));
        let stream = futures::stream::unfold(state, |(mut rx, mut stopping, guard)| async move {
            let guard = guard?;
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Ok(r)) => Some((Ok(r), (rx, stopping, Some(guard)))),
                    Some(Err(st)) => Some((Err(st), (rx, stopping, None))),
                    None => None,
                },
                _ = &mut stopping => {
                    Some((Err(GatewayError::ShuttingDown.into()), (rx, stopping, None)))
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
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        s.auth.named(&who)?;
        let req = request.into_inner();
        // Keys are asked for as the gateway and checked here before the
        // client sees them, unless the store judges the client itself.
        let as_ = if req.keys && !who.store_judges() {
            CallAs::Gateway
        } else {
            s.auth.pass(&who)
        };
        let mut resp = s
            .forward(as_)
            .lease(req, |mut c, r| async move { c.lease_time_to_live(r).await })
            .await?;
        if req.keys && !who.store_judges() {
            s.auth.check(&who, |st, w| {
                if st.enabled && w.is_none() {
                    return Err(lookout_consensus::Error::UserEmpty);
                }
                resp.keys
                    .iter()
                    .try_for_each(|k| check_range(st, w, k, &[]))
            })?;
        }
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let s = &self.shared;
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        s.auth.named(&who)?;
        let mut resp = s
            .forward(s.auth.pass(&who))
            .lease(request.into_inner(), |mut c, r| async move {
                c.lease_leases(r).await
            })
            .await?;
        s.restamp(&mut resp.header);
        Ok(Response::new(resp))
    }
}
