//! The single-node store: a [`Store`] handle over the group-committing
//! writer (`writer.rs`), the published in-memory snapshot that reads use, the watch
//! hub, and the lessor's clock.
//!
//! ```text
//!  put/txn/... ──validate──> Writer (one fsynced redb commit per batch)
//!                              ├─> publish snapshot ──> range/status readers
//!                              ├─> hub.publish(events) ──> watch streams
//!                              └─> answer every request of the batch
//!  lessor tick ──expired lease──> LeaseRevoke proposal
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use lookout_proto::pb::{
    AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    HashKvResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, Member, MemberListResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, StatusResponse, TxnRequest, TxnResponse, WatchRequest,
    WatchResponse,
};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTableMetadata};
use sha2::Digest;
use tokio::sync::mpsc;

use crate::apply::Applied;
use crate::backend::{self, KV, LEASES};
use crate::config::{MAX_LEASE_TTL, StoreConfig};
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::request::{Request, Response};
use crate::state::MvccState;
use crate::validate;
use crate::writer::Writer;

/// Version reported by Maintenance Status: etcd 3.4's API.
pub const VERSION: &str = "3.4.0";
/// How often the lessor looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Shared by every clone of [`Store`].
struct Inner {
    cfg: StoreConfig,
    db: Arc<Database>,
    /// The last committed state; swapped whole by the writer.
    state: Arc<ArcSwap<MvccState>>,
    hub: Arc<Hub>,
    writer: Arc<Writer>,
    /// Lease expiry deadlines: proposer-side clock, never part of `apply`.
    // A std Mutex: short map operations, never held across an await.
    expiry: std::sync::Mutex<HashMap<i64, Instant>>,
    member_id: u64,
    cluster_id: u64,
}

/// Handle to a running store node. Cheap to clone; every method is safe
/// to call from many tasks at once.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.inner.cfg.name)
            .field("member_id", &format_args!("{:x}", self.inner.member_id))
            .field("revision", &self.inner.state.load().rev)
            .finish()
    }
}

/// Deterministic 64-bit ID from a label and strings (etcd derives member
/// IDs from URLs and cluster IDs from member IDs the same way).
fn derive_id(label: &str, parts: &[&str]) -> u64 {
    let mut h = sha2::Sha256::new();
    h.update(label.as_bytes());
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")).max(1)
}

impl Store {
    /// Opens the store in `cfg.data_dir`, rebuilds the in-memory index and
    /// starts the lease expiry task. Every lease gets
    /// a fresh TTL, as after an etcd restart. Must run inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// The data dir or redb file cannot be opened or read.
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        let db = Arc::new(backend::open_db(&cfg.data_dir)?);
        let state = backend::load_state(&db)?;
        let mut peer: Vec<&str> = cfg.peer_urls.iter().map(String::as_str).collect();
        peer.sort_unstable();
        let mut parts = vec![cfg.name.as_str()];
        parts.extend(peer);
        let member_id = derive_id("member", &parts);
        let cluster_id = derive_id("cluster", &[&format!("{member_id:x}")]);
        let now = Instant::now();
        let expiry = state
            .leases
            .values()
            .map(|l| (l.id, now + Duration::from_secs(l.ttl as u64)))
            .collect();
        tracing::info!(
            data_dir = %cfg.data_dir.display(),
            revision = state.rev,
            compact_revision = state.compact_rev,
            keys = state.keys.len(),
            leases = state.leases.len(),
            "store opened"
        );
        let hub = Arc::new(Hub::new(state.rev));
        let state = Arc::new(ArcSwap::from_pointee(state));
        let writer = Arc::new(Writer::new(db.clone(), state.clone(), hub.clone()));
        let store = Store {
            inner: Arc::new(Inner {
                cfg,
                db,
                state,
                hub,
                writer,
                expiry: std::sync::Mutex::new(expiry),
                member_id,
                cluster_id,
            }),
        };
        tokio::spawn(expiry_loop(Arc::downgrade(&store.inner)));
        Ok(store)
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

    /// The last committed state (an O(1) snapshot).
    pub fn snapshot(&self) -> Arc<MvccState> {
        self.inner.state.load_full()
    }

    /// Current store revision.
    pub fn revision(&self) -> i64 {
        self.inner.state.load().rev
    }

    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// A response header for `rev` with this member's IDs.
    pub fn header(&self, rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.member_id,
            revision: rev,
            raft_term: 1,
        })
    }

    fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = self.header(rev);
    }

    fn check_size<M: Message>(&self, m: &M) -> Result<()> {
        if m.encoded_len() > self.inner.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        Ok(())
    }

    /// Proposes one write and waits until it is durable.
    ///
    /// # Errors
    /// etcd's answer for the request, [`Error::Stopped`] when the writer is
    /// gone, or a storage failure.
    pub async fn propose(&self, req: Request) -> Result<Applied> {
        self.inner.writer.propose(req).await
    }

    // === KV ===

    /// # Errors
    /// Empty key, future or compacted revision, storage failure.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        validate::check_range(&req)?;
        let st = self.snapshot();
        let res = if req.revision <= 0 || req.revision == st.rev {
            st.range(&req, &mut |_| Ok(None))?
        } else {
            // Historic: one read transaction for every record.
            let tx = self.inner.db.begin_read()?;
            let kv = tx.open_table(KV)?;
            st.range(&req, &mut |rev| backend::read_rev(&kv, rev))?
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
    /// encoding instead of re-encoding it (see [`crate::encode`]).
    ///
    /// # Errors
    /// As [`Store::range`].
    pub async fn range_encoded(&self, req: RangeRequest) -> Result<bytes::Bytes> {
        validate::check_range(&req)?;
        let st = self.snapshot();
        if crate::encode::fast_path(&req, &st) {
            let header = self.header(st.rev).unwrap_or_default();
            return Ok(crate::encode::current_range(&req, &st, &header));
        }
        Ok(self.range(req).await?.encode_to_vec().into())
    }

    /// # Errors
    /// See [`validate::check_put`], lease not found, storage failure.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        validate::check_put(&req)?;
        self.check_size(&req)?;
        match self.propose(Request::Put(req)).await?.response? {
            Response::Put(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// # Errors
    /// Empty key, storage failure.
    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        validate::check_delete(&req)?;
        self.check_size(&req)?;
        match self.propose(Request::DeleteRange(req)).await?.response? {
            Response::DeleteRange(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// # Errors
    /// Too many ops, duplicate keys, a failing nested request, storage.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        validate::check_txn(&req, self.inner.cfg.max_txn_ops)?;
        self.check_size(&req)?;
        match self.propose(Request::Txn(req)).await?.response? {
            Response::Txn(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Physical compaction; returns once the data is gone from redb.
    ///
    /// # Errors
    /// Compacted or future revision, storage failure.
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

    // === Lease ===

    /// # Errors
    /// TTL too large, ID already in use, storage failure.
    pub async fn lease_grant(&self, req: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        let ttl = req.ttl.max(self.inner.cfg.min_lease_ttl);
        let id = if req.id != 0 {
            req.id
        } else {
            let st = self.snapshot();
            loop {
                let id = rand::random::<i64>() & i64::MAX;
                if id != 0 && !st.leases.contains_key(&id) {
                    break id;
                }
            }
        };
        match self
            .propose(Request::LeaseGrant { id, ttl })
            .await?
            .response?
        {
            Response::LeaseGrant(mut r) => {
                self.inner
                    .expiry
                    .lock()
                    .expect("expiry map")
                    .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Revokes a lease, deleting its keys in one revision.
    ///
    /// # Errors
    /// Lease not found, storage failure.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        match self.propose(Request::LeaseRevoke { id }).await?.response? {
            Response::LeaseRevoke(mut r) => {
                self.inner.expiry.lock().expect("expiry map").remove(&id);
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// One keep-alive: renews the lease to its full TTL. An unknown lease
    /// answers TTL 0, as etcd does.
    pub async fn lease_keep_alive(&self, id: i64) -> LeaseKeepAliveResponse {
        let st = self.snapshot();
        let mut exp = self.inner.expiry.lock().expect("expiry map");
        let ttl = match (st.leases.get(&id), exp.get_mut(&id)) {
            (Some(l), Some(deadline)) => {
                *deadline = Instant::now() + Duration::from_secs(l.ttl as u64);
                l.ttl
            }
            _ => 0,
        };
        LeaseKeepAliveResponse {
            header: self.header(st.rev),
            id,
            ttl,
        }
    }

    /// Remaining TTL (whole seconds, rounded down) and optionally the keys;
    /// an unknown lease answers TTL -1, as etcd 3.4.
    pub async fn lease_time_to_live(&self, req: LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse {
        let st = self.snapshot();
        let Some(l) = st.leases.get(&req.id) else {
            return LeaseTimeToLiveResponse {
                header: self.header(st.rev),
                id: req.id,
                ttl: -1,
                ..Default::default()
            };
        };
        let remaining = self
            .inner
            .expiry
            .lock()
            .expect("expiry map")
            .get(&req.id)
            .map_or(0, |d| {
                d.saturating_duration_since(Instant::now()).as_secs() as i64
            });
        LeaseTimeToLiveResponse {
            header: self.header(st.rev),
            id: req.id,
            ttl: remaining,
            granted_ttl: l.ttl,
            keys: if req.keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }

    pub async fn lease_leases(&self) -> LeaseLeasesResponse {
        let st = self.snapshot();
        LeaseLeasesResponse {
            header: self.header(st.rev),
            leases: st.leases.keys().map(|&id| LeaseStatus { id }).collect(),
        }
    }

    // === Watch ===

    /// Serves one watch stream: `requests` are the client's messages, the
    /// returned channel yields responses until the client goes away.
    pub fn watch<S>(&self, requests: S) -> mpsc::Receiver<Result<WatchResponse>>
    where
        S: futures::Stream<Item = WatchRequest> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(crate::watch::run_stream(self.clone(), requests, tx));
        rx
    }

    // === Maintenance and Cluster ===

    /// # Errors
    /// Storage failure while measuring the file.
    pub async fn status(&self) -> Result<StatusResponse> {
        let st = self.snapshot();
        let path = self.inner.cfg.data_dir.join("lookout.redb");
        let db_size = std::fs::metadata(&path)
            .map(|m| m.len() as i64)
            .unwrap_or(0);
        let tx = self.inner.db.begin_read()?;
        let mut in_use = 0u64;
        {
            let s = tx.open_table(KV)?.stats()?;
            in_use += s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
            let s = tx.open_table(LEASES)?.stats()?;
            in_use += s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
        }
        Ok(StatusResponse {
            header: self.header(st.rev),
            version: VERSION.into(),
            db_size,
            leader: self.inner.member_id,
            raft_index: st.applied_index,
            raft_term: 1,
            raft_applied_index: st.applied_index,
            errors: Vec::new(),
            db_size_in_use: (in_use as i64).min(db_size),
            is_learner: false,
        })
    }

    /// CRC-32 over every MVCC record up to `revision` (0 = current).
    ///
    /// # Errors
    /// Future or compacted revision, storage failure.
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        let st = self.snapshot();
        let rev = st.read_rev(revision)?;
        let tx = self.inner.db.begin_read()?;
        let kv = tx.open_table(KV)?;
        let mut h = crc32fast::Hasher::new();
        for row in kv.range(..=crate::revision::Revision::last_key(rev))? {
            let (k, v) = row?;
            h.update(&k.value().to_be_bytes());
            h.update(v.value());
        }
        Ok(HashKvResponse {
            header: self.header(st.rev),
            hash: h.finalize(),
            compact_revision: st.compact_rev,
        })
    }

    pub async fn alarm(&self) -> AlarmResponse {
        AlarmResponse {
            header: self.header(self.revision()),
            alarms: Vec::new(),
        }
    }

    /// This member as the Cluster API lists it.
    pub fn member(&self) -> Member {
        Member {
            id: self.inner.member_id,
            name: self.inner.cfg.name.clone(),
            peer_ur_ls: self.inner.cfg.peer_urls.clone(),
            client_ur_ls: self.inner.cfg.client_urls.clone(),
            is_learner: false,
        }
    }

    pub async fn member_list(&self) -> MemberListResponse {
        MemberListResponse {
            header: self.header(self.revision()),
            members: vec![self.member()],
        }
    }

    /// Stops accepting writes and waits for the batch being committed.
    /// Every clone answers [`Error::Stopped`] afterwards.
    pub fn close(&self) {
        self.inner.writer.close();
    }
}

fn unexpected(r: Response) -> Error {
    Error::Storage(format!("unexpected response kind: {r:?}"))
}

/// Proposes a revoke for every lease past its deadline.
async fn expiry_loop(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let store = Store { inner };
        let now = Instant::now();
        let due: Vec<i64> = {
            let mut exp = store.inner.expiry.lock().expect("expiry map");
            let due: Vec<i64> = exp
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(id, _)| *id)
                .collect();
            // Removed before proposing so a slow revoke is not proposed twice.
            for id in &due {
                exp.remove(id);
            }
            due
        };
        for id in due {
            match store.propose(Request::LeaseRevoke { id }).await {
                Ok(_) => tracing::debug!(lease = id, "lease expired"),
                Err(Error::Stopped) => return,
                Err(e) => {
                    tracing::warn!(lease = id, error = %e, "lease expiry failed; retrying");
                    store
                        .inner
                        .expiry
                        .lock()
                        .expect("expiry map")
                        .insert(id, Instant::now());
                }
            }
        }
        drop(store);
    }
}
