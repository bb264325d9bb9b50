//! The raft log's files: checksummed records appended to preallocated
//! segment files, made durable with one `fdatasync` per group of appends
//! (etcd's WAL design). `raft/log_store/` puts openraft's log API on top.
//!
//! ```text
//!  raft-wal/
//!    0000000000000001-0000000000000000.wal    segment <seq>-<first index>
//!    0000000000000002-00000000000004d2.wal    (64 MiB, preallocated)
//!    meta                                     vote + purged log id (replaced atomically)
//!
//!  segment := header record* zeros         (zeros: the preallocated rest)
//!  header  := "LKWAL001" first_index:u64 seed:u32 crc32(previous 20 bytes):u32
//!  record  := len:u32 crc:u32 index:u64 payload[len]
//!  crc     := crc32 of (len, index, payload), continued from the previous
//!             record's crc (the segment's seed for its first record; a
//!             segment's seed is the last crc of the one before it)
//! ```
//!
//! Why not redb for the log: a redb commit rewrites a B-tree path, a free
//! list and a header (about eight 4 KiB pages at scattered offsets) before
//! its fsync; an append here is one sequential write of the record bytes
//! into space that is already allocated, then `fdatasync`. The chained
//! checksum finds a torn tail after a crash (and makes a stale record left
//! behind a truncation unreadable); the tail is cut there, which loses
//! nothing that was ever synced.
//!
//! Crash safety rules kept here: a segment becomes visible (renamed into
//! place, directory fsynced) only after its header is durable; the next
//! segment is created only after the current one is synced; a truncation
//! deletes later segments and cuts the file before it returns; the meta
//! file is replaced by write, fsync, rename, fsync of the directory.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use format::{HEADER, RECORD_HEAD, corrupt, preallocate, sync_dir};
pub(crate) use format::{header_bytes, record_crc, seg_name};

mod format;
mod recovery;

/// Preallocated size of a segment (a larger record gets a larger one).
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// Zeros written ahead of the write position at a time (see `zero_ahead`).
const ZERO_CHUNK: u64 = 1 << 20;

/// Where one record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seq: u64,
    /// Offset of the record (its length field) in the segment.
    off: u64,
    len: u32,
    /// The chained crc after this record (what the next record continues).
    crc: u32,
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    seq: u64,
    first_index: u64,
    seed: u32,
    path: PathBuf,
    file: Arc<File>,
    /// Allocated size.
    size: u64,
}

/// Record locations and open segments; shared by the writer and readers.
#[derive(Debug, Default)]
struct Index {
    /// Log index of `locs[0]`.
    first: u64,
    locs: VecDeque<Loc>,
    /// The record just before `first` when it is still on disk (purged):
    /// its crc is what `first` continues.
    dropped: Option<Loc>,
    /// Every segment still on disk, by sequence number.
    segs: BTreeMap<u64, Segment>,
}

impl Index {
    fn loc(&self, index: u64) -> Option<Loc> {
        let i = index.checked_sub(self.first)?;
        self.locs.get(i as usize).copied()
    }

    /// The crc record `index` continues: its predecessor's in the same
    /// segment, else the segment's seed.
    fn crc_before(&self, index: u64, seq: u64) -> u32 {
        let prev = if index == self.first {
            self.dropped
        } else {
            index.checked_sub(1).and_then(|i| self.loc(i))
        };
        match prev {
            Some(p) if p.seq == seq => p.crc,
            _ => self.segs.get(&seq).map_or(0, |s| s.seed),
        }
    }

    fn pop_front(&mut self) {
        if let Some(l) = self.locs.pop_front() {
            self.dropped = Some(l);
            self.first += 1;
        }
    }
}

/// The writer's position: only the writer thread uses it.
#[derive(Debug)]
struct Tail {
    /// Sequence number of the segment being written.
    seq: u64,
    /// Where the next record goes.
    pos: u64,
    /// The segment reads as written zeros up to here (see `zero_ahead`).
    zeroed: u64,
    /// Chained crc of the last record (or the segment's seed).
    crc: u32,
    /// Index the next record in this segment carries (`None` before the
    /// first segment exists). A record with another index is accepted
    /// only when the log holds none, and starts a new segment.
    next: Option<u64>,
    /// Encoded records not written yet; they go at `pos`.
    buf: Vec<u8>,
    /// Their locations, published once written.
    pending: Vec<Loc>,
    pending_first: u64,
    /// Set after an I/O error: nothing may be written after a failed
    /// write or sync (the page cache's state is then unknown).
    failed: bool,
}

impl Tail {
    /// Writing continues in segment `seq` at `pos`, chained from `crc`,
    /// with record `next`; no zeroed space ahead of `pos` is counted on
    /// yet (see `zero_ahead`). Called once the segment's bytes up to `pos`
    /// are settled: a new segment's header, a reopened or truncated tail.
    fn resume_at(&mut self, seq: u64, pos: u64, crc: u32, next: u64) {
        self.seq = seq;
        self.pos = pos;
        self.zeroed = pos;
        self.crc = crc;
        self.next = Some(next);
    }
}

/// What [`Wal::open`] found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Records after the purged index, in order: (index, payload).
    pub records: Vec<(u64, Vec<u8>)>,
    pub meta: Option<Vec<u8>>,
    /// A torn or corrupt tail was cut off the last segment.
    pub cut_tail: bool,
}

/// The log files of one member. All methods take `&self`; the writer
/// methods (`append`, `write`, `sync`, `truncate`, `purge_upto`,
/// `save_meta`) must be called from one thread at a time.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    // Never held across an await. `tail` is only taken by
    // the writer; `index` briefly by the writer and by readers.
    tail: parking_lot::Mutex<Tail>,
    index: parking_lot::Mutex<Index>,
    /// fsync latencies and bytes written (etcd's `etcd_disk_wal_*`).
    pub stats: std::sync::Arc<crate::metrics::WalStats>,
}

impl Wal {
    /// Queues one record (written by the next [`Wal::write`]). Records
    /// must carry consecutive indexes; on an empty log any index starts
    /// a new segment.
    ///
    /// # Errors
    /// A hole in the indexes, a failed roll to a new segment, or an
    /// earlier I/O error.
    pub fn append(&self, index: u64, payload: &[u8]) -> std::io::Result<()> {
        let mut t = self.tail.lock();
        if t.failed {
            return Err(std::io::Error::other("raft log failed earlier"));
        }
        let rec_len = RECORD_HEAD + payload.len() as u64;
        let (fits, empty) = {
            let idx = self.index.lock();
            let at = t.pos + t.buf.len() as u64;
            (
                idx.segs.get(&t.seq).is_some_and(|s| at + rec_len <= s.size),
                idx.locs.is_empty() && t.pending.is_empty(),
            )
        };
        if t.next == Some(index) {
            if !fits {
                self.write_locked(&mut t)?;
                self.sync_locked(&mut t)?;
                self.roll(&mut t, index, rec_len)?;
            }
        } else if empty {
            // Nothing to continue: the log starts over at `index` (a
            // fresh log, or a snapshot moved it past its end).
            self.roll(&mut t, index, rec_len)?;
        } else {
            return Err(std::io::Error::other(format!(
                "raft log append of {index}, expected {:?}",
                t.next
            )));
        }
        let end = t.pos + t.buf.len() as u64 + rec_len;
        if end > t.zeroed {
            self.zero_ahead(&mut t, end)?;
        }
        if t.pending.is_empty() {
            t.pending_first = index;
        }
        let len = payload.len() as u32;
        let crc = record_crc(t.crc, len, index, payload);
        let off = t.pos + t.buf.len() as u64;
        t.buf.extend_from_slice(&len.to_le_bytes());
        t.buf.extend_from_slice(&crc.to_le_bytes());
        t.buf.extend_from_slice(&index.to_le_bytes());
        t.buf.extend_from_slice(payload);
        let seq = t.seq;
        t.pending.push(Loc { seq, off, len, crc });
        t.crc = crc;
        t.next = Some(index + 1);
        Ok(())
    }

    /// Writes zeros over the preallocated space ahead of the records, a
    /// chunk at a time. fallocate leaves "unwritten" extents: the first
    /// write into one changes the extent map, so its `fdatasync` has to
    /// commit the filesystem journal (milliseconds when other processes
    /// keep the journal busy). Over written zeros, a record's sync is a
    /// pure data flush; the journal is paid once per chunk instead.
    fn zero_ahead(&self, t: &mut Tail, end: u64) -> std::io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let (file, size) = {
            let idx = self.index.lock();
            match idx.segs.get(&t.seq) {
                Some(s) => (s.file.clone(), s.size),
                None => return Ok(()),
            }
        };
        let from = t.zeroed.max(t.pos + t.buf.len() as u64);
        let to = (end.max(from) + ZERO_CHUNK).min(size);
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZEROS.len() as u64) as usize;
            if let Err(e) = file.write_all_at(&ZEROS[..n], at) {
                return Self::fail(t, e);
            }
            at += n as u64;
        }
        t.zeroed = to;
        Ok(())
    }

    /// Writes the queued records (readable afterwards, not yet durable).
    ///
    /// # Errors
    /// The write failed; the log then refuses every later write.
    pub fn write(&self) -> std::io::Result<()> {
        let mut t = self.tail.lock();
        self.write_locked(&mut t)
    }

    /// Makes everything written durable (`fdatasync`).
    ///
    /// # Errors
    /// The sync failed; the log then refuses every later write.
    pub fn sync(&self) -> std::io::Result<()> {
        let mut t = self.tail.lock();
        self.write_locked(&mut t)?;
        self.sync_locked(&mut t)
    }

    fn fail<T>(t: &mut Tail, e: std::io::Error) -> std::io::Result<T> {
        t.failed = true;
        Err(e)
    }

    fn write_locked(&self, t: &mut Tail) -> std::io::Result<()> {
        if t.failed {
            return Err(std::io::Error::other("raft log failed earlier"));
        }
        if t.buf.is_empty() {
            return Ok(());
        }
        let file = {
            let idx = self.index.lock();
            idx.segs.get(&t.seq).map(|s| s.file.clone())
        };
        let Some(file) = file else {
            return Self::fail(t, std::io::Error::other("raft log segment missing"));
        };
        if let Err(e) = file.write_all_at(&t.buf, t.pos) {
            return Self::fail(t, e);
        }
        self.stats
            .write_bytes
            .fetch_add(t.buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        t.pos += t.buf.len() as u64;
        t.buf.clear();
        let mut idx = self.index.lock();
        if idx.locs.is_empty() {
            idx.first = t.pending_first;
        }
        idx.locs.extend(t.pending.drain(..));
        Ok(())
    }

    fn sync_locked(&self, t: &mut Tail) -> std::io::Result<()> {
        if t.failed {
            return Err(std::io::Error::other("raft log failed earlier"));
        }
        let file = {
            let idx = self.index.lock();
            idx.segs.get(&t.seq).map(|s| s.file.clone())
        };
        if let Some(f) = file {
            let started = std::time::Instant::now();
            let synced = f.sync_data();
            self.stats.fsync.since(started);
            if let Err(e) = synced {
                return Self::fail(t, e);
            }
        }
        Ok(())
    }

    /// Starts a new segment whose first record is `first_index` (the
    /// current one is already written and synced).
    fn roll(&self, t: &mut Tail, first_index: u64, need: u64) -> std::io::Result<()> {
        let seq = t.seq + 1;
        let size = SEGMENT_BYTES.max(HEADER + need);
        let name = seg_name(seq, first_index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        // A fresh chain when the log restarts at an unrelated index.
        let seed = if t.next == Some(first_index) {
            t.crc
        } else {
            0
        };
        let res = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            preallocate(&file, 0, size)?;
            file.write_all_at(&header_bytes(first_index, seed), 0)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)?;
            Ok(file)
        })();
        let file = match res {
            Ok(f) => f,
            Err(e) => return Self::fail(t, e),
        };
        self.index.lock().segs.insert(
            seq,
            Segment {
                seq,
                first_index,
                seed,
                path,
                file: Arc::new(file),
                size,
            },
        );
        t.resume_at(seq, HEADER, seed, first_index);
        Ok(())
    }

    /// Removes every record at or after `index`, durably, before
    /// returning: later segments are deleted and the file is cut.
    ///
    /// # Errors
    /// I/O failures (the log then refuses later writes).
    pub fn truncate(&self, index: u64) -> std::io::Result<()> {
        let mut t = self.tail.lock();
        self.write_locked(&mut t)?;
        self.sync_locked(&mut t)?;
        let (loc, crc, doomed) = {
            let idx = self.index.lock();
            let Some(loc) = idx.loc(index) else {
                return Ok(());
            };
            let crc = idx.crc_before(index, loc.seq);
            let doomed: Vec<PathBuf> = idx
                .segs
                .range(loc.seq + 1..)
                .map(|(_, s)| s.path.clone())
                .collect();
            (loc, crc, doomed)
        };
        let res = (|| {
            for p in &doomed {
                std::fs::remove_file(p)?;
            }
            if !doomed.is_empty() {
                sync_dir(&self.dir)?;
            }
            let idx = self.index.lock();
            let seg = idx.segs.get(&loc.seq).expect("segment of a record");
            seg.file.set_len(loc.off)?;
            preallocate(&seg.file, loc.off, seg.size - loc.off)?;
            seg.file.sync_all()
        })();
        if let Err(e) = res {
            return Self::fail(&mut t, e);
        }
        let mut idx = self.index.lock();
        let keep = (index - idx.first) as usize;
        idx.locs.truncate(keep);
        let gone: Vec<u64> = idx.segs.range(loc.seq + 1..).map(|(s, _)| *s).collect();
        for s in gone {
            idx.segs.remove(&s);
        }
        t.resume_at(loc.seq, loc.off, crc, index);
        Ok(())
    }

    /// Forgets records at or below `upto` and deletes the segments that
    /// hold nothing else (never the one being written).
    ///
    /// # Errors
    /// I/O failures while deleting.
    pub fn purge_upto(&self, upto: u64) -> std::io::Result<()> {
        let mut t = self.tail.lock();
        self.write_locked(&mut t)?;
        {
            let mut idx = self.index.lock();
            while !idx.locs.is_empty() && idx.first <= upto {
                idx.pop_front();
            }
            if idx.locs.is_empty() && idx.first <= upto {
                // Past the end (a snapshot): the next record starts anew.
                idx.first = upto + 1;
                idx.dropped = None;
            }
        }
        drop(t);
        self.drop_purged_segments(Some(upto))
    }

    /// Deletes segments whose records are all at or below `purged`.
    fn drop_purged_segments(&self, purged: Option<u64>) -> std::io::Result<()> {
        let Some(purged) = purged else {
            return Ok(());
        };
        let current = self.tail.lock().seq;
        let doomed: Vec<(u64, PathBuf)> = {
            let idx = self.index.lock();
            let segs: Vec<&Segment> = idx.segs.values().collect();
            segs.iter()
                .enumerate()
                .filter(|(i, s)| {
                    s.seq != current
                        && segs
                            .get(i + 1)
                            .is_some_and(|n| n.first_index <= purged.saturating_add(1))
                })
                .map(|(_, s)| (s.seq, s.path.clone()))
                .collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        for (_, p) in &doomed {
            std::fs::remove_file(p)?;
        }
        sync_dir(&self.dir)?;
        let mut idx = self.index.lock();
        for (s, _) in doomed {
            idx.segs.remove(&s);
        }
        Ok(())
    }

    /// Reads the payload of record `index` (written, not necessarily
    /// synced), or `None` when the log does not hold it.
    ///
    /// # Errors
    /// I/O failure or a record whose checksum does not match.
    pub fn read(&self, index: u64) -> std::io::Result<Option<Vec<u8>>> {
        let (loc, prev_crc, file) = {
            let idx = self.index.lock();
            let Some(loc) = idx.loc(index) else {
                return Ok(None);
            };
            let prev = idx.crc_before(index, loc.seq);
            let Some(seg) = idx.segs.get(&loc.seq) else {
                return Ok(None);
            };
            (loc, prev, seg.file.clone())
        };
        let mut buf = vec![0u8; (RECORD_HEAD + loc.len as u64) as usize];
        file.read_exact_at(&mut buf, loc.off)?;
        let payload = buf.split_off(RECORD_HEAD as usize);
        if record_crc(prev_crc, loc.len, index, &payload) != loc.crc {
            return Err(corrupt(format!(
                "raft log record {index}: checksum mismatch"
            )));
        }
        Ok(Some(payload))
    }

    /// Replaces the meta file (vote, purged id) atomically and durably.
    ///
    /// # Errors
    /// I/O failures.
    pub fn save_meta(&self, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join("meta.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&crc32fast::hash(bytes).to_le_bytes())?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join("meta"))?;
        sync_dir(&self.dir)
    }

    /// Number of segment files.
    #[cfg(test)]
    pub fn segments(&self) -> usize {
        self.index.lock().segs.len()
    }
}

#[cfg(test)]
mod tests;
