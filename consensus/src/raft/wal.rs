//! The raft log's files: checksummed records appended to preallocated
//! segment files, made durable with one `fdatasync` per group of appends
//! (etcd's WAL design). `log_store.rs` puts openraft's log API on top.
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
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Preallocated size of a segment (a larger record gets a larger one).
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
const MAGIC: &[u8; 8] = b"LKWAL001";
const HEADER: u64 = 24;
/// len + crc + index.
const RECORD_HEAD: u64 = 16;
/// Largest payload accepted when reading (a bigger length is corruption).
const MAX_RECORD: u32 = 1 << 30;
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
    // std Mutexes: never held across an await. `tail` is only taken by
    // the writer; `index` briefly by the writer and by readers.
    tail: parking_lot::Mutex<Tail>,
    index: parking_lot::Mutex<Index>,
    /// fsync latencies and bytes written (etcd's `etcd_disk_wal_*`).
    pub stats: std::sync::Arc<crate::metrics::WalStats>,
}

fn corrupt(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

pub(crate) fn seg_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn record_crc(prev: u32, len: u32, index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

pub(crate) fn header_bytes(first_index: u64, seed: u32) -> [u8; HEADER as usize] {
    let mut b = [0u8; HEADER as usize];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&first_index.to_le_bytes());
    b[16..20].copy_from_slice(&seed.to_le_bytes());
    let c = crc32fast::hash(&b[..20]);
    b[20..24].copy_from_slice(&c.to_le_bytes());
    b
}

/// Gives `file` `len` bytes of allocated, zero-reading space from `off`
/// on, so later writes there change no file size or block map that
/// `fdatasync` would have to journal beyond the extent conversion.
fn preallocate(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), off, len) {
        Ok(()) => Ok(()),
        // A filesystem without fallocate: a sparse file still works,
        // its first writes only cost more to sync.
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(off + len),
        Err(e) => Err(e.into()),
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`: reads every segment, checks
    /// the checksum chain, cuts a torn tail off the last segment, skips
    /// records at or below `purged_of(meta)`, and makes what remains
    /// durable before anything is appended.
    ///
    /// # Errors
    /// I/O failures, or a damaged record anywhere but the tail.
    pub fn open(
        dir: &Path,
        purged_of: impl Fn(&[u8]) -> Option<u64>,
    ) -> std::io::Result<(Wal, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A segment or meta file whose creation did not finish.
                std::fs::remove_file(e.path())?;
                continue;
            }
            if let Some((seq, first)) = parse_name(&name) {
                names.push((seq, first, e.path()));
            }
        }
        names.sort();
        let meta = match std::fs::read(dir.join("meta")) {
            Ok(b) => Some(read_meta_file(&b)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let purged = meta.as_deref().and_then(&purged_of);
        // No log reaches the last index, so a meta file naming it as purged
        // was not written by us (and "the next index" would overflow).
        if purged == Some(u64::MAX) {
            return Err(corrupt(format!(
                "{}: purged index {} is past any log",
                dir.join("meta").display(),
                u64::MAX
            )));
        }

        let mut rec = Recovered {
            meta,
            ..Default::default()
        };
        let mut index = Index::default();
        let mut tail = Tail {
            seq: 0,
            pos: 0,
            zeroed: 0,
            crc: 0,
            next: None,
            buf: Vec::new(),
            pending: Vec::new(),
            pending_first: 0,
            failed: false,
        };
        // (last index, last crc) of the segment read before.
        let mut prev: Option<(Option<u64>, u32)> = None;
        let n = names.len();
        for (k, (seq, first_index, path)) in names.into_iter().enumerate() {
            let is_last = k + 1 == n;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            let mut r = BufReader::with_capacity(1 << 20, &file);
            let mut h = [0u8; HEADER as usize];
            r.read_exact(&mut h)
                .map_err(|e| corrupt(format!("{}: header: {e}", path.display())))?;
            let seed = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
            if h != header_bytes(first_index, seed) {
                return Err(corrupt(format!("{}: bad segment header", path.display())));
            }
            // A segment continuing the one before carries its last crc.
            if let Some((Some(last), crc)) = prev
                && last + 1 == first_index
                && crc != seed
            {
                return Err(corrupt(format!(
                    "{}: checksum chain broken",
                    path.display()
                )));
            }
            let mut crc = seed;
            let mut pos = HEADER;
            let mut next = first_index;
            let mut torn = false;
            loop {
                let mut head = [0u8; RECORD_HEAD as usize];
                if pos + RECORD_HEAD > size || r.read_exact(&mut head).is_err() {
                    break;
                }
                let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
                let want = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
                let idx = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
                if len == 0 {
                    // Preallocated zeros: the end, unless garbage follows
                    // (checked below for the last segment only).
                    torn = head != [0u8; RECORD_HEAD as usize];
                    break;
                }
                if len > MAX_RECORD || pos + RECORD_HEAD + len as u64 > size || idx != next {
                    torn = true;
                    break;
                }
                let mut payload = vec![0u8; len as usize];
                if r.read_exact(&mut payload).is_err() {
                    torn = true;
                    break;
                }
                let got = record_crc(crc, len, idx, &payload);
                if got != want {
                    torn = true;
                    break;
                }
                crc = got;
                let loc = Loc {
                    seq,
                    off: pos,
                    len,
                    crc,
                };
                pos += RECORD_HEAD + len as u64;
                next += 1;
                if purged.is_some_and(|p| idx <= p) {
                    index.dropped = Some(loc);
                    continue;
                }
                if index.locs.is_empty() {
                    index.first = idx;
                } else if index.first + index.locs.len() as u64 != idx {
                    return Err(corrupt(format!(
                        "{}: record {idx} leaves a hole after {}",
                        path.display(),
                        index.first + index.locs.len() as u64 - 1
                    )));
                }
                index.locs.push_back(loc);
                rec.records.push((idx, payload));
            }
            drop(r);
            if torn {
                if !is_last {
                    return Err(corrupt(format!(
                        "{}: damaged record at offset {pos} (not the log's tail)",
                        path.display()
                    )));
                }
                // Everything from here on was written after the last
                // successful sync: cut it and give the space back as zeros.
                file.set_len(pos)?;
                preallocate(&file, pos, size - pos)?;
                rec.cut_tail = true;
            }
            file.sync_all()?;
            prev = Some(((next > first_index).then(|| next - 1), crc));
            index.segs.insert(
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
            tail.resume_at(seq, pos, crc, next);
        }
        if index.locs.is_empty() {
            index.first = purged.map_or(0, |p| p + 1);
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            tail: parking_lot::Mutex::new(tail),
            index: parking_lot::Mutex::new(index),
            stats: Default::default(),
        };
        wal.drop_purged_segments(purged)?;
        sync_dir(dir)?;
        Ok((wal, rec))
    }

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

fn read_meta_file(b: &[u8]) -> std::io::Result<Vec<u8>> {
    if b.len() < 4 || crc32fast::hash(&b[4..]).to_le_bytes() != b[..4] {
        return Err(corrupt("raft-wal/meta: checksum mismatch".into()));
    }
    Ok(b[4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &[u8]) -> Option<u64> {
        None
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("entry-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes()
    }

    fn fill(w: &Wal, range: std::ops::Range<u64>) {
        for i in range {
            w.append(i, &payload(i)).unwrap();
        }
        w.sync().unwrap();
    }

    fn indexes(r: &Recovered) -> Vec<u64> {
        r.records.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn records_survive_reopen_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        {
            let (w, r) = Wal::open(d.path(), none).unwrap();
            assert!(r.records.is_empty());
            fill(&w, 0..50);
            assert_eq!(w.read(7).unwrap().unwrap(), payload(7));
            assert_eq!(w.read(50).unwrap(), None);
        }
        let (w, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(indexes(&r), (0..50).collect::<Vec<_>>());
        assert!(!r.cut_tail);
        for (i, p) in &r.records {
            assert_eq!(p, &payload(*i));
        }
        fill(&w, 50..60);
        drop(w);
        let (_, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(indexes(&r), (0..60).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_cut_and_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let seg;
        let end;
        {
            let (w, _) = Wal::open(d.path(), none).unwrap();
            fill(&w, 0..10);
            let idx = w.index.lock();
            let l = idx.loc(9).unwrap();
            seg = idx.segs[&l.seq].path.clone();
            end = l.off + RECORD_HEAD + l.len as u64;
            drop(idx);
        }
        // A crash in the middle of writing record 10: half of it landed.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        let mut rec = Vec::new();
        rec.extend_from_slice(&40u32.to_le_bytes());
        rec.extend_from_slice(&123u32.to_le_bytes());
        rec.extend_from_slice(&10u64.to_le_bytes());
        rec.extend_from_slice(b"half a rec");
        f.write_all_at(&rec, end).unwrap();
        drop(f);
        let (w, r) = Wal::open(d.path(), none).unwrap();
        assert!(r.cut_tail);
        assert_eq!(indexes(&r), (0..10).collect::<Vec<_>>());
        fill(&w, 10..12);
        drop(w);
        let (_, r) = Wal::open(d.path(), none).unwrap();
        assert!(!r.cut_tail);
        assert_eq!(indexes(&r), (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn a_flipped_byte_inside_the_log_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        let (seg, off) = {
            let (w, _) = Wal::open(d.path(), none).unwrap();
            fill(&w, 0..10);
            let idx = w.index.lock();
            let l = idx.loc(3).unwrap();
            (idx.segs[&l.seq].path.clone(), l.off + RECORD_HEAD + 2)
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], off).unwrap();
        drop(f);
        // In the last segment a damaged record ends the log there
        // (indistinguishable from a torn write): 0..3 remain.
        let (_, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(indexes(&r), vec![0, 1, 2]);
    }

    /// Where record `index` ends in its segment file.
    fn record_end(w: &Wal, index: u64) -> (PathBuf, u64, u64) {
        let idx = w.index.lock();
        let l = idx.loc(index).unwrap();
        (
            idx.segs[&l.seq].path.clone(),
            l.off,
            l.off + RECORD_HEAD + l.len as u64,
        )
    }

    #[test]
    fn a_file_cut_inside_a_record_keeps_every_record_before_it() {
        let d = tempfile::tempdir().unwrap();
        let (seg, off9) = {
            let (w, _) = Wal::open(d.path(), none).unwrap();
            fill(&w, 0..10);
            let (seg, off, _) = record_end(&w, 9);
            (seg, off)
        };
        // The file as a crash during its last write could leave it: cut
        // in the middle of record 9's payload (length shorter than the
        // preallocated segment, too).
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(off9 + RECORD_HEAD + 3)
            .unwrap();
        let (w, r) = Wal::open(d.path(), none).unwrap();
        assert!(r.cut_tail);
        assert_eq!(indexes(&r), (0..9).collect::<Vec<_>>());
        for (i, p) in &r.records {
            assert_eq!(p, &payload(*i), "record {i}");
        }
        // The log goes on from the cut, and the shortened segment rolls
        // over when full instead of writing past its end.
        fill(&w, 9..12);
        drop(w);
        let (w, r) = Wal::open(d.path(), none).unwrap();
        assert!(!r.cut_tail);
        assert_eq!(indexes(&r), (0..12).collect::<Vec<_>>());
        assert_eq!(w.read(9).unwrap().unwrap(), payload(9));
    }

    #[test]
    fn a_zeroed_length_ends_the_log_and_later_stale_bytes_are_cut() {
        let d = tempfile::tempdir().unwrap();
        let (seg, off5) = {
            let (w, _) = Wal::open(d.path(), none).unwrap();
            fill(&w, 0..10);
            let (seg, off, _) = record_end(&w, 5);
            (seg, off)
        };
        // Record 5's head never reached the disk but 6..9 did (pages are
        // written back in any order before the fsync).
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0u8; RECORD_HEAD as usize], off5).unwrap();
        drop(f);
        let (w, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(indexes(&r), (0..5).collect::<Vec<_>>());
        // New, shorter records at 5..7: the old 6..9 behind them must
        // never be read back as part of the log.
        for i in 5..7 {
            w.append(i, b"n").unwrap();
        }
        w.sync().unwrap();
        drop(w);
        let (_, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(indexes(&r), (0..7).collect::<Vec<_>>());
        assert_eq!(r.records[6].1, b"n");
    }

    #[test]
    fn damage_before_the_last_segment_refuses_to_open() {
        let d = tempfile::tempdir().unwrap();
        let big = vec![3u8; (SEGMENT_BYTES / 3) as usize];
        let (seg, off) = {
            let (w, _) = Wal::open(d.path(), none).unwrap();
            for i in 0..5 {
                w.append(i, &big).unwrap();
                w.sync().unwrap();
            }
            assert!(w.segments() >= 2);
            let (seg, off, _) = record_end(&w, 0);
            (seg, off + RECORD_HEAD + 100)
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).unwrap();
        f.write_all_at(&[b[0] ^ 1], off).unwrap();
        drop(f);
        // Synced records followed it: cutting there would lose them, so
        // the log refuses to open instead of silently shortening.
        let e = Wal::open(d.path(), none).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn truncate_drops_the_tail_durably_and_stale_records_never_return() {
        let d = tempfile::tempdir().unwrap();
        {
            let (w, _) = Wal::open(d.path(), none).unwrap();
            fill(&w, 0..20);
            w.truncate(12).unwrap();
            assert_eq!(w.read(12).unwrap(), None);
            // Shorter records at the same indexes: the old, longer ones
            // must not be found behind them.
            for i in 12..14 {
                w.append(i, b"new").unwrap();
            }
            w.sync().unwrap();
        }
        let (_, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(indexes(&r), (0..14).collect::<Vec<_>>());
        assert_eq!(r.records[12].1, b"new");
        assert_eq!(r.records[11].1, payload(11));
    }

    #[test]
    fn purge_skips_old_records_and_allows_a_jump_past_the_end() {
        let d = tempfile::tempdir().unwrap();
        {
            let (w, _) = Wal::open(d.path(), none).unwrap();
            fill(&w, 0..10);
            w.purge_upto(4).unwrap();
            assert_eq!(w.read(4).unwrap(), None);
            assert_eq!(w.read(5).unwrap().unwrap(), payload(5));
            // A snapshot moved the log to 100: the log restarts there.
            w.purge_upto(99).unwrap();
            fill(&w, 100..103);
            assert_eq!(w.segments(), 2);
            w.purge_upto(100).unwrap();
            assert_eq!(w.segments(), 1, "the old segment is gone");
        }
        let purged = |_: &[u8]| Some(100);
        std::fs::write(d.path().join("meta"), {
            let mut b = crc32fast::hash(b"m").to_le_bytes().to_vec();
            b.extend_from_slice(b"m");
            b
        })
        .unwrap();
        let (_, r) = Wal::open(d.path(), purged).unwrap();
        assert_eq!(indexes(&r), vec![101, 102]);
    }

    #[test]
    fn segments_roll_and_chain() {
        let d = tempfile::tempdir().unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
        {
            let (w, _) = Wal::open(d.path(), none).unwrap();
            for i in 0..7 {
                w.append(i, &big).unwrap();
                w.sync().unwrap();
            }
            assert!(w.segments() >= 3);
        }
        let (w, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(indexes(&r), (0..7).collect::<Vec<_>>());
        // Two records per segment: truncating at 2 empties the second
        // segment and deletes the ones after it.
        w.truncate(2).unwrap();
        assert_eq!(w.segments(), 2);
        w.append(2, b"x").unwrap();
        w.sync().unwrap();
        drop(w);
        let (_, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(indexes(&r), vec![0, 1, 2]);
    }

    #[test]
    fn meta_is_replaced_atomically_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let (w, r) = Wal::open(d.path(), none).unwrap();
        assert!(r.meta.is_none());
        w.save_meta(b"one").unwrap();
        w.save_meta(b"two").unwrap();
        drop(w);
        let (_, r) = Wal::open(d.path(), none).unwrap();
        assert_eq!(r.meta.as_deref(), Some(&b"two"[..]));
        std::fs::write(d.path().join("meta"), b"\0\0\0\0two").unwrap();
        assert!(Wal::open(d.path(), none).is_err());
    }
}
