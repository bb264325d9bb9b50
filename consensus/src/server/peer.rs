//! The service half of the peer transport: answers the messages
//! `raft/peer.rs` sends by calling into this member's `Store` (raft's RPCs,
//! and requests a follower forwards to the leader). It lives above `Store`
//! so that the client half, which `Store` holds, never depends on it.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use lookout_proto::peer::{PeerReply, PeerRequest, peer_server};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Response, Status};

use crate::raft::peer::{Forward, MAX_PEER_MESSAGE, PEER_VERSION};
use crate::raft::type_config::{NodeId, TypeConfig};
use crate::store::Store;

/// The peer gRPC service of one member.
#[derive(Debug, Clone)]
pub struct PeerService {
    store: Store,
}

impl PeerService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn open<T: DeserializeOwned>(&self, r: tonic::Request<PeerRequest>) -> Result<T, Status> {
        self.open_message(r.into_inner())
    }

    /// Counts a request of `received` bytes from member `from` (0 when
    /// the message does not say) and its reply.
    fn count(
        &self,
        from: Option<NodeId>,
        received: usize,
        reply: &Result<Response<PeerReply>, Status>,
    ) {
        let stats = self.store.peer_metrics();
        match (from, reply) {
            (Some(id), Ok(r)) => stats.peer(id).served(received, r.get_ref().payload.len()),
            (Some(id), Err(_)) => stats.peer(id).served(received, 0),
            (None, _) => stats.received(0, received),
        }
    }

    fn open_message<T: DeserializeOwned>(&self, r: PeerRequest) -> Result<T, Status> {
        if r.version != PEER_VERSION {
            return Err(Status::failed_precondition(format!(
                "peer message format version {} is not supported (this member speaks {PEER_VERSION})",
                r.version
            )));
        }
        if r.cluster_id != self.store.cluster_id() {
            return Err(Status::failed_precondition(format!(
                "peer belongs to cluster {:x}, this member to {:x}",
                r.cluster_id,
                self.store.cluster_id()
            )));
        }
        bincode::deserialize(&r.payload)
            .map_err(|e| Status::invalid_argument(format!("bad peer payload: {e}")))
    }
}

fn seal<T: Serialize>(v: &T) -> Result<Response<PeerReply>, Status> {
    let payload = bincode::serialize(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(PeerReply {
        version: PEER_VERSION,
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl peer_server::Peer for PeerService {
    async fn append_entries(
        &self,
        r: tonic::Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let n = r.get_ref().payload.len();
        let req: AppendEntriesRequest<TypeConfig> = self.open(r)?;
        let from = req.vote.leader_id().voted_for();
        let reply = seal(&self.store.raft().append_entries(req).await);
        self.count(from, n, &reply);
        reply
    }

    type AppendStreamStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<PeerReply, Status>> + Send>>;

    /// Appends answered in order, one at a time; a message that cannot be
    /// opened ends the stream with its status (the leader reopens).
    async fn append_stream(
        &self,
        r: tonic::Request<tonic::Streaming<PeerRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        if !self.store.config().serve_append_stream {
            return Err(Status::unimplemented("append stream not served"));
        }
        let this = self.clone();
        let replies = futures::stream::unfold(
            (this, r.into_inner(), false, None),
            |(this, mut inbound, failed, mut from)| async move {
                if failed {
                    return None;
                }
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return None,
                    Err(_) => {
                        // A stream from a known leader broke mid-message.
                        if let Some(id) = from {
                            let p = this.store.peer_metrics().peer(id);
                            p.received_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        return None;
                    }
                };
                let n = msg.payload.len();
                let reply = match this.open_message::<AppendEntriesRequest<TypeConfig>>(msg) {
                    Ok(req) => {
                        from = req.vote.leader_id().voted_for();
                        let r = seal(&this.store.raft().append_entries(req).await);
                        this.count(from, n, &r);
                        r.map(Response::into_inner)
                    }
                    Err(s) => Err(s),
                };
                let failed = reply.is_err();
                Some((reply, (this, inbound, failed, from)))
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, r: tonic::Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let n = r.get_ref().payload.len();
        let req: VoteRequest<NodeId> = self.open(r)?;
        let from = req.vote.leader_id().voted_for();
        let reply = seal(&self.store.raft().vote(req).await);
        self.count(from, n, &reply);
        reply
    }

    async fn install_snapshot(
        &self,
        r: tonic::Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let n = r.get_ref().payload.len();
        let req: InstallSnapshotRequest<TypeConfig> = self.open(r)?;
        let from = req.vote.leader_id().voted_for();
        let reply = seal(&self.store.raft().install_snapshot(req).await);
        self.count(from, n, &reply);
        reply
    }

    async fn forward(&self, r: tonic::Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        // A forwarded request does not name its member: etcd's From="0".
        let n = r.get_ref().payload.len();
        let f: Forward = self.open(r)?;
        let reply = seal(&self.store.handle_forward(f).await);
        self.count(None, n, &reply);
        reply
    }
}

/// Serves the peer protocol for `store` on `listener` until `shutdown`.
///
/// # Errors
/// The gRPC server failed.
pub async fn serve_peer(
    listener: TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_peer_tls(listener, None, store, shutdown).await
}

/// [`serve_peer`] behind TLS when `tls` is given (`--peer-cert-file` ...):
/// a member without a valid peer certificate is refused at the handshake.
///
/// # Errors
/// The gRPC server failed.
pub async fn serve_peer_tls(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ReloadingTls>>,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder().add_service(
        peer_server::PeerServer::new(PeerService::new(store))
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE),
    );
    if let Some(tls) = tls {
        return router
            .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
            .await;
    }
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
