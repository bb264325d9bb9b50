//! The Maintenance service: `Status` answers for this gateway (the cache's
//! revision, the gateway's member id, the store's version and raft
//! figures, a leader from the gateways' own MemberList); everything else
//! is forwarded to the store, as etcd grpc-proxy forwards it.
//!
//! Auth, as etcd 3.4's: Defragment, Snapshot, Hash and HashKV need the
//! root role (refused with etcd's unmapped "auth: ..." texts, code
//! Unknown); Alarm, Status and MoveLeader check nothing (a client named by
//! its certificate or by `--auth-config` needs root for MoveLeader here,
//! as etcd 3.6 asks). With `--auth-config`, a nameless request is refused.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use lookout_cache::CallAs;
use lookout_consensus::auth::{check_admin, unmapped};
use lookout_consensus::to_status;
use lookout_proto::pb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    maintenance_client::MaintenanceClient, maintenance_server::Maintenance,
};
use tonic::{Request, Response, Status};

use crate::auth::{Creds, Who};
use crate::shared::Shared;

/// How long the store's Status is reused (Status is polled by health
/// checkers; one upstream call per poll would be a storm with many).
const STATUS_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub(crate) struct MaintenanceService {
    shared: Arc<Shared>,
}

impl MaintenanceService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Who sent `r`, refused when `--auth-config` wants a name.
    async fn who<T>(&self, r: &Request<T>) -> Result<Who, Status> {
        let who = self.shared.auth.who(&Creds::of_request(r)).await?;
        self.shared.auth.named(&who)?;
        Ok(who)
    }

    /// etcd's admin gate of Defragment, Snapshot, Hash and HashKV, with
    /// its unmapped texts.
    async fn admin<T>(&self, r: &Request<T>) -> Result<CallAs, Status> {
        let who = self.who(r).await?;
        self.shared
            .auth
            .forward_mapped(&who, check_admin, |e| to_status(unmapped(e)))
    }

    /// The store's Status, at most `STATUS_TTL` old; `Err` with the last
    /// known one when the store cannot be asked now.
    async fn upstream_status(&self) -> Result<StatusResponse, (String, Option<StatusResponse>)> {
        let cached = self.shared.upstream_status.lock().clone();
        // A leaderless answer is not reused: a store that just elected
        // one (seconds after start) must not look leaderless for a TTL.
        if let Some((at, st)) = &cached
            && at.elapsed() < STATUS_TTL
            && st.leader != 0
        {
            return Ok(st.clone());
        }
        let last = cached.map(|(_, s)| s);
        let ask = self
            .shared
            .upstream
            .call_as(&CallAs::Gateway, |ch| async move {
                MaintenanceClient::new(ch).status(StatusRequest {}).await
            });
        match tokio::time::timeout(Duration::from_secs(2), ask).await {
            Ok(Ok(st)) => {
                *self.shared.upstream_status.lock() = Some((Instant::now(), st.clone()));
                Ok(st)
            }
            Ok(Err(e)) => Err((format!("lookout: store status: {}", e.message()), last)),
            Err(_) => Err(("lookout: store status: timed out".into(), last)),
        }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let who = self.who(&request).await?;
        let s = &self.shared;
        s.forward(s.auth.pass(&who))
            .maintenance(
                request.into_inner(),
                |mut c, r| async move { c.alarm(r).await },
            )
            .await
            .map(Response::new)
    }

    /// The gateway's own status: header at the cache's revision with the
    /// gateway's member id, the store's version and raft figures, a leader
    /// among the gateways
    /// (so `etcdctl endpoint status` reads sensibly), and `errors` saying
    /// what is wrong (cache not synced, store unreachable).
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        // etcd 3.4 answers anyone (it does not even read a token here).
        if self.shared.auth.has_local() {
            self.who(&request).await?;
        }
        let s = &self.shared;
        let mut errors = Vec::new();
        if !s.cache.is_ready() {
            errors.push("lookout: cache not synced with the store yet".to_string());
        }
        let up = match self.upstream_status().await {
            Ok(st) => st,
            Err((e, last)) => {
                errors.push(e);
                last.unwrap_or_default()
            }
        };
        // The cluster a client sees through gateways is the gateways
        // (MemberList lists them), so the leader it names is one of them:
        // the lowest ID, which every gateway agrees on, while the store has
        // a leader; 0 (no leader) while it has none. Clients that look the
        // leader up in MemberList (Python etcd3's `status().leader`,
        // `etcdctl endpoint status`'s IS LEADER) find it.
        let leader = if up.leader == 0 {
            0
        } else {
            match crate::cluster::gateway_members(s).await {
                Ok(m) => m.iter().map(|m| m.id).min().unwrap_or(s.member_id),
                Err(_) => s.member_id,
            }
        };
        let version = if up.version.is_empty() {
            "3.4.0".to_string()
        } else {
            up.version
        };
        Ok(Response::new(StatusResponse {
            header: Some(s.cache.header(s.cache.revision())),
            version,
            db_size: up.db_size,
            leader,
            raft_index: up.raft_index,
            raft_term: up.raft_term,
            raft_applied_index: up.raft_applied_index,
            errors,
            db_size_in_use: up.db_size_in_use,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let as_ = self.admin(&request).await?;
        self.shared
            .forward(as_)
            .maintenance(request.into_inner(), |mut c, r| async move {
                c.defragment(r).await
            })
            .await
            .map(Response::new)
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let as_ = self.admin(&request).await?;
        self.shared
            .forward(as_)
            .maintenance(
                request.into_inner(),
                |mut c, r| async move { c.hash(r).await },
            )
            .await
            .map(Response::new)
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let as_ = self.admin(&request).await?;
        self.shared
            .forward(as_)
            .maintenance(request.into_inner(), |mut c, r| async move {
                c.hash_kv(r).await
            })
            .await
            .map(Response::new)
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let as_ = self.admin(&request).await?;
        let up = self
            .shared
            .forward(as_)
            .maintenance(request.into_inner(), |mut c, r| async move {
                c.snapshot(r).await
            })
            .await?;
        Ok(Response::new(up.boxed()))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let who = self.who(&request).await?;
        let as_ = match &who {
            // etcd 3.4 checks nothing here; 3.6 asks for root.
            Who::Cert(_) | Who::Local(_) => self.shared.auth.forward(&who, check_admin)?,
            _ => self.shared.auth.pass(&who),
        };
        self.shared
            .forward(as_)
            .maintenance(request.into_inner(), |mut c, r| async move {
                c.move_leader(r).await
            })
            .await
            .map(Response::new)
    }
}
