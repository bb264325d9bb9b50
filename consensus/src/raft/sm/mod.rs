//! The replicated state machine: openraft's [`RaftStateMachine`] over the
//! MVCC store file (`lookout.redb`), and snapshots as files.
//!
//! ```text
//!  committed entries ──> apply: clone MvccState, Applier::apply each Request,
//!                        one redb commit WITHOUT fsync (the raft log replays it),
//!                        overlapping the leader's own log fsync (see below)
//!                        ──> wait until the raft log has synced the entries
//!                        ──> publish state ──> hub.publish(events) (every member)
//!  build_snapshot: redb read txn ──stream rows──> snap/<id>.snap (+ crc, fsync)
//!  install_snapshot: received file ──stream rows──> one durable redb txn
//!                    ──> reload state ──> every live watcher re-reads history
//! ```
//!
//! The leader acknowledges its own appends to openraft before their fsync
//! (`raft/log_store/`), so an entry can be committed, and handed to `apply`,
//! while its fsync still runs. The apply's work (the MVCC writes and the
//! redb commit without fsync) runs meanwhile; only the effects anyone can
//! observe wait for the sync: the published state (reads, headers),
//! watch events, lease timers and the replies. Whatever reads redb itself
//! stays within what was published, or waits for the sync
//! ([`Shared::settle`], [`Shared::wait_synced`]) before it persists or
//! ships redb's contents: a durable redb commit (purge, defragment), a
//! raft snapshot, a backup.
//!
//! Applying is deterministic (no clock, no randomness), so every member
//! that applies the same log holds the same revisions and publishes the
//! same watch events in the same order. Nothing here ever holds a whole
//! snapshot in memory: rows stream between redb and the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use crate::error::Result;
use crate::mvcc::apply::Applier;
use crate::mvcc::backend::{self, ALARMS, KV, LEASES, MEMBERSHIP_KEY, RAFT_SM};
use crate::mvcc::hub::Hub;
use crate::mvcc::request::{Reply, Request, Response};
use crate::mvcc::state::MvccState;
use snapshot::{build, current_snapshot, install};

use crate::raft::type_config::{
    BatchReply, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Longest an apply polls for its log fsync before it sleeps on it.
const SYNC_SPIN: Duration = Duration::from_micros(200);
/// Largest apply (in requests) that polls for its fsync at all.
const SYNC_SPIN_MAX_REQUESTS: usize = 4;

/// What the store and the state machine share.
pub(crate) struct Shared {
    /// The data dir (holds `lookout.redb`, `raft-wal/`, `snap/`).
    pub dir: PathBuf,
    /// The MVCC file. Swappable so a defragment can replace the file
    /// while readers finish on the old one.
    pub db: ArcSwap<Database>,
    /// The last applied state; swapped whole after each apply commit.
    pub state: ArcSwap<MvccState>,
    pub hub: Arc<Hub>,
    /// The membership of the last applied membership entry.
    pub membership: ArcSwap<StoredMembership>,
    /// Lease deadlines (this member's clock; only the leader acts on them).
    // A std Mutex: short map operations, never held across an await.
    pub expiry: parking_lot::Mutex<HashMap<i64, Instant>>,
    /// Serialises whole-file operations (snapshot install, defragment)
    /// against applies. A std Mutex: held inside blocking sections only.
    pub file_lock: parking_lot::Mutex<()>,
    pub snapshots_installed: AtomicU64,
    pub snapshots_built: AtomicU64,
    /// The raft log's durability, set once the log is open: redb may hold
    /// applied entries the log has not synced yet (see the module doc).
    pub log_durable: std::sync::OnceLock<Arc<crate::raft::durability::Durability>>,
    /// This member's auth tokens: applied Authenticates add simple ones.
    pub tokens: Arc<crate::auth::Tokens>,
    /// etcd's counters and histograms of this member (`metrics/`).
    pub metrics: crate::metrics::StoreMetrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("dir", &self.dir).finish()
    }
}

impl Shared {
    /// Opens the MVCC file in `dir` and rebuilds the in-memory state.
    ///
    /// # Errors
    /// The file cannot be opened or read.
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        Self::open_with(dir, Arc::new(crate::auth::Tokens::new(Default::default())))
    }

    /// [`Shared::open`] with the member's token provider.
    ///
    /// # Errors
    /// As [`Shared::open`].
    pub fn open_with(dir: &Path, tokens: Arc<crate::auth::Tokens>) -> Result<Arc<Self>> {
        let db = backend::open_db(dir)?;
        let state = backend::load_state(&db)?;
        let membership = read_membership(&db)?;
        std::fs::create_dir_all(dir.join("snap"))?;
        let now = Instant::now();
        let expiry = state
            .leases
            .values()
            .map(|l| (l.id, crate::mvcc::state::LeaseState::deadline(now, l.ttl)))
            .collect();
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            hub: Arc::new(Hub::new(state.rev)),
            db: ArcSwap::from_pointee(db),
            state: ArcSwap::from_pointee(state),
            membership: ArcSwap::from_pointee(membership),
            expiry: parking_lot::Mutex::new(expiry),
            file_lock: parking_lot::Mutex::new(()),
            snapshots_installed: AtomicU64::new(0),
            snapshots_built: AtomicU64::new(0),
            log_durable: std::sync::OnceLock::new(),
            tokens,
            metrics: Default::default(),
        }))
    }

    pub fn db(&self) -> Arc<Database> {
        self.db.load_full()
    }

    /// Blocks until the raft log has synced every entry up to `index`
    /// that this member acknowledged before its fsync (at once on
    /// followers and when nothing is pending). For blocking sections only.
    ///
    /// # Errors
    /// The log writer failed: those entries will never be durable here.
    pub fn wait_synced(&self, index: u64) -> Result<()> {
        match self.log_durable.get() {
            Some(d) if !d.covers(index) => futures::executor::block_on(d.wait(index))
                .map_err(|e| crate::error::Error::Storage(e.to_string())),
            _ => Ok(()),
        }
    }

    /// With the file lock held (so no apply commits meanwhile): blocks
    /// until everything redb holds is synced in the raft log, so a durable
    /// redb commit cannot persist an entry the log could still lose.
    ///
    /// # Errors
    /// A redb failure, or the log writer failed.
    pub fn settle(&self) -> Result<()> {
        let tx = self.db().begin_read()?;
        let meta = backend::read_meta(&tx.open_table(KV)?)?;
        drop(tx);
        self.wait_synced(meta.applied_index)
    }

    /// Every lease gets a fresh full TTL (a new leader does this, as etcd).
    pub fn refresh_leases(&self) {
        let st = self.state.load();
        let now = Instant::now();
        let mut exp = self.expiry.lock();
        exp.clear();
        for l in st.leases.values() {
            exp.insert(l.id, crate::mvcc::state::LeaseState::deadline(now, l.ttl));
        }
    }
}

/// `etcd_disk_defrag_inflight` while alive; observes the duration on drop
/// (a failed defragment counts too, as in etcd).
struct DefragTimer<'a>(&'a crate::metrics::StoreMetrics, Instant);

impl<'a> DefragTimer<'a> {
    fn start(m: &'a crate::metrics::StoreMetrics) -> Self {
        m.defrag_inflight.fetch_add(1, Ordering::Relaxed);
        Self(m, Instant::now())
    }
}

impl Drop for DefragTimer<'_> {
    fn drop(&mut self) {
        self.0.backend_defrag.since(self.1);
        self.0.defrag_inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Rewrites the MVCC file compactly (etcd's defragment): every table is
/// copied into a fresh file, which atomically replaces the old one;
/// readers still on the old file finish there. Applies wait meanwhile.
pub(crate) fn defragment(sh: &Shared) -> Result<(u64, u64)> {
    let path = sh.dir.join("lookout.redb");
    let tmp = sh.dir.join("lookout.redb.defrag");
    let _file = sh.file_lock.lock();
    let _timer = DefragTimer::start(&sh.metrics);
    // The copy is committed durably: it must hold synced entries only.
    sh.settle()?;
    let before = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&tmp);
    let old = sh.db();
    let new = Database::create(&tmp)?;
    {
        let r = old.begin_read()?;
        let w = new.begin_write()?;
        {
            let mut kv = w.open_table(KV)?;
            for row in r.open_table(KV)?.iter()? {
                let (k, v) = row?;
                kv.insert(k.value(), v.value())?;
            }
            let mut leases = w.open_table(LEASES)?;
            for row in r.open_table(LEASES)?.iter()? {
                let (k, v) = row?;
                leases.insert(k.value(), v.value())?;
            }
            let mut alarms = w.open_table(ALARMS)?;
            for row in r.open_table(ALARMS)?.iter()? {
                let (k, v) = row?;
                alarms.insert(k.value(), v.value())?;
            }
            let mut raft_sm = w.open_table(RAFT_SM)?;
            for row in r.open_table(RAFT_SM)?.iter()? {
                let (k, v) = row?;
                raft_sm.insert(k.value(), v.value())?;
            }
            let mut auth = w.open_table(crate::auth::AUTH)?;
            for row in r.open_table(crate::auth::AUTH)?.iter()? {
                let (k, v) = row?;
                auth.insert(k.value(), v.value())?;
            }
        }
        w.commit()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(&sh.dir) {
        let _ = d.sync_all();
    }
    sh.db.store(Arc::new(new));
    let after = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(before, after, "defragmented");
    Ok((before, after))
}

fn read_membership(db: &Database) -> Result<StoredMembership> {
    let tx = db.begin_read()?;
    let t = tx.open_table(RAFT_SM)?;
    Ok(match t.get(MEMBERSHIP_KEY)? {
        Some(v) => bincode::deserialize(v.value())
            .map_err(|e| crate::error::Error::Storage(e.to_string()))?,
        None => StoredMembership::default(),
    })
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

/// openraft's state machine handle.
#[derive(Debug, Clone)]
pub(crate) struct StateMachine {
    pub shared: Arc<Shared>,
    /// The raft log's durability: entries the leader acknowledged before
    /// their fsync are applied only once synced (see `raft/log_store/`).
    pub durable: Arc<crate::raft::durability::Durability>,
}

/// An apply written to redb but not yet visible (see the module doc).
struct Prepared {
    state: MvccState,
    replies: Vec<BatchReply>,
    /// (revision, its events), for the hub.
    events: Vec<(i64, Vec<lookout_proto::mvccpb::Event>)>,
    membership: Option<StoredMembership>,
    /// Granted (with TTL) or revoked leases, for the expiry timers.
    leases: Vec<(i64, Option<i64>)>,
    /// Simple tokens issued or revoked, for this member's token table.
    tokens: Vec<crate::auth::TokenEvent>,
}

impl StateMachine {
    fn apply_entries(&self, entries: &[Entry]) -> Result<Prepared> {
        // Held for the whole apply so a snapshot install or defragment
        // never swaps the file under an open write transaction.
        let guard = self.shared.file_lock.lock();
        self.apply_locked(entries, guard)
    }

    /// [`StateMachine::apply_locked`] unless the file is busy (`None`).
    fn try_apply_now(&self, entries: &[Entry]) -> Option<Result<Prepared>> {
        let guard = self.shared.file_lock.try_lock()?;
        Some(self.apply_locked(entries, guard))
    }

    /// Applies `entries` to a copy of the state and commits them to redb
    /// (no fsync); nothing is visible until [`StateMachine::publish`].
    fn apply_locked(
        &self,
        entries: &[Entry],
        _file: parking_lot::MutexGuard<'_, ()>,
    ) -> Result<Prepared> {
        let sh = &self.shared;
        let db = sh.db();
        let mut working = MvccState::clone(&sh.state.load());
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut replies = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut leases: Vec<(i64, Option<i64>)> = Vec::new();
        let mut tokens = Vec::new();
        let mut membership = None;
        {
            let mut ap = Applier::new(&txn)?;
            for e in entries {
                working.applied_log = Some(e.log_id);
                working.applied_index = e.log_id.index;
                match &e.payload {
                    EntryPayload::Blank => replies.push(BatchReply::default()),
                    EntryPayload::Normal(batch) => {
                        let mut out = Vec::with_capacity(batch.0.len());
                        for req in &batch.0 {
                            let a = ap.apply(&mut working, e.log_id.index, req)?;
                            sh.metrics.count_applied(req, &a.response);
                            if !a.events.is_empty() {
                                events.push((a.revision, a.events));
                            }
                            match (&a.response, req.inner()) {
                                (Ok(Response::LeaseGrant(g)), _) => {
                                    sh.metrics.leases_granted.fetch_add(1, Ordering::Relaxed);
                                    sh.metrics.lease_ttl.observe(g.ttl as f64);
                                    leases.push((g.id, Some(g.ttl)))
                                }
                                (Ok(Response::LeaseRevoke(_)), Request::LeaseRevoke { id }) => {
                                    sh.metrics.leases_revoked.fetch_add(1, Ordering::Relaxed);
                                    leases.push((*id, None))
                                }
                                _ => {}
                            }
                            tokens.extend(crate::auth::token_event(req, &a.response));
                            out.push(Reply {
                                response: a.response,
                                revision: a.revision,
                            });
                        }
                        replies.push(BatchReply(out));
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
                        replies.push(BatchReply::default());
                    }
                }
            }
            ap.finish(&working)?;
        }
        if let Some(m) = &membership {
            let bytes =
                bincode::serialize(m).map_err(|e| crate::error::Error::Storage(e.to_string()))?;
            txn.open_table(RAFT_SM)?
                .insert(MEMBERSHIP_KEY, bytes.as_slice())?;
        }
        if sh.metrics.in_use_due() {
            // redb's allocated pages: what bolt calls the in-use size.
            if let Ok(st) = txn.stats() {
                let bytes = st.allocated_pages() * st.page_size() as u64;
                sh.metrics.db_in_use_bytes.store(bytes, Ordering::Relaxed);
            }
        }
        let commit = Instant::now();
        txn.commit()?;
        sh.metrics.backend_commit.since(commit);
        Ok(Prepared {
            state: working,
            replies,
            events,
            membership,
            leases,
            tokens,
        })
    }

    /// Makes an apply visible: state, watch events, membership, leases.
    fn publish(&self, p: Prepared) -> Vec<BatchReply> {
        let sh = &self.shared;
        let Prepared {
            state,
            replies,
            events,
            membership,
            leases,
            tokens,
        } = p;
        let rev = state.rev;
        sh.state.store(Arc::new(state));
        // Published on every member at apply, so a follower's watchers see
        // what the leader's see, in the same order.
        sh.hub.publish(&events, rev);
        if let Some(m) = membership {
            sh.membership.store(Arc::new(m));
        }
        for ev in tokens {
            sh.tokens.on_event(ev);
        }
        if !leases.is_empty() {
            let now = Instant::now();
            let mut exp = sh.expiry.lock();
            for (id, ttl) in leases {
                match ttl {
                    Some(ttl) => {
                        exp.insert(id, crate::mvcc::state::LeaseState::deadline(now, ttl));
                    }
                    None => {
                        exp.remove(&id);
                    }
                }
            }
        }
        replies
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.shared.state.load();
        Ok((
            st.applied_log,
            StoredMembership::clone(&self.shared.membership.load()),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchReply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id.index) else {
            return Ok(Vec::new());
        };
        let requests: usize = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(b) => b.0.len(),
                _ => 1,
            })
            .sum();
        // An apply is CPU work plus a redb commit without fsync: it runs
        // right here (while the leader's own fsync of these entries may
        // still run) unless a whole-file operation (snapshot install,
        // defragment, purge's sync) holds the file, in which case it
        // waits off the async workers.
        let started = Instant::now();
        let prepared = match self.try_apply_now(&entries) {
            Some(done) => done,
            None => {
                let sm = self.clone();
                tokio::task::spawn_blocking(move || sm.apply_entries(&entries))
                    .await
                    .map_err(|e| sm_err(ErrorVerb::Write, e))?
            }
        }
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        if started.elapsed() > crate::metrics::SLOW_APPLY {
            self.shared
                .metrics
                .slow_apply
                .fetch_add(1, Ordering::Relaxed);
        }
        // Nothing takes effect before it is on this member's disk. The
        // fsync is usually a few tens of µs from done here: for a small
        // batch (few writers, so the CPU is mostly idle and latency is
        // all that counts) polling for a short while, yielding to any
        // other task each time, saves the wake-up of a parked worker,
        // which costs about as much on a VM. Large batches sleep: their
        // wake-up is shared by many writes, and the CPU is needed.
        if requests <= SYNC_SPIN_MAX_REQUESTS {
            let spin_until = std::time::Instant::now() + SYNC_SPIN;
            while !self.durable.covers(last) && std::time::Instant::now() < spin_until {
                tokio::task::yield_now().await;
            }
        }
        self.durable
            .wait(last)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(self.publish(prepared))
    }

    async fn get_snapshot_builder(&mut self) -> SnapBuilder {
        SnapBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let n = self.shared.snapshots_installed.load(Ordering::Relaxed);
        let path = self
            .shared
            .dir
            .join("snap")
            .join(format!("recv-{n}-{}.part", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // The name is not needed later: install reads through the handle
        // and keeps a copy; the receive file is unlinked right away so a
        // crash leaves nothing behind.
        let _ = std::fs::remove_file(&path);
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        let file = snapshot.into_std().await;
        tokio::task::spawn_blocking(move || {
            let m = &shared.metrics;
            m.snapshot_apply_in_progress.fetch_add(1, Ordering::Relaxed);
            let r = install(&shared, &meta, file);
            m.snapshot_apply_in_progress.fetch_sub(1, Ordering::Relaxed);
            r
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        current_snapshot(&self.shared.dir).map_err(|e| snap_err(ErrorVerb::Read, e))
    }
}

/// Builds a snapshot file from one redb read transaction.
#[derive(Debug)]
pub(crate) struct SnapBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let r = build(&shared);
            shared.metrics.backend_snapshot.since(started);
            r
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}

pub(crate) mod snapshot;
