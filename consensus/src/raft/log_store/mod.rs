//! The raft log: openraft's [`RaftLogStorage`] over the segmented WAL
//! (`raft/wal/`), with recent entries cached in memory and one writer thread
//! that turns every group of queued appends into one write and one
//! `fdatasync`.
//!
//! ```text
//!  RaftCore ──append(entries, callback)──> encode, cache (readable now)
//!                │  others' entries, writer idle: written and synced
//!                │  right here, then callback (no thread hand-off)
//!                │                               │ Cmd::Append
//!                │ own entries as leader:        v
//!                │ callback at once        raft-wal writer thread:
//!                │ (Durability::note_early)  drain queue, write, fdatasync
//!                v                               │ then: follower callbacks,
//!  replicate to followers  <── overlaps ──>      │ Durability::synced(index)
//!  sm.apply(i) waits Durability::wait(i) <───────┘
//!  PeerConn: leader_commit sent <= what this leader has synced
//! ```
//!
//! Why the leader's own appends are acknowledged to openraft before
//! their fsync: openraft 0.9 awaits an append's callback before it hands
//! the entries to replication, which puts the leader's fsync and the
//! followers' (network + fsync) one after the other; etcd overlaps them
//! (Raft thesis §10.2.1). Acknowledging early lets openraft count the
//! leader in the quorum before its copy is on disk, so openraft's commit
//! index can name an entry only `quorum - 1` members hold durably. Two
//! rules keep such an entry from taking effect anywhere until a full
//! quorum has it on disk:
//!
//! - this member applies (and so answers clients, serves reads and
//!   publishes watch events for) only entries it has synced
//!   (`Durability::wait` in `raft/sm/`): on the leader that adds its own
//!   copy to the `quorum - 1` followers that synced before acknowledging;
//! - followers are never told a commit index above what the leader has
//!   synced (`raft/peer.rs`), so an entry a follower applies is on the
//!   leader's disk as well as on the followers' that made the commit.
//!
//! A leader that crashes before its fsync loses only entries that never
//! took effect anywhere: to the cluster they are uncommitted entries (the
//! commit index is not persisted, see `save_committed`).
//!
//! A data dir from before the WAL (`raft-log.redb`) is imported once; the
//! rename of the finished import to `raft-wal/` is its commit point.

// openraft's trait fixes the error type (StorageError is large); boxing it
// is not an option for the trait methods, so helpers return it as is.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::raft::durability::Durability;
use crate::raft::type_config::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::raft::wal::Wal;
use writer::{Cmd, Done, Recs, writer};

/// Bytes of encoded entries kept in memory; older ones are read back
/// from the files (a lagging follower's catch-up, a restart's replay).
const CACHE_BYTES: usize = 64 << 20;
/// Most encoded bytes handed to one replication request (at least one
/// entry is always sent).
const MAX_SEND_BYTES: usize = 8 << 20;
/// Most commands the writer takes into one write + fsync.
const MAX_GROUP: usize = 4096;

/// What the meta file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId>,
}

/// The purged index a meta file records, if it decodes.
pub(crate) fn purged_index(b: &[u8]) -> Option<u64> {
    bincode::deserialize::<Meta>(b)
        .ok()?
        .purged
        .map(|p| p.index)
}

/// The meta file's content (vote, purged log id).
///
/// # Errors
/// The bytes are not a meta record.
pub(crate) fn decode_meta(b: &[u8]) -> crate::error::Result<Meta> {
    bincode::deserialize(b).map_err(storage)
}

/// One log position in memory.
#[derive(Debug)]
struct Slot {
    id: LogId,
    /// `None` once evicted from the cache (the file has it).
    entry: Option<Entry>,
    size: usize,
}

#[derive(Debug, Default)]
struct Mem {
    meta: Meta,
    /// Log index of `slots[0]`.
    first: u64,
    slots: VecDeque<Slot>,
    /// Encoded bytes of the cached entries.
    cached: usize,
    /// Slots before this index hold no entry.
    cache_from: u64,
    /// Last index written to the files (so safe to evict).
    written: Option<u64>,
}

impl Mem {
    fn last_id(&self) -> Option<LogId> {
        self.slots.back().map(|s| s.id).or(self.meta.purged)
    }

    fn next_index(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    /// Drops the oldest cached entries beyond the budget; only entries
    /// already written can go (they are read back from the file).
    fn evict(&mut self) {
        self.cache_from = self.cache_from.max(self.first);
        while self.cached > CACHE_BYTES {
            match self.written {
                Some(w) if self.cache_from <= w => {}
                _ => return,
            }
            let i = (self.cache_from - self.first) as usize;
            let Some(slot) = self.slots.get_mut(i) else {
                return;
            };
            if slot.entry.take().is_some() {
                self.cached -= slot.size;
            }
            self.cache_from += 1;
        }
    }
}

struct Inner {
    node: NodeId,
    wal: Arc<Wal>,
    // parking_lot Mutex: short sections, never held across an await.
    mem: parking_lot::Mutex<Mem>,
    /// To the writer thread (unbounded: RaftCore never waits to queue;
    /// raft's own flow control bounds what is in flight).
    tx: mpsc::Sender<Cmd>,
    /// Commands sent to the writer and not finished yet. Zero means the
    /// writer holds nothing: an append may then be written and synced by
    /// the caller itself (see [`LogStore::append_inline`]). Only RaftCore
    /// appends, so nothing is queued between the check and the write.
    queued: std::sync::atomic::AtomicUsize,
    durable: Arc<Durability>,
    /// The state machine: its file is made durable before the log is
    /// purged, since a purged entry can no longer replay an unsynced apply.
    sm: Arc<crate::raft::sm::Shared>,
    /// The writer thread, joined by [`LogStore::stop`] so a closed store
    /// leaves no thread touching its files. std Mutex: taken once, at stop.
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The log store; clones share everything (openraft's reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

fn io(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn logs_w(e: impl std::error::Error + 'static) -> StorageError {
    io(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn logs_r(e: impl std::error::Error + 'static) -> StorageError {
    io(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn storage(e: impl std::fmt::Display) -> crate::error::Error {
    crate::error::Error::Storage(e.to_string())
}

impl LogStore {
    /// Opens (or creates) `<dir>/raft-wal/` for member `node`, imports a
    /// pre-WAL `raft-log.redb` if one is there, and starts the writer.
    ///
    /// # Errors
    /// I/O failures, or a damaged log (anything but a torn tail).
    pub(crate) fn open(
        dir: &Path,
        node: NodeId,
        sm: Arc<crate::raft::sm::Shared>,
    ) -> crate::error::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let wal_dir = dir.join("raft-wal");
        let legacy = dir.join("raft-log.redb");
        if legacy.exists() {
            // The rename below is the import's commit point: with
            // raft-wal/ present the redb file is only a leftover.
            if !wal_dir.exists() {
                legacy::import(&legacy, dir, &wal_dir)?;
            }
            std::fs::remove_file(&legacy)?;
            std::fs::File::open(dir)?.sync_all()?;
        }
        let (wal, rec) = Wal::open(&wal_dir, purged_index)?;
        if rec.cut_tail {
            tracing::warn!(dir = %wal_dir.display(), "raft log: cut a torn tail (writes that were never acknowledged)");
        }
        let meta: Meta = match &rec.meta {
            Some(b) => decode_meta(b)?,
            None => Meta::default(),
        };
        let records = rec.records;
        let mut mem = Mem {
            first: meta.purged.map_or(0, |p| p.index + 1),
            meta,
            ..Default::default()
        };
        for (i, b) in records {
            let e: Entry = bincode::deserialize(&b).map_err(storage)?;
            if mem.slots.is_empty() {
                mem.first = i;
                mem.cache_from = i;
            }
            mem.cached += b.len();
            mem.slots.push_back(Slot {
                id: e.log_id,
                entry: Some(e),
                size: b.len(),
            });
            mem.written = Some(i);
        }
        mem.evict();
        let synced = mem.slots.back().map(|s| s.id.index);
        let wal = Arc::new(wal);
        let durable = Arc::new(Durability::new(synced));
        let _ = sm.log_durable.set(durable.clone());
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            node,
            wal: wal.clone(),
            mem: parking_lot::Mutex::new(mem),
            tx,
            queued: std::sync::atomic::AtomicUsize::new(0),
            durable: durable.clone(),
            sm,
            thread: parking_lot::Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let handle = std::thread::Builder::new()
            .name("raft-wal".into())
            .spawn(move || writer(wal, durable, weak, rx))?;
        *inner.thread.lock() = Some(handle);
        Ok(Self { inner })
    }

    pub(crate) fn durability(&self) -> Arc<Durability> {
        self.inner.durable.clone()
    }

    /// The log's fsync latencies and bytes written.
    pub(crate) fn wal_stats(&self) -> &crate::metrics::WalStats {
        &self.inner.wal.stats
    }

    fn send(&self, cmd: Cmd) -> Result<(), StorageError> {
        self.inner.queued.fetch_add(1, Ordering::SeqCst);
        self.inner.tx.send(cmd).map_err(|_| {
            self.inner.queued.fetch_sub(1, Ordering::SeqCst);
            logs_w(std::io::Error::other("raft log writer stopped"))
        })
    }

    /// Writes and syncs `recs` on the calling task, when the writer
    /// thread is idle (else `Err(recs)` to queue them). Used for appends
    /// whose callback must wait for the fsync anyway (a follower's, and
    /// a leader's entries of an older term): handing them to the writer
    /// thread and back costs two thread wake-ups, each tens of µs on a
    /// virtual machine, on the path of every replicated write. openraft
    /// sends a follower one append at a time, so the writer's grouping
    /// would not have merged anything here.
    fn append_inline(&self, recs: Vec<(u64, Vec<u8>)>) -> Result<std::io::Result<()>, Recs> {
        if self.inner.queued.load(Ordering::SeqCst) != 0 {
            return Err(recs);
        }
        let Some(last) = recs.last().map(|r| r.0) else {
            return Ok(Ok(()));
        };
        let wal = &self.inner.wal;
        let res = (|| {
            for (i, b) in &recs {
                wal.append(*i, b)?;
            }
            wal.write()?;
            {
                let mut m = self.inner.mem.lock();
                m.written = Some(last);
                m.evict();
            }
            wal.sync()
        })();
        match &res {
            Ok(()) => self.inner.durable.set_synced(last),
            Err(e) => {
                tracing::error!(error = %e, "raft log write failed; this member stops accepting entries");
                self.inner.durable.fail();
            }
        }
        Ok(res)
    }

    async fn call(&self, make: impl FnOnce(Done) -> Cmd) -> std::io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(make(done))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        rx.await
            .unwrap_or_else(|_| Err(std::io::Error::other("raft log writer stopped")))
    }

    /// Stops the writer after everything queued is written and synced.
    /// Blocks for as long as one group write and sync take.
    pub(crate) fn stop(&self) {
        let _ = self.send(Cmd::Stop);
        let handle = self.inner.thread.lock().take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }

    /// Number of entries in the log (for status and tests).
    pub fn len(&self) -> u64 {
        self.inner.mem.lock().slots.len() as u64
    }

    /// The id of the entry at `index`, if the log holds it.
    pub(crate) fn log_id_at(&self, index: u64) -> Option<LogId> {
        let m = self.inner.mem.lock();
        let i = index.checked_sub(m.first)?;
        m.slots.get(i as usize).map(|s| s.id)
    }

    /// Whether `entries` are this member's own, appended as the leader
    /// of the vote it holds (the case acknowledged before the fsync).
    fn own_leader_entries(&self, m: &Mem, entries: &[Entry]) -> bool {
        let Some(v) = &m.meta.vote else { return false };
        v.is_committed()
            && v.leader_id().node_id == self.inner.node
            && entries.iter().all(|e| e.log_id.leader_id == *v.leader_id())
    }

    fn read_range(&self, start: u64, end: u64, limit: usize) -> Result<Vec<Entry>, StorageError> {
        let mut out: Vec<Option<Entry>> = Vec::new();
        let mut missing = Vec::new();
        let from;
        {
            let m = self.inner.mem.lock();
            from = start.max(m.first);
            let to = end.min(m.next_index());
            let mut bytes = 0;
            for i in from..to {
                let s = &m.slots[(i - m.first) as usize];
                if !out.is_empty() && bytes + s.size > limit {
                    break;
                }
                bytes += s.size;
                match &s.entry {
                    Some(e) => out.push(Some(e.clone())),
                    None => {
                        missing.push(out.len());
                        out.push(None);
                    }
                }
            }
        }
        for k in missing {
            let index = from + k as u64;
            match self.inner.wal.read(index).map_err(logs_r)? {
                Some(b) => out[k] = Some(bincode::deserialize(&b).map_err(logs_r)?),
                // Purged meanwhile: return the part before it.
                None => {
                    out.truncate(k);
                    break;
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.read_range(start, end, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_range(start, end, MAX_SEND_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let m = self.inner.mem.lock();
        Ok(LogState {
            last_purged_log_id: m.meta.purged,
            last_log_id: m.last_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut meta = self.inner.mem.lock().meta.clone();
        meta.vote = Some(*vote);
        let bytes = bincode::serialize(&meta).map_err(logs_w)?;
        self.call(|done| Cmd::SaveMeta { meta: bytes, done })
            .await
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        // Only a durable vote counts (it decides early acknowledgements).
        self.inner.mem.lock().meta.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.inner.mem.lock().meta.vote)
    }

    // save_committed / read_committed keep openraft's defaults (nothing
    // stored): a restarted member learns the commit index from the leader
    // (a lone member elects itself at once).

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id.index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let mut recs = Vec::with_capacity(entries.len());
        for e in &entries {
            recs.push((e.log_id.index, bincode::serialize(e).map_err(logs_w)?));
        }
        let early = {
            let mut m = self.inner.mem.lock();
            let first = entries[0].log_id.index;
            if m.slots.is_empty() {
                m.first = first;
                m.cache_from = first;
            } else if first != m.next_index() {
                return Err(logs_w(std::io::Error::other(format!(
                    "append of {first} to a log ending before {}",
                    m.next_index()
                ))));
            }
            for (e, (_, b)) in entries.iter().zip(&recs) {
                m.cached += b.len();
                m.slots.push_back(Slot {
                    id: e.log_id,
                    entry: Some(e.clone()),
                    size: b.len(),
                });
            }
            m.evict();
            self.own_leader_entries(&m, &entries)
        };
        if early {
            self.inner.durable.note_early(last);
            self.send(Cmd::Append { recs, cb: None })?;
            callback.log_io_completed(Ok(()));
        } else {
            let recs = match self.append_inline(recs) {
                Ok(res) => {
                    callback.log_io_completed(res);
                    return Ok(());
                }
                Err(recs) => recs,
            };
            self.send(Cmd::Append {
                recs,
                cb: Some(callback),
            })?;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let index = log_id.index;
        self.call(|done| Cmd::Truncate { index, done })
            .await
            .map_err(logs_w)?;
        let mut m = self.inner.mem.lock();
        if index < m.next_index() {
            let keep = index.saturating_sub(m.first) as usize;
            let gone: usize = m
                .slots
                .iter()
                .skip(keep)
                .filter(|s| s.entry.is_some())
                .map(|s| s.size)
                .sum();
            m.cached -= gone;
            m.slots.truncate(keep);
            m.written = match index.checked_sub(1) {
                Some(b) => m.written.map(|w| w.min(b)),
                None => None,
            };
            if m.cache_from > index {
                m.cache_from = index;
            }
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Every apply up to `log_id` must survive a crash before the
        // entries that could replay it go.
        {
            let sm = self.inner.sm.clone();
            tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
                let _file = sm.file_lock.lock();
                // Durable from here on: only what the log has synced.
                sm.settle().map_err(logs_w)?;
                let tx = sm.db().begin_write().map_err(logs_w)?;
                tx.commit().map_err(logs_w)
            })
            .await
            .map_err(logs_w)??;
        }
        let mut meta = self.inner.mem.lock().meta.clone();
        meta.purged = Some(log_id);
        let bytes = bincode::serialize(&meta).map_err(logs_w)?;
        let upto = log_id.index;
        self.call(|done| Cmd::Purge {
            upto,
            meta: bytes,
            done,
        })
        .await
        .map_err(logs_w)?;
        let mut m = self.inner.mem.lock();
        m.meta.purged = Some(log_id);
        while m.first <= upto {
            let Some(s) = m.slots.pop_front() else {
                m.first = upto + 1;
                break;
            };
            if s.entry.is_some() {
                m.cached -= s.size;
            }
            m.first += 1;
        }
        m.cache_from = m.cache_from.max(m.first);
        Ok(())
    }
}

#[cfg(test)]
mod conformance;
mod legacy;
#[cfg(test)]
mod tests;
mod writer;
