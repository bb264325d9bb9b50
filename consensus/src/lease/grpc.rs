//! etcd's Lease gRPC service over the store's lease API.

use futures::StreamExt;
use lookout_proto::pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Streaming};

use crate::error::to_status;
use crate::server::grpc::{BoxStream, EtcdService, Rpc};

#[tonic::async_trait]
impl pb::lease_server::Lease for EtcdService {
    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_grant(&self, r: Request<pb::LeaseGrantRequest>) -> Rpc<pb::LeaseGrantResponse> {
        self.who(&r).await?;
        self.store
            .lease_grant(r.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn lease_revoke(
        &self,
        r: Request<pb::LeaseRevokeRequest>,
    ) -> Rpc<pb::LeaseRevokeResponse> {
        let who = self.who(&r).await?;
        self.store
            .lease_revoke_as(who.as_ref(), r.into_inner().id)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Rpc<Self::LeaseKeepAliveStream> {
        let mut requests = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = requests.next().await {
                let resp = store.lease_keep_alive(req.id).await.map_err(to_status);
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        r: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Rpc<pb::LeaseTimeToLiveResponse> {
        let who = if r.get_ref().keys {
            self.who(&r).await?
        } else {
            None
        };
        self.store
            .lease_time_to_live_as(who.as_ref(), r.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn lease_leases(
        &self,
        _r: Request<pb::LeaseLeasesRequest>,
    ) -> Rpc<pb::LeaseLeasesResponse> {
        Ok(Response::new(self.store.lease_leases().await))
    }
}
