//! The Cluster service: `MemberList` lists this gateway (its advertised
//! client URL), or with `--resolver-prefix` every registered gateway, so a
//! clientv3 that syncs endpoints keeps balancing across gateways instead of
//! moving onto the store; membership changes are forwarded to the store.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use lookout_proto::pb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_client::ClusterClient,
    cluster_server::Cluster,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::server::Shared;

/// The name MemberList shows for a gateway.
pub(crate) const GATEWAY_MEMBER_NAME: &str = "lookout-gateway";

/// The members a gateway presents: with --resolver-prefix every live
/// registered gateway (as etcd grpc-proxy lists its peers); until one is
/// seen, or without it, just this one.
pub(crate) async fn gateway_members(s: &Shared) -> Result<Vec<Member>, Status> {
    let mut members = match &s.config.resolver_prefix {
        Some(p) => crate::register::members(s, p).await?,
        None => Vec::new(),
    };
    if members.is_empty() {
        members.push(Member {
            id: s.member_id,
            name: GATEWAY_MEMBER_NAME.to_string(),
            peer_ur_ls: Vec::new(),
            client_ur_ls: vec![s.advertise_url.clone()],
            is_learner: false,
        });
    }
    Ok(members)
}

#[derive(Debug, Clone)]
pub(crate) struct ClusterService {
    shared: Arc<Shared>,
}

impl ClusterService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn client(&self) -> Result<ClusterClient<Channel>, Status> {
        let ch = self.shared.upstream.channel().await?;
        self.shared.metrics.forwarded.fetch_add(1, Relaxed);
        Ok(ClusterClient::new(ch))
    }

    fn done<T>(&self, r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        if let Err(s) = &r {
            self.shared.upstream.report_failure(s);
        }
        r
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let r = self.client().await?.member_add(request.into_inner()).await;
        self.done(r)
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let r = self
            .client()
            .await?
            .member_remove(request.into_inner())
            .await;
        self.done(r)
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let r = self
            .client()
            .await?
            .member_update(request.into_inner())
            .await;
        self.done(r)
    }

    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let s = &self.shared;
        let members = gateway_members(s).await?;
        Ok(Response::new(MemberListResponse {
            // etcd's Cluster answers name no revision.
            header: Some(lookout_proto::pb::ResponseHeader {
                revision: 0,
                ..s.cache.header(s.cache.revision())
            }),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let r = self
            .client()
            .await?
            .member_promote(request.into_inner())
            .await;
        self.done(r)
    }
}
