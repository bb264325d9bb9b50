//! Opening the log: every segment read back in order, the checksum chain
//! checked across segments, a torn tail cut (only the last segment can
//! have one: nothing is written to a segment after the next one exists),
//! purged records skipped, and what remains made durable before anything
//! is appended.

use std::fs::OpenOptions;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    HEADER, MAX_RECORD, RECORD_HEAD, corrupt, header_bytes, parse_name, preallocate,
    read_meta_file, record_crc, sync_dir,
};
use super::{Index, Loc, Recovered, Segment, Tail, Wal};

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
        let names = segment_files(dir)?;
        let meta = read_meta(dir)?;
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

        let mut o = Opening {
            purged,
            rec: Recovered {
                meta,
                ..Default::default()
            },
            index: Index::default(),
            tail: Tail {
                seq: 0,
                pos: 0,
                zeroed: 0,
                crc: 0,
                next: None,
                buf: Vec::new(),
                pending: Vec::new(),
                pending_first: 0,
                failed: false,
            },
            prev: None,
        };
        let n = names.len();
        for (k, (seq, first_index, path)) in names.into_iter().enumerate() {
            o.segment(seq, first_index, path, k + 1 == n)?;
        }
        let Opening {
            mut index,
            tail,
            rec,
            ..
        } = o;
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
}

/// The segment files in `dir`, by sequence number: (seq, first index,
/// path). Leftover `.tmp` files are removed.
fn segment_files(dir: &Path) -> std::io::Result<Vec<(u64, u64, PathBuf)>> {
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
    Ok(names)
}

fn read_meta(dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(dir.join("meta")) {
        Ok(b) => Ok(Some(read_meta_file(&b)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What opening has gathered so far, carried from one segment to the next.
struct Opening {
    purged: Option<u64>,
    rec: Recovered,
    index: Index,
    tail: Tail,
    /// (last index, last crc) of the segment read before.
    prev: Option<(Option<u64>, u32)>,
}

/// Where reading one segment's records stopped.
struct Scanned {
    /// Offset just after the last good record.
    pos: u64,
    /// The chained crc after it.
    crc: u32,
    /// The index the next record would carry.
    next: u64,
    /// Something other than a record or preallocated zeros follows `pos`.
    torn: bool,
}

impl Opening {
    fn segment(
        &mut self,
        seq: u64,
        first_index: u64,
        path: PathBuf,
        is_last: bool,
    ) -> std::io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, &file);
        let seed = self.header(&mut r, first_index, &path)?;
        let Scanned {
            pos,
            crc,
            next,
            torn,
        } = self.records(&mut r, seq, first_index, seed, size, &path)?;
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
            self.rec.cut_tail = true;
        }
        file.sync_all()?;
        self.prev = Some(((next > first_index).then(|| next - 1), crc));
        self.index.segs.insert(
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
        self.tail.resume_at(seq, pos, crc, next);
        Ok(())
    }

    /// Checks a segment's header and that it continues the checksum chain
    /// of the segment before; returns its seed.
    fn header(&self, r: &mut impl Read, first_index: u64, path: &Path) -> std::io::Result<u32> {
        let mut h = [0u8; HEADER as usize];
        r.read_exact(&mut h)
            .map_err(|e| corrupt(format!("{}: header: {e}", path.display())))?;
        let seed = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
        if h != header_bytes(first_index, seed) {
            return Err(corrupt(format!("{}: bad segment header", path.display())));
        }
        // A segment continuing the one before carries its last crc.
        if let Some((Some(last), crc)) = self.prev
            && last + 1 == first_index
            && crc != seed
        {
            return Err(corrupt(format!(
                "{}: checksum chain broken",
                path.display()
            )));
        }
        Ok(seed)
    }

    /// Reads records until the first one that is missing, torn or out of
    /// order, indexing those after the purged index.
    fn records(
        &mut self,
        r: &mut impl Read,
        seq: u64,
        first_index: u64,
        seed: u32,
        size: u64,
        path: &Path,
    ) -> std::io::Result<Scanned> {
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
            if self.purged.is_some_and(|p| idx <= p) {
                self.index.dropped = Some(loc);
                continue;
            }
            if self.index.locs.is_empty() {
                self.index.first = idx;
            } else if self.index.first + self.index.locs.len() as u64 != idx {
                return Err(corrupt(format!(
                    "{}: record {idx} leaves a hole after {}",
                    path.display(),
                    self.index.first + self.index.locs.len() as u64 - 1
                )));
            }
            self.index.locs.push_back(loc);
            self.rec.records.push((idx, payload));
        }
        Ok(Scanned {
            pos,
            crc,
            next,
            torn,
        })
    }
}
