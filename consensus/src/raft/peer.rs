//! The peer transport: openraft's network over gRPC (`lookout.peer.Peer`)
//! on the members' peer URLs, and the requests a follower forwards to the
//! leader.
//!
//! ```text
//!  RaftCore ──RaftNetwork──> PeerConn ──gRPC PeerRequest{version, cluster, bincode}──>
//!      peer server (serve_peer) ──> Raft::append_entries / vote / install_snapshot
//!  (appends: one AppendStream per follower, replies in order; unary
//!   AppendEntries for a peer without it)
//!  Store on a follower ──Forward──> leader's Store::handle_forward
//! ```
//!
//! This is the client half; the service that answers these messages is
//! `server/peer.rs`, above `Store`.
//!
//! Every message carries [`PEER_VERSION`]; a member refuses other versions
//! (and other clusters) with FAILED_PRECONDITION, and the sender logs the
//! mismatch as an error instead of retrying silently forever.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lookout_proto::peer::{PeerReply, PeerRequest, peer_client::PeerClient};
use openraft::AnyError;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::error::{Error, Result};
use crate::mvcc::request::{Reply, Request};
use crate::raft::log_store::LogStore;
use crate::raft::type_config::{MemberNode, NodeId, TypeConfig};

/// Version of the payload encoding inside peer messages.
pub const PEER_VERSION: u32 = 1;
/// Largest peer message accepted (append batches are bounded well below).
pub(crate) const MAX_PEER_MESSAGE: usize = 256 << 20;

/// A request a follower hands to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Forward {
    /// Requests batched by the follower; the leader proposes them as one entry.
    Propose(Vec<Request>),
    /// The leader's read index, confirmed by a quorum.
    ReadIndex,
    KeepAlive(i64),
    TimeToLive(i64),
    MemberAdd {
        peer_urls: Vec<String>,
        learner: bool,
    },
    MemberRemove(NodeId),
    MemberPromote(NodeId),
    MemberUpdate {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    /// A started member announces its name and client URLs.
    Publish {
        id: NodeId,
        node: MemberNode,
    },
}

/// The leader's answer to a [`Forward`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardOk {
    /// One result per forwarded request, in order.
    Replies(Vec<Result<Reply>>),
    Index(u64),
    Ttl(i64),
    Member(NodeId),
    Done,
}

/// Outcome of a forward as the forwarder sees it.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// Nothing was done: safe to retry (the peer was not reachable, or it
    /// is not the leader).
    Retry,
    /// The request may have been done; the caller must not repeat it.
    Unknown,
    /// The leader answered with an etcd error.
    Answer(Error),
}

// === client side ===

/// Cached gRPC channels to peers (one per member and URL).
#[derive(Debug, Default)]
pub(crate) struct PeerClients {
    // A std Mutex: lookups and inserts only, never held across an await.
    conns: parking_lot::Mutex<HashMap<NodeId, (String, PeerClient<Channel>)>>,
    pub cluster_id: u64,
    /// `--peer-cert-file`/`--peer-key-file` (our client identity) and
    /// `--peer-trusted-ca-file` (verifies the other members), for
    /// `https://` peer URLs.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Bytes, failures and round trips per peer (etcd_network_peer_*).
    pub stats: crate::metrics::PeerMetrics,
}

impl PeerClients {
    pub fn new(cluster_id: u64, tls: Option<crate::tls::TlsFiles>) -> Self {
        Self {
            conns: Default::default(),
            cluster_id,
            tls,
            stats: Default::default(),
        }
    }

    /// A client for `id` at its first peer URL (connects lazily).
    pub fn get(&self, id: NodeId, node: &MemberNode) -> Option<PeerClient<Channel>> {
        let url = node.peer_urls.first()?.clone();
        let mut conns = self.conns.lock();
        if let Some((u, c)) = conns.get(&id)
            && *u == url
        {
            return Some(c.clone());
        }
        let ep = tonic::transport::Endpoint::from_shared(url.clone())
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        // The files are read when the channel is made, so a member whose
        // URL changes (or a restarted member) picks up rotated files.
        let ep = match (&self.tls, url.starts_with("https://")) {
            (Some(t), true) => {
                let cfg = crate::tls::client_config(
                    t.trusted_ca.as_deref(),
                    Some((t.cert.as_path(), t.key.as_path())),
                );
                match cfg.map(|c| ep.tls_config(c)) {
                    Ok(Ok(ep)) => ep,
                    Ok(Err(e)) => {
                        tracing::error!(%url, error = %e, "peer TLS configuration refused");
                        return None;
                    }
                    Err(e) => {
                        tracing::error!(%url, error = %e, "cannot read peer TLS files");
                        return None;
                    }
                }
            }
            _ => ep,
        };
        let c = PeerClient::new(ep.connect_lazy())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        conns.insert(id, (url, c.clone()));
        Some(c)
    }

    fn envelope<T: Serialize>(&self, v: &T, timeout: Duration) -> tonic::Request<PeerRequest> {
        let mut r = tonic::Request::new(self.message(v));
        r.set_timeout(timeout);
        r
    }

    fn message<T: Serialize>(&self, v: &T) -> PeerRequest {
        PeerRequest {
            version: PEER_VERSION,
            cluster_id: self.cluster_id,
            payload: bincode::serialize(v).unwrap_or_default().into(),
        }
    }

    /// Sends `f` to the leader `id`.
    pub async fn forward(
        &self,
        id: NodeId,
        node: &MemberNode,
        f: &Forward,
        timeout: Duration,
    ) -> Result<ForwardOk, ForwardError> {
        let Some(mut c) = self.get(id, node) else {
            return Err(ForwardError::Retry);
        };
        let req = self.envelope(f, timeout);
        let sent = req.get_ref().payload.len();
        let stats = self.stats.peer(id);
        let res = tokio::time::timeout(timeout, c.forward(req)).await;
        if let Ok(Ok(r)) = &res {
            stats.answered(sent, r.get_ref().payload.len());
        } else {
            stats.failed(sent);
        }
        let reply = match res {
            Err(_) => return Err(ForwardError::Unknown),
            Ok(Err(s)) => {
                return Err(if never_sent(&s) {
                    ForwardError::Retry
                } else {
                    log_mismatch(&s);
                    ForwardError::Unknown
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        match decode::<Result<ForwardOk>>(&reply) {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(Error::NotLeader)) => Err(ForwardError::Retry),
            Ok(Err(e)) => Err(ForwardError::Answer(e)),
            Err(_) => Err(ForwardError::Unknown),
        }
    }
}

/// Whether a failed call certainly never reached the peer's handler: the
/// connection could not be made. A connection lost mid-call ("connection
/// reset", "broken pipe") may have delivered it and is not retried.
fn never_sent(s: &Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    s.code() == tonic::Code::Unavailable
        && (m.contains("tcp connect error")
            || m.contains("error trying to connect")
            || m.contains("connection refused"))
}

fn log_mismatch(s: &Status) {
    if s.code() == tonic::Code::FailedPrecondition {
        tracing::error!(error = %s.message(), "peer refused our message");
    }
}

fn decode<T: DeserializeOwned>(r: &PeerReply) -> Result<T, Status> {
    if r.version != PEER_VERSION {
        return Err(Status::failed_precondition(format!(
            "peer answered in format version {}, this member speaks {PEER_VERSION}",
            r.version
        )));
    }
    bincode::deserialize(&r.payload).map_err(|e| Status::internal(format!("bad peer payload: {e}")))
}

/// openraft's network factory.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub clients: Arc<PeerClients>,
    /// This member's raft log: what it has synced bounds the commit index
    /// it tells followers (see [`PeerConn::append_entries`]).
    pub log: LogStore,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConn {
        PeerConn {
            target,
            stats: self.clients.stats.peer(target),
            client: self.clients.get(target, node),
            clients: self.clients.clone(),
            log: self.log.clone(),
            stream: None,
            no_stream: false,
        }
    }
}

/// One peer as openraft talks to it.
#[derive(Debug)]
pub(crate) struct PeerConn {
    target: NodeId,
    /// This peer's traffic numbers (looked up once per connection).
    stats: Arc<crate::metrics::PeerStats>,
    client: Option<PeerClient<Channel>>,
    clients: Arc<PeerClients>,
    log: LogStore,
    /// The open append stream to this peer (see `AppendStream` in
    /// peer.proto). openraft sends one append at a time per follower, so
    /// the next reply on it is always the answer to the last request.
    stream: Option<AppendStream>,
    /// The peer does not serve the stream: use unary calls.
    no_stream: bool,
}

#[derive(Debug)]
struct AppendStream {
    tx: tokio::sync::mpsc::Sender<PeerRequest>,
    rx: tonic::Streaming<PeerReply>,
    /// A request was sent and its reply not yet taken. Set at a call whose
    /// future was dropped midway (openraft may cancel a replication): that
    /// reply, still on its way, belongs to nobody, and an append reply
    /// names no request, so the stream is dropped rather than read.
    awaiting: bool,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, MemberNode, RaftError<NodeId, E>>;

impl PeerConn {
    async fn call<Q, A, E, F, Fut>(&mut self, q: &Q, ttl: Duration, send: F) -> Result<A, RpcErr<E>>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(PeerClient<Channel>, tonic::Request<PeerRequest>) -> Fut,
        Fut: Future<Output = Result<Response<PeerReply>, Status>>,
    {
        let Some(c) = self.client.clone() else {
            return Err(unreachable("member has no peer URL"));
        };
        let req = self.clients.envelope(q, ttl);
        let sent = req.get_ref().payload.len();
        let reply = match tokio::time::timeout(ttl, send(c, req)).await {
            Err(_) => {
                self.stats.failed(sent);
                return Err(no_answer(ttl));
            }
            Ok(Err(s)) => {
                self.stats.failed(sent);
                return Err(refused(&s));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        self.stats.answered(sent, reply.payload.len());
        self.answer(&reply)
    }

    // The error type is openraft's (RaftNetwork's signature).
    #[allow(clippy::result_large_err)]
    fn answer<A, E>(&self, reply: &PeerReply) -> Result<A, RpcErr<E>>
    where
        A: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        match decode::<Result<A, RaftError<NodeId, E>>>(reply) {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(s) => Err(refused(&s)),
        }
    }

    /// Sends an append on the stream (opening it first if needed) and
    /// waits for its reply; `None` when the peer has no stream support
    /// (the caller falls back to a unary call). Any failure drops the
    /// stream, so a late reply can never be taken for the next request's.
    async fn over_stream(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<Option<PeerReply>, RpcErr> {
        let Some(mut c) = self.client.clone() else {
            return Err(unreachable("member has no peer URL"));
        };
        let msg = self.clients.message(rpc);
        if self.stream.as_ref().is_some_and(|s| s.awaiting) {
            self.stream = None;
        }
        if self.stream.is_none() {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let opened = tokio::time::timeout(
                ttl,
                c.append_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await;
            match opened {
                Err(_) => {
                    self.stats.failed(0);
                    return Err(no_answer(ttl));
                }
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        target = self.target,
                        "peer has no append stream; unary appends"
                    );
                    self.no_stream = true;
                    return Ok(None);
                }
                Ok(Err(s)) => {
                    self.stats.failed(0);
                    return Err(refused(&s));
                }
                Ok(Ok(r)) => {
                    self.stream = Some(AppendStream {
                        tx,
                        rx: r.into_inner(),
                        awaiting: false,
                    })
                }
            }
        }
        let Some(st) = self.stream.as_mut() else {
            return Ok(None);
        };
        st.awaiting = true;
        let bytes = msg.payload.len();
        let sent = st.tx.send(msg).await.is_ok();
        let got = if sent {
            tokio::time::timeout(ttl, st.rx.message()).await
        } else {
            Ok(Ok(None))
        };
        if !matches!(got, Ok(Ok(Some(_)))) {
            self.stats.failed(bytes);
        }
        match got {
            Ok(Ok(Some(reply))) => {
                st.awaiting = false;
                self.stats.answered(bytes, reply.payload.len());
                Ok(Some(reply))
            }
            Err(_) => {
                self.stream = None;
                Err(no_answer(ttl))
            }
            Ok(Err(s)) => {
                self.stream = None;
                Err(refused(&s))
            }
            Ok(Ok(None)) => {
                self.stream = None;
                Err(unreachable("append stream closed by the peer"))
            }
        }
    }
}

/// A peer that answered with an error status (a format or cluster
/// mismatch is logged) or could not be reached.
fn refused<E: std::error::Error>(s: &Status) -> RpcErr<E> {
    log_mismatch(s);
    RPCError::Unreachable(Unreachable::new(s))
}

fn unreachable<E: std::error::Error>(why: &'static str) -> RpcErr<E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(why)))
}

fn no_answer<E: std::error::Error>(ttl: Duration) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&AnyError::error(format!(
        "no answer in {ttl:?}"
    ))))
}

impl PeerConn {
    /// One append on the stream, or unary when the peer has none.
    async fn send_append(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        if !self.no_stream
            && let Some(reply) = self.over_stream(rpc, ttl).await?
        {
            return self.answer(&reply);
        }
        self.call(
            rpc,
            ttl,
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    /// The leader counts itself in the quorum before its own fsync (see
    /// `raft/log_store/`), so a commit index may run ahead of what it holds
    /// durably. A follower applies whatever it is told is committed, so
    /// it is told at most what this leader has synced: first a short
    /// wait for the sync in progress (it nearly always finishes first),
    /// then, if the disk is slow, the synced part only (the rest follows
    /// with the next request).
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        if let Some(c) = rpc.leader_commit {
            let durable = self.log.durability();
            if !durable.covers(c.index) {
                let wait = (option.hard_ttl() / 4).min(Duration::from_millis(20));
                let ok = tokio::time::timeout(wait, durable.wait(c.index)).await;
                if !matches!(ok, Ok(Ok(()))) {
                    rpc.leader_commit = durable
                        .synced_index()
                        .map(|s| s.min(c.index))
                        .and_then(|s| self.log.log_id_at(s));
                }
            }
        }
        let ttl = option.hard_ttl();
        // A heartbeat (no entries) makes the follower touch no disk: its
        // round trip is etcd's peer round-trip time.
        let heartbeat = rpc.entries.is_empty();
        let started = std::time::Instant::now();
        let r = self.send_append(&rpc, ttl).await;
        if heartbeat {
            match &r {
                Ok(_) => self.stats.rtt.since(started),
                Err(_) => {
                    let n = &self.clients.stats.heartbeat_failures;
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.install_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }
}
