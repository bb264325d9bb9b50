//! The Cluster service: `MemberList` lists this gateway (its advertised
//! client URL), or with `--resolver-prefix` every registered gateway, so a
//! clientv3 that syncs endpoints keeps balancing across gateways instead of
//! moving onto the store; membership changes are forwarded to the store
//! (they need the root role, as in etcd). With `--auth-config`, a
//! nameless request is refused, MemberList included.

use std::sync::Arc;

use lookout_consensus::auth::check_admin;
use lookout_proto::pb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_client::ClusterClient,
    cluster_server::Cluster,
};
use tonic::{Request, Response, Status};

use crate::auth::Creds;
use crate::register::GATEWAY_MEMBER_NAME;
use crate::shared::Shared;

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

    /// A membership change, forwarded once the root check passed (or
    /// with the client's token, for the store to check).
    async fn change<Req, Resp, F, Fut>(
        &self,
        request: Request<Req>,
        f: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        F: Fn(ClusterClient<lookout_cache::AuthChannel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let s = &self.shared;
        let who = s.auth.who(&Creds::of_request(&request)).await?;
        s.auth.named(&who)?;
        let as_ = s.auth.forward(&who, check_admin)?;
        s.forward(as_)
            .cluster(request.into_inner(), f)
            .await
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.change(request, |mut c, r| async move { c.member_add(r).await })
            .await
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.change(request, |mut c, r| async move { c.member_remove(r).await })
            .await
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.change(request, |mut c, r| async move { c.member_update(r).await })
            .await
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let s = &self.shared;
        // etcd answers anyone.
        if s.auth.has_local() {
            let who = s.auth.who(&Creds::of_request(&request)).await?;
            s.auth.named(&who)?;
        }
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
        self.change(request, |mut c, r| async move { c.member_promote(r).await })
            .await
    }
}
