//! One store member: a [`Store`] handle over openraft (`raft/cluster.rs`),
//! the raft log (`raft/log_store/`), the replicated state machine
//! (`raft/sm/`), the proposer's batching (`proposer.rs`) and the peer
//! transport (`raft/peer.rs`).
//! A store started without `--initial-cluster` is a one-member cluster:
//! the same code path as three or five members.
//!
//! ```text
//!  put/txn/... ──validate──> Proposer ──batch──> leader? raft.client_write
//!                                               : forward to the leader (peer)
//!  raft: append (fsync) ─> replicate ─> commit ─> sm.apply on EVERY member
//!                                                  ├─> publish MvccState ──> reads
//!                                                  └─> hub.publish ──> watch streams
//!  linearizable read ──> read index (leader: quorum heartbeat) ──> wait applied ──> local read
//!  serializable read ──> local published state
//!  leader only: lease expiry, auto-compaction  (background.rs)
//! ```

mod background;
pub(crate) mod members;
pub(crate) mod proposer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lookout_proto::pb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use redb::{Database, ReadableDatabase};

use crate::auth::AuthInfo;
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::mvcc::backend::{self, KV};
use crate::mvcc::hub::Hub;
use crate::mvcc::request::{Reply, Request, Response};
use crate::mvcc::state::MvccState;
use crate::mvcc::validate;
use crate::raft::cluster;
use crate::raft::log_store::LogStore;
use crate::raft::peer::{Forward, ForwardError, ForwardOk, Network, PeerClients};
use crate::raft::sm::{Shared, StateMachine};
use crate::raft::type_config::{Batch, MemberNode, NodeId, Raft};
use crate::store::proposer::Proposer;

/// Version reported by Maintenance Status: etcd 3.4's API.
pub const VERSION: &str = "3.4.0";

/// Shared by every clone of [`Store`].
pub(crate) struct Inner {
    pub cfg: StoreConfig,
    pub member_id: NodeId,
    pub cluster_id: u64,
    pub shared: Arc<Shared>,
    pub raft: Raft,
    pub log: LogStore,
    pub peers: Arc<PeerClients>,
    pub proposer: Arc<Proposer>,
    /// Raft term and leader as last seen in openraft's metrics (kept in
    /// atomics so every response header reads them without a lock).
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub closed: AtomicBool,
    /// This member's tokens (shared with the state machine, which records
    /// the simple tokens applied Authenticates issue).
    pub tokens: Arc<crate::auth::Tokens>,
}

/// Handle to a running store member. Cheap to clone; every method is safe
/// to call from many tasks at once.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.inner.cfg.name)
            .field("member_id", &format_args!("{:x}", self.inner.member_id))
            .field("revision", &self.revision())
            .finish()
    }
}

fn raft_config(cfg: &StoreConfig) -> Result<openraft::Config> {
    let hb = cfg.heartbeat_interval.as_millis().max(1) as u64;
    let et = cfg.election_timeout.as_millis().max(2) as u64;
    let c = openraft::Config {
        cluster_name: cfg.cluster_token.clone(),
        heartbeat_interval: hb,
        // A follower of a live leader campaigns only after the leader's
        // lease (= election_timeout_max) plus one election timeout without
        // hearing from it, and refuses votes during the lease. Half the
        // flag for each makes `--election-timeout` what it is in etcd: how
        // long followers wait before campaigning. The range is narrow
        // because a wide one only makes the first candidate fail the lease
        // and retry later; candidates still fire at different moments, as
        // each checks its timer on its own unsynchronised tick.
        election_timeout_min: (et / 2).max(2),
        election_timeout_max: (et / 2).max(2) + 1,
        install_snapshot_timeout: (et * 2).max(1000),
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_count.max(1)),
        snapshot_max_chunk_size: 1 << 20,
        max_in_snapshot_log_to_keep: cfg.snapshot_catchup_entries,
        purge_batch_size: 256,
        replication_lag_threshold: cfg.snapshot_count.max(1),
        ..Default::default()
    };
    c.validate()
        .map_err(|e| Error::Internal(format!("raft configuration: {e}")))
}

/// The store behind a background task's weak handle, unless it is gone
/// or closed: the task's cue to stop.
pub(crate) fn upgrade(w: &std::sync::Weak<Inner>) -> Option<Store> {
    let inner = w.upgrade()?;
    if inner.closed.load(Ordering::Relaxed) {
        return None;
    }
    Some(Store { inner })
}

impl Store {
    /// Opens the member's files in `cfg.data_dir`, rebuilds the in-memory
    /// index, starts raft (bootstrapping a new cluster when the data dir is
    /// fresh and `initial_cluster_new`), and the leader-side background
    /// tasks. Every lease gets a fresh TTL, as after an etcd restart.
    /// Must run inside a tokio runtime; does not wait for a leader.
    ///
    /// # Errors
    /// The data dir or redb files cannot be opened or read, or the flags
    /// make no valid raft configuration.
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        // Raft::new only awaits this store's own storage calls, so it can
        // be driven here without the runtime's help (tests call `open`
        // from current-thread runtimes).
        let store = futures::executor::block_on(Self::build(cfg))?;
        store.start_background();
        Ok(store)
    }

    /// [`Store::open`] for async callers.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn start(cfg: StoreConfig) -> Result<Store> {
        let store = Self::build(cfg).await?;
        store.start_background();
        Ok(store)
    }

    async fn build(mut cfg: StoreConfig) -> Result<Store> {
        let rcfg = Arc::new(raft_config(&cfg)?);
        let member_id = cluster::member_id(&cfg.peer_urls, &cfg.cluster_token);
        let cluster_id = cluster::derive_id("cluster", &[&cfg.cluster_token]);
        cfg.auth.bcrypt_cost = crate::auth::effective_cost(cfg.auth.bcrypt_cost);
        let tokens = Arc::new(crate::auth::Tokens::new(cfg.auth.clone()));
        let shared = Shared::open_with(&cfg.data_dir, tokens.clone())?;
        let log = LogStore::open(&cfg.data_dir, member_id, shared.clone())?;
        let peers = Arc::new(PeerClients::new(cluster_id, cfg.peer_tls.clone()));
        let sm = StateMachine {
            shared: shared.clone(),
            durable: log.durability(),
        };
        let raft = Raft::new(
            member_id,
            rcfg,
            Network {
                clients: peers.clone(),
                log: log.clone(),
            },
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| Error::Internal(format!("raft: {e}")))?;
        {
            let st = shared.state.load();
            tracing::info!(
                data_dir = %cfg.data_dir.display(),
                member = %format!("{member_id:x}"),
                revision = st.rev,
                compact_revision = st.compact_rev,
                applied_index = st.applied_index,
                keys = st.keys.len(),
                leases = st.leases.len(),
                "store opened"
            );
        }
        Ok(Store {
            inner: Arc::new(Inner {
                cfg,
                member_id,
                cluster_id,
                shared,
                raft,
                log,
                peers,
                proposer: Arc::new(Proposer::default()),
                term: AtomicU64::new(0),
                leader: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                tokens,
            }),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    pub fn member_id(&self) -> u64 {
        self.inner.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// The openraft handle (for the peer service and tests).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The last applied state (an O(1) snapshot).
    pub fn snapshot(&self) -> Arc<MvccState> {
        self.inner.shared.state.load_full()
    }

    /// Current store revision (as applied on this member).
    pub fn revision(&self) -> i64 {
        self.inner.shared.state.load().rev
    }

    /// Snapshots this member has installed from a leader.
    pub fn snapshots_installed(&self) -> u64 {
        self.inner
            .shared
            .snapshots_installed
            .load(Ordering::Relaxed)
    }

    /// The current leader's member ID, if one is known.
    pub fn leader_id(&self) -> Option<NodeId> {
        match self.inner.leader.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_id() == Some(self.inner.member_id)
    }

    pub(crate) fn db(&self) -> Arc<Database> {
        self.inner.shared.db()
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.inner.shared.hub
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    pub(crate) fn wal_stats(&self) -> &crate::metrics::WalStats {
        self.inner.log.wal_stats()
    }

    pub(crate) fn peer_metrics(&self) -> &crate::metrics::PeerMetrics {
        &self.inner.peers.stats
    }

    /// A response header for `rev` with this member's IDs and raft term.
    pub fn header(&self, rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.member_id,
            revision: rev,
            raft_term: self.inner.term.load(Ordering::Relaxed),
        })
    }

    pub(crate) fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = self.header(rev);
    }

    fn check_size<M: Message>(&self, m: &M) -> Result<()> {
        if m.encoded_len() > self.inner.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        Ok(())
    }

    // === proposing ===

    /// Proposes one write through raft and waits until this member has
    /// applied it (so a read that follows sees it).
    ///
    /// # Errors
    /// [`Error::NoLeader`] or [`Error::Timeout`] when it cannot be
    /// committed in time, [`Error::Stopped`] after `close`; etcd's answer
    /// for the request itself is inside [`Reply::response`].
    pub async fn propose(&self, req: Request) -> Result<Reply> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        let m = &self.inner.shared.metrics;
        let _pending = crate::metrics::Pending::new(&m.proposals_pending);
        let reply = async {
            let reply = self.inner.proposer.propose(self, req).await?;
            // A follower gets its answer from the leader, possibly before it
            // applied the entry itself: wait, so read-your-writes holds here.
            self.wait_applied_rev(reply.revision).await?;
            Ok(reply)
        }
        .await;
        if reply.is_err() {
            m.proposals_failed.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    async fn wait_applied_rev(&self, rev: i64) -> Result<()> {
        if self.revision() >= rev {
            return Ok(());
        }
        let deadline = Instant::now() + self.inner.cfg.request_timeout();
        let mut m = self.inner.raft.metrics();
        while self.revision() < rev {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            // Applies publish metrics after the state, so a change wakes us.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), m.changed()).await;
        }
        Ok(())
    }

    /// Waits (until `deadline`) for a known leader.
    async fn wait_leader(&self, deadline: Instant) -> Result<(NodeId, MemberNode)> {
        let mut m = self.inner.raft.metrics();
        loop {
            if self.inner.closed.load(Ordering::Relaxed) {
                return Err(Error::Stopped);
            }
            {
                let cur = m.borrow_and_update();
                if let Some(l) = cur.current_leader
                    && let Some(node) = cur.membership_config.membership().get_node(&l)
                {
                    return Ok((l, node.clone()));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::NoLeader);
            }
            let _ = tokio::time::timeout(left, m.changed()).await;
        }
    }

    /// Sends `f` to the leader (or handles it here when this member is
    /// the leader), retrying while that is safe, until the request timeout.
    pub(crate) async fn to_leader(&self, f: Forward) -> Result<ForwardOk> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout();
        loop {
            let (leader, node) = self.wait_leader(deadline).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            let res = if leader == self.inner.member_id {
                match self.handle_forward(f.clone()).await {
                    Err(Error::NotLeader) => Err(ForwardError::Retry),
                    Err(e) => Err(ForwardError::Answer(e)),
                    Ok(ok) => Ok(ok),
                }
            } else {
                self.inner.peers.forward(leader, &node, &f, left).await
            };
            match res {
                Ok(ok) => return Ok(ok),
                Err(ForwardError::Answer(e)) => return Err(e),
                Err(ForwardError::Unknown) => return Err(Error::Timeout),
                Err(ForwardError::Retry) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Timeout);
                    }
                    // Give the election (or the metrics) a moment to move.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Proposes one batch (called by the proposer): as one raft entry
    /// when this member leads, else forwarded to the leader (whose own
    /// proposer merges it with its queue).
    pub(crate) async fn submit(&self, reqs: Vec<Request>) -> Result<Vec<Result<Reply>>> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout();
        loop {
            let (leader, node) = self.wait_leader(deadline).await?;
            let res = if leader == self.inner.member_id {
                match self.write_local(reqs.clone()).await {
                    Ok(r) => Ok(ForwardOk::Replies(r.into_iter().map(Ok).collect())),
                    Err(Error::NotLeader) => Err(ForwardError::Retry),
                    Err(e) => Err(ForwardError::Answer(e)),
                }
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                self.inner
                    .peers
                    .forward(leader, &node, &Forward::Propose(reqs.clone()), left)
                    .await
            };
            match res {
                Ok(ForwardOk::Replies(r)) => return Ok(r),
                Ok(other) => return Err(Error::Internal(format!("unexpected answer {other:?}"))),
                Err(ForwardError::Answer(e)) => return Err(e),
                Err(ForwardError::Unknown) => return Err(Error::Timeout),
                Err(ForwardError::Retry) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Timeout);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The leader's side of a proposal: one raft entry.
    pub(crate) async fn write_local(&self, reqs: Vec<Request>) -> Result<Vec<Reply>> {
        let write = self.inner.raft.client_write(Batch(reqs));
        match tokio::time::timeout(self.inner.cfg.request_timeout(), write).await {
            Err(_) => Err(Error::Timeout),
            Ok(Ok(resp)) => Ok(resp.data.0),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(Error::NotLeader)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(Error::Internal(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(_))) => Err(Error::Stopped),
        }
    }

    /// Makes a linearizable read safe: confirms the leader's read index
    /// with a quorum and waits until this member applied up to it.
    ///
    /// # Errors
    /// No leader or timeout.
    pub async fn read_index(&self) -> Result<()> {
        let r = self.read_index_inner().await;
        if let Err(e) = &r {
            let m = &self.inner.shared.metrics;
            m.read_indexes_failed.fetch_add(1, Ordering::Relaxed);
            if matches!(e, Error::Timeout) {
                m.slow_read_indexes.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    async fn read_index_inner(&self) -> Result<()> {
        let index = match self.to_leader(Forward::ReadIndex).await? {
            ForwardOk::Index(i) => i,
            other => return Err(Error::Internal(format!("unexpected answer {other:?}"))),
        };
        if self.snapshot().applied_index >= index {
            return Ok(());
        }
        self.inner
            .raft
            .wait(Some(self.inner.cfg.request_timeout()))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map_err(|_| Error::Timeout)?;
        Ok(())
    }

    /// The leader's read index (only valid on the leader).
    pub(crate) async fn read_index_local(&self) -> Result<u64> {
        match self.inner.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(_)) => Err(Error::NotLeader),
            Err(RaftError::Fatal(_)) => Err(Error::Stopped),
        }
    }

    /// The NOSPACE quota check etcd makes before proposing a write that
    /// grows the store: over quota raises the alarm and refuses.
    pub(crate) async fn check_quota(&self, cost: usize) -> Result<()> {
        if self.snapshot().nospace() {
            return Err(Error::NoSpace);
        }
        let quota = self.inner.cfg.quota_backend_bytes;
        if quota == u64::MAX {
            return Ok(());
        }
        let size = self.db_size();
        if size.saturating_add(cost as u64) > quota {
            tracing::warn!(size, quota, "backend quota exceeded; raising NOSPACE");
            let _ = self
                .propose(Request::Alarm {
                    activate: true,
                    member: self.inner.member_id,
                    alarm: crate::mvcc::state::ALARM_NOSPACE,
                })
                .await;
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Size of the MVCC file in bytes.
    pub fn db_size(&self) -> u64 {
        std::fs::metadata(self.inner.cfg.data_dir.join("lookout.redb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    // === KV ===

    /// # Errors
    /// Empty key, future or compacted revision, no leader or timeout (for
    /// a linearizable read), storage failure.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.range_as(None, req).await
    }

    /// [`Store::range`] as `who` (etcd's `doSerialize`): read permission
    /// on the range, checked against the auth state of the very snapshot
    /// the read is served from; a token older than that state is refused
    /// with etcd's "revision of auth store is old".
    ///
    /// # Errors
    /// As [`Store::range`], plus the permission check's.
    pub async fn range_as(
        &self,
        who: Option<&AuthInfo>,
        req: RangeRequest,
    ) -> Result<RangeResponse> {
        validate::check_range(&req)?;
        self.count_range();
        if !req.serializable {
            self.read_index().await?;
        }
        let st = self.snapshot();
        Self::read_permitted(&st, who, &req)?;
        self.range_local(&st, &req)
    }

    fn count_range(&self) {
        let m = &self.inner.shared.metrics;
        m.ranges.fetch_add(1, Ordering::Relaxed);
    }

    fn read_permitted(st: &MvccState, who: Option<&AuthInfo>, req: &RangeRequest) -> Result<()> {
        crate::auth::check_range(&st.auth, who, &req.key, &req.range_end)?;
        if let Some(w) = who
            && w.revision != 0
            && w.revision != st.auth.revision
        {
            return Err(Error::AuthOldRevision);
        }
        Ok(())
    }

    fn range_local(&self, st: &Arc<MvccState>, req: &RangeRequest) -> Result<RangeResponse> {
        let res = if req.revision <= 0 || req.revision == st.rev {
            st.range(req, &mut |_| Ok(None))?
        } else {
            // Historic: one read transaction for every record.
            let db = self.db();
            let tx = db.begin_read()?;
            let kv = tx.open_table(KV)?;
            st.range(req, &mut |rev| backend::read_rev(&kv, rev))?
        };
        // etcd's header is the store's current revision, even for a read
        // at an older one.
        Ok(RangeResponse {
            header: self.header(st.rev),
            kvs: res.kvs,
            more: res.more,
            count: res.count,
        })
    }

    /// [`Store::range`], answered as the protobuf encoding of the
    /// `RangeResponse`: current-revision reads copy each pair's stored
    /// encoding instead of re-encoding it (see `mvcc/encode.rs`).
    ///
    /// # Errors
    /// As [`Store::range`].
    pub async fn range_encoded(&self, req: RangeRequest) -> Result<bytes::Bytes> {
        self.range_encoded_as(None, req).await
    }

    /// [`Store::range_encoded`] as `who` (see [`Store::range_as`]).
    ///
    /// # Errors
    /// As [`Store::range_as`].
    pub async fn range_encoded_as(
        &self,
        who: Option<&AuthInfo>,
        req: RangeRequest,
    ) -> Result<bytes::Bytes> {
        validate::check_range(&req)?;
        self.count_range();
        if !req.serializable {
            self.read_index().await?;
        }
        let st = self.snapshot();
        Self::read_permitted(&st, who, &req)?;
        if crate::mvcc::encode::fast_path(&req, &st) {
            let header = self.header(st.rev).unwrap_or_default();
            return Ok(crate::mvcc::encode::current_range(&req, &st, &header));
        }
        Ok(self.range_local(&st, &req)?.encode_to_vec().into())
    }

    /// # Errors
    /// See [`validate::check_put`], lease not found, no space, storage
    /// failure, no leader or timeout.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        self.put_as(None, req).await
    }

    /// [`Store::put`] as `who`: every member's apply checks write
    /// permission (and the lease's keys, and read for `prev_kv`).
    ///
    /// # Errors
    /// As [`Store::put`], plus the permission check's.
    pub async fn put_as(&self, who: Option<&AuthInfo>, req: PutRequest) -> Result<PutResponse> {
        validate::check_put(&req)?;
        self.check_size(&req)?;
        self.check_quota(req.encoded_len()).await?;
        match self
            .propose(self.wrap(who, Request::Put(req)))
            .await?
            .response?
        {
            Response::Put(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// # Errors
    /// Empty key, storage failure, no leader or timeout.
    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.delete_range_as(None, req).await
    }

    /// [`Store::delete_range`] as `who` (checked at apply).
    ///
    /// # Errors
    /// As [`Store::delete_range`], plus the permission check's.
    pub async fn delete_range_as(
        &self,
        who: Option<&AuthInfo>,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        validate::check_delete(&req)?;
        self.check_size(&req)?;
        match self
            .propose(self.wrap(who, Request::DeleteRange(req)))
            .await?
            .response?
        {
            Response::DeleteRange(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// # Errors
    /// Too many ops, duplicate keys, a failing nested request, no space,
    /// storage, no leader or timeout.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        self.txn_as(None, req).await
    }

    /// [`Store::txn`] as `who`: the apply checks every compare and every
    /// operation of both branches, nested txns included.
    ///
    /// # Errors
    /// As [`Store::txn`], plus the permission check's.
    pub async fn txn_as(&self, who: Option<&AuthInfo>, req: TxnRequest) -> Result<TxnResponse> {
        validate::check_txn(&req, self.inner.cfg.max_txn_ops)?;
        self.check_size(&req)?;
        let r = Request::Txn(req);
        if r.grows_store()
            && let Request::Txn(t) = &r
        {
            self.check_quota(t.encoded_len()).await?;
        }
        match self.propose(self.wrap(who, r)).await?.response? {
            Response::Txn(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Physical compaction; returns once this member dropped the data.
    ///
    /// # Errors
    /// Compacted or future revision, storage failure, no leader or timeout.
    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        match self
            .propose(Request::Compact {
                revision: req.revision,
            })
            .await?
            .response?
        {
            Response::Compact(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Stops raft and refuses new proposals; makes every apply durable so
    /// the next start replays nothing. Every clone answers
    /// [`Error::Stopped`] afterwards. Blocking; safe from a multi-thread
    /// runtime's worker (it blocks in place) and from plain threads.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let raft = self.inner.raft.clone();
        let stop_raft = move || {
            let _ = futures::executor::block_on(raft.shutdown());
        };
        // Raft's core task runs on the caller's runtime when there is one:
        // blocking a worker thread in place (its queued tasks handed to
        // another worker) lets that task finish instead of deadlocking.
        // A current-thread runtime cannot run it while we block, so there
        // shutdown is only started; the final sync below still runs.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(stop_raft)
            }
            Ok(h) => {
                let raft = self.inner.raft.clone();
                h.spawn(async move {
                    let _ = raft.shutdown().await;
                });
            }
            Err(_) => stop_raft(),
        }
        self.inner.log.stop();
        let _file = self.inner.shared.file_lock.lock();
        if let Ok(tx) = self.db().begin_write()
            && let Err(e) = tx.commit()
        {
            tracing::warn!(error = %e, "final sync of the store failed");
        }
    }
}

pub(crate) fn unexpected(r: Response) -> Error {
    Error::Storage(format!("unexpected response kind: {r:?}"))
}
