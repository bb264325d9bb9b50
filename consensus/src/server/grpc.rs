//! The store's etcd v3 gRPC services (KV, Watch, Lease, Cluster,
//! Maintenance, Auth, and lookout's `Tokens` for gateways) over a [`Store`],
//! and [`serve`] to run them on a listener.
//! Store errors become `tonic::Status` through [`to_status`] (in
//! `error.rs`, where the backup stream and the peer service use it too).

use std::future::Future;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use lookout_proto::gateway::{ResolveRequest, ResolveResponse, tokens_server::TokensServer};
use lookout_proto::pb::{
    self, auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AuthInfo, Credentials};
use crate::config::GRPC_OVERHEAD_BYTES;
use crate::error::{Error, to_status};
use crate::store::Store;

pub(crate) type Rpc<T> = Result<Response<T>, Status>;

/// What a request says about its sender: the token in its metadata
/// (`token`, or `authorization` as etcd's JSON gateway passes it) and the
/// common name of the TLS client certificate it connected with.
///
/// A request carrying `grpcgateway-accept` metadata names nobody by its
/// certificate, as in etcd (whose JSON gateway dials with the server's own
/// certificate): a lookout gateway sends it with the calls it forwards for
/// a client without a token, so the gateway's certificate never lends its
/// name to them.
pub fn credentials<T>(r: &Request<T>) -> Credentials {
    let md = r.metadata();
    let token = md
        .get("token")
        .or_else(|| md.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cert_cn = if md.contains_key("grpcgateway-accept") {
        None
    } else {
        r.extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|c| c.first().and_then(|c| crate::tls::common_name(c)))
    };
    Credentials { token, cert_cn }
}

impl EtcdService {
    /// etcd's Maintenance admin gate (Defragment, Snapshot, Hash,
    /// HashKV): root, refused with etcd's unmapped "auth: ..." texts.
    async fn maintenance_admin<T>(&self, r: &Request<T>) -> Result<(), Status> {
        self.store
            .check_maintenance_admin(&credentials(r))
            .await
            .map_err(to_status)
    }

    /// Membership changes need root.
    async fn member_admin<T>(&self, r: &Request<T>) -> Result<(), Status> {
        self.store
            .check_member_admin(&credentials(r))
            .await
            .map_err(to_status)
    }

    /// The sender of `r` (etcd's `AuthInfoFromCtx`).
    pub(crate) async fn who<T>(&self, r: &Request<T>) -> Result<Option<AuthInfo>, Status> {
        self.store
            .auth_info(&credentials(r))
            .await
            .map_err(to_status)
    }
}
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Every service over one store.
#[derive(Debug, Clone)]
pub struct EtcdService {
    pub(crate) store: Store,
}

impl EtcdService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

// === KV with a pre-encoded Range ===

/// Codec for Range: requests decode with prost, responses are already
/// protobuf bytes ([`Store::range_encoded`]) and are copied as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RangeCodec;

#[derive(Debug, Clone, Copy, Default)]
struct BytesEncoder;

impl tonic::codec::Encoder for BytesEncoder {
    type Item = bytes::Bytes;
    type Error = Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Codec for RangeCodec {
    type Encode = bytes::Bytes;
    type Decode = pb::RangeRequest;
    type Encoder = BytesEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::RangeRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

struct RangeSvc(Store);

impl tonic::server::UnaryService<pb::RangeRequest> for RangeSvc {
    type Response = bytes::Bytes;
    type Future = tonic::codegen::BoxFuture<Response<bytes::Bytes>, Status>;

    fn call(&mut self, r: Request<pb::RangeRequest>) -> Self::Future {
        let store = self.0.clone();
        Box::pin(async move {
            let who = store.auth_info(&credentials(&r)).await.map_err(to_status)?;
            store
                .range_encoded_as(who.as_ref(), r.into_inner())
                .await
                .map(Response::new)
                .map_err(to_status)
        })
    }
}

/// The KV service: Range through a codec that copies pre-encoded bytes
/// ([`Store::range_encoded`]), every other method
/// through the generated server.
#[derive(Debug, Clone)]
pub struct KvService {
    inner: KvServer<EtcdService>,
    store: Store,
    max_in: usize,
}

impl tonic::server::NamedService for KvService {
    const NAME: &'static str = "etcdserverpb.KV";
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for KvService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        if req.uri().path() != "/etcdserverpb.KV/Range" {
            return self.inner.call(req);
        }
        let (store, max_in) = (self.store.clone(), self.max_in);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RangeCodec)
                .apply_max_message_size_config(Some(max_in), Some(usize::MAX));
            Ok(grpc.unary(RangeSvc(store), req).await)
        })
    }
}

/// The etcd services, and lookout's `Tokens` for gateways, as tonic
/// routes, with message limits set so the store (not gRPC) rejects
/// requests over `max_request_bytes` with etcd's error.
pub fn routes(store: &Store) -> tonic::service::Routes {
    let svc = EtcdService::new(store.clone());
    let max_in = store.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    tonic::service::Routes::new(KvService {
        inner: KvServer::new(svc.clone())
            .max_decoding_message_size(max_in)
            .max_encoding_message_size(usize::MAX),
        store: store.clone(),
        max_in,
    })
    .add_service(
        WatchServer::new(svc.clone())
            .max_decoding_message_size(max_in)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LeaseServer::new(svc.clone())
            .max_decoding_message_size(max_in)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(ClusterServer::new(svc.clone()).max_decoding_message_size(max_in))
    .add_service(
        MaintenanceServer::new(svc.clone())
            .max_decoding_message_size(max_in)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(AuthServer::new(svc.clone()).max_decoding_message_size(max_in))
    .add_service(TokensServer::new(svc))
}

/// Serves the etcd API for `store` on `listener` until `shutdown`
/// resolves, then lets in-flight calls finish.
///
/// # Errors
/// The gRPC server failed (not a client's error).
pub async fn serve(
    listener: TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Small unary answers (HEADERS, DATA, trailers) must not wait for
    // Nagle: every accepted socket gets TCP_NODELAY, as etcd's do.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_routes(routes(&store))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

// === impl KV ===

#[tonic::async_trait]
impl pb::kv_server::Kv for EtcdService {
    async fn range(&self, r: Request<pb::RangeRequest>) -> Rpc<pb::RangeResponse> {
        let who = self.who(&r).await?;
        self.store
            .range_as(who.as_ref(), r.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn put(&self, r: Request<pb::PutRequest>) -> Rpc<pb::PutResponse> {
        let who = self.who(&r).await?;
        self.store
            .put_as(who.as_ref(), r.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn delete_range(
        &self,
        r: Request<pb::DeleteRangeRequest>,
    ) -> Rpc<pb::DeleteRangeResponse> {
        let who = self.who(&r).await?;
        self.store
            .delete_range_as(who.as_ref(), r.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn txn(&self, r: Request<pb::TxnRequest>) -> Rpc<pb::TxnResponse> {
        let who = self.who(&r).await?;
        self.store
            .txn_as(who.as_ref(), r.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn compact(&self, r: Request<pb::CompactionRequest>) -> Rpc<pb::CompactionResponse> {
        // etcd 3.4 resolves the token (a bad one is refused) but lets any
        // caller compact.
        self.who(&r).await?;
        self.store
            .compact(r.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}

// === impl Watch ===

#[tonic::async_trait]
impl pb::watch_server::Watch for EtcdService {
    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(&self, r: Request<Streaming<pb::WatchRequest>>) -> Rpc<Self::WatchStream> {
        let creds = credentials(&r);
        // A broken client stream ends the watch stream, like a close.
        let requests = r
            .into_inner()
            .take_while(|m| std::future::ready(m.is_ok()))
            .filter_map(|m| std::future::ready(m.ok()));
        let rx = self.store.watch_as(creds, Box::pin(requests));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|m| m.map_err(to_status)),
        )))
    }
}

// === impl Cluster ===

/// The Cluster API's header names the cluster, the member and the term, and
/// no revision (etcd's `ClusterServer.header`).
fn cluster_header(h: Option<pb::ResponseHeader>) -> Option<pb::ResponseHeader> {
    h.map(|h| pb::ResponseHeader { revision: 0, ..h })
}

/// Client URLs as the Cluster API lists them: `http://host:port` becomes
/// `host:port`. etcdctl dials listed URLs for per-endpoint calls
/// (`endpoint status --cluster`, `defrag --cluster`) with the whole URL as
/// the HTTP/2 `:authority`; Go's server tolerates that, the h2 crate
/// rejects it as malformed. A bare `host:port` works for every etcd client.
fn dial_form(mut members: Vec<pb::Member>) -> Vec<pb::Member> {
    for m in &mut members {
        for u in &mut m.client_ur_ls {
            if let Some(rest) = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
            {
                *u = rest.trim_end_matches('/').to_string();
            }
        }
    }
    members
}

fn unsupported(what: &'static str) -> Status {
    to_status(Error::Unsupported(what.into()))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for EtcdService {
    async fn member_add(&self, r: Request<pb::MemberAddRequest>) -> Rpc<pb::MemberAddResponse> {
        self.member_admin(&r).await?;
        let r = r.into_inner();
        self.store
            .member_add(r.peer_ur_ls, r.is_learner)
            .await
            .map(|mut a| {
                a.members = dial_form(a.members);
                a.header = cluster_header(a.header);
                Response::new(a)
            })
            .map_err(to_status)
    }

    async fn member_remove(
        &self,
        r: Request<pb::MemberRemoveRequest>,
    ) -> Rpc<pb::MemberRemoveResponse> {
        self.member_admin(&r).await?;
        self.store
            .member_remove(r.into_inner().id)
            .await
            .map(|mut a| {
                a.members = dial_form(a.members);
                a.header = cluster_header(a.header);
                Response::new(a)
            })
            .map_err(to_status)
    }

    async fn member_update(
        &self,
        r: Request<pb::MemberUpdateRequest>,
    ) -> Rpc<pb::MemberUpdateResponse> {
        self.member_admin(&r).await?;
        let r = r.into_inner();
        self.store
            .member_update(r.id, r.peer_ur_ls)
            .await
            .map(|mut a| {
                a.members = dial_form(a.members);
                a.header = cluster_header(a.header);
                Response::new(a)
            })
            .map_err(to_status)
    }

    async fn member_list(&self, _r: Request<pb::MemberListRequest>) -> Rpc<pb::MemberListResponse> {
        let mut l = self.store.member_list().await;
        l.members = dial_form(l.members);
        l.header = cluster_header(l.header);
        Ok(Response::new(l))
    }

    async fn member_promote(
        &self,
        r: Request<pb::MemberPromoteRequest>,
    ) -> Rpc<pb::MemberPromoteResponse> {
        self.member_admin(&r).await?;
        self.store
            .member_promote(r.into_inner().id)
            .await
            .map(|mut a| {
                a.members = dial_form(a.members);
                a.header = cluster_header(a.header);
                Response::new(a)
            })
            .map_err(to_status)
    }
}

// === impl Maintenance ===

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for EtcdService {
    type SnapshotStream = BoxStream<pb::SnapshotResponse>;

    /// etcd's Alarm answer carries no header.
    async fn alarm(&self, r: Request<pb::AlarmRequest>) -> Rpc<pb::AlarmResponse> {
        self.who(&r).await?;
        self.store
            .alarm(r.into_inner())
            .await
            .map(|mut a| {
                a.header = None;
                Response::new(a)
            })
            .map_err(to_status)
    }

    async fn status(&self, _r: Request<pb::StatusRequest>) -> Rpc<pb::StatusResponse> {
        self.store
            .status()
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn defragment(&self, r: Request<pb::DefragmentRequest>) -> Rpc<pb::DefragmentResponse> {
        self.maintenance_admin(&r).await?;
        self.store.defragment().await.map_err(to_status)?;
        // etcd answers an empty message, header included.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(&self, r: Request<pb::HashRequest>) -> Rpc<pb::HashResponse> {
        self.maintenance_admin(&r).await?;
        let h = self.store.hash_kv(0).await.map_err(to_status)?;
        Ok(Response::new(pb::HashResponse {
            header: h.header,
            hash: h.hash,
        }))
    }

    async fn hash_kv(&self, r: Request<pb::HashKvRequest>) -> Rpc<pb::HashKvResponse> {
        self.maintenance_admin(&r).await?;
        self.store
            .hash_kv(r.into_inner().revision)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn snapshot(&self, r: Request<pb::SnapshotRequest>) -> Rpc<Self::SnapshotStream> {
        self.maintenance_admin(&r).await?;
        let rx = crate::server::snapshot_stream::snapshot(&self.store);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// etcd answers MoveLeader only on the leader, refuses a target that is
    /// not a voting member, and answers with no header.
    async fn move_leader(&self, r: Request<pb::MoveLeaderRequest>) -> Rpc<pb::MoveLeaderResponse> {
        let target = r.into_inner().target_id;
        if !self.store.is_leader() {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if !self
            .store
            .members()
            .iter()
            .any(|m| m.id == target && !m.is_learner)
        {
            return Err(to_status(Error::BadLeaderTransferee));
        }
        if self.store.leader_id() == Some(target) {
            return Ok(Response::new(pb::MoveLeaderResponse { header: None }));
        }
        // openraft 0.9 has no leadership transfer.
        Err(unsupported("MoveLeader"))
    }
}

// === impl Auth ===

fn ok<T>(r: crate::error::Result<T>) -> Rpc<T> {
    r.map(Response::new).map_err(to_status)
}

#[tonic::async_trait]
impl pb::auth_server::Auth for EtcdService {
    async fn auth_enable(&self, r: Request<pb::AuthEnableRequest>) -> Rpc<pb::AuthEnableResponse> {
        let who = self.who(&r).await?;
        ok(self.store.auth_enable(who.as_ref()).await)
    }

    async fn auth_disable(
        &self,
        r: Request<pb::AuthDisableRequest>,
    ) -> Rpc<pb::AuthDisableResponse> {
        let who = self.who(&r).await?;
        ok(self.store.auth_disable(who.as_ref()).await)
    }

    async fn auth_status(&self, r: Request<pb::AuthStatusRequest>) -> Rpc<pb::AuthStatusResponse> {
        let who = self.who(&r).await?;
        ok(self.store.auth_status(who.as_ref()).await)
    }

    async fn authenticate(
        &self,
        r: Request<pb::AuthenticateRequest>,
    ) -> Rpc<pb::AuthenticateResponse> {
        // A stale token sent along does not stop a client from logging in
        // again (etcd 3.4's later fix).
        let r = r.into_inner();
        ok(self.store.authenticate(&r.name, &r.password).await)
    }

    async fn user_add(&self, r: Request<pb::AuthUserAddRequest>) -> Rpc<pb::AuthUserAddResponse> {
        let who = self.who(&r).await?;
        ok(self.store.user_add(who.as_ref(), r.into_inner()).await)
    }

    async fn user_get(&self, r: Request<pb::AuthUserGetRequest>) -> Rpc<pb::AuthUserGetResponse> {
        let who = self.who(&r).await?;
        ok(self.store.user_get(who.as_ref(), &r.get_ref().name).await)
    }

    async fn user_list(
        &self,
        r: Request<pb::AuthUserListRequest>,
    ) -> Rpc<pb::AuthUserListResponse> {
        let who = self.who(&r).await?;
        ok(self.store.user_list(who.as_ref()).await)
    }

    async fn user_delete(
        &self,
        r: Request<pb::AuthUserDeleteRequest>,
    ) -> Rpc<pb::AuthUserDeleteResponse> {
        let who = self.who(&r).await?;
        ok(self
            .store
            .user_delete(who.as_ref(), r.into_inner().name)
            .await)
    }

    async fn user_change_password(
        &self,
        r: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Rpc<pb::AuthUserChangePasswordResponse> {
        let who = self.who(&r).await?;
        let r = r.into_inner();
        ok(self
            .store
            .user_change_password(who.as_ref(), r.name, r.password)
            .await)
    }

    async fn user_grant_role(
        &self,
        r: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Rpc<pb::AuthUserGrantRoleResponse> {
        let who = self.who(&r).await?;
        let r = r.into_inner();
        ok(self
            .store
            .user_grant_role(who.as_ref(), r.user, r.role)
            .await)
    }

    async fn user_revoke_role(
        &self,
        r: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Rpc<pb::AuthUserRevokeRoleResponse> {
        let who = self.who(&r).await?;
        let r = r.into_inner();
        ok(self
            .store
            .user_revoke_role(who.as_ref(), r.name, r.role)
            .await)
    }

    async fn role_add(&self, r: Request<pb::AuthRoleAddRequest>) -> Rpc<pb::AuthRoleAddResponse> {
        let who = self.who(&r).await?;
        ok(self.store.role_add(who.as_ref(), r.into_inner().name).await)
    }

    async fn role_get(&self, r: Request<pb::AuthRoleGetRequest>) -> Rpc<pb::AuthRoleGetResponse> {
        let who = self.who(&r).await?;
        ok(self.store.role_get(who.as_ref(), &r.get_ref().role).await)
    }

    async fn role_list(
        &self,
        r: Request<pb::AuthRoleListRequest>,
    ) -> Rpc<pb::AuthRoleListResponse> {
        let who = self.who(&r).await?;
        ok(self.store.role_list(who.as_ref()).await)
    }

    async fn role_delete(
        &self,
        r: Request<pb::AuthRoleDeleteRequest>,
    ) -> Rpc<pb::AuthRoleDeleteResponse> {
        let who = self.who(&r).await?;
        ok(self
            .store
            .role_delete(who.as_ref(), r.into_inner().role)
            .await)
    }

    async fn role_grant_permission(
        &self,
        r: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Rpc<pb::AuthRoleGrantPermissionResponse> {
        let who = self.who(&r).await?;
        ok(self
            .store
            .role_grant_permission(who.as_ref(), r.into_inner())
            .await)
    }

    async fn role_revoke_permission(
        &self,
        r: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Rpc<pb::AuthRoleRevokePermissionResponse> {
        let who = self.who(&r).await?;
        ok(self
            .store
            .role_revoke_permission(who.as_ref(), r.into_inner())
            .await)
    }
}

// === impl Tokens (lookout's, for gateways) ===

#[tonic::async_trait]
impl lookout_proto::gateway::tokens_server::Tokens for EtcdService {
    async fn resolve(&self, r: Request<ResolveRequest>) -> Rpc<ResolveResponse> {
        let caller = self.who(&r).await?;
        let (who, ttl) = self
            .store
            .resolve_token(caller.as_ref(), &r.get_ref().token)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ResolveResponse {
            user: who.user,
            revision: who.revision,
            ttl_ms: ttl.map_or(0, |t| (t.as_millis() as i64).max(1)),
        }))
    }
}
