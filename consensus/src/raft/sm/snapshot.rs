//! Snapshot files: the row format (shared with backups), building one
//! from a redb read transaction, and installing a received one. Rows
//! stream between redb and the file; no snapshot is ever held whole.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use openraft::storage::Snapshot;
use redb::{ReadableDatabase, ReadableTable};

use super::{Shared, read_membership};
use crate::error::Result;
use crate::mvcc::backend::{self, ALARMS, KV, LEASES, MEMBERSHIP_KEY, RAFT_SM};
use crate::raft::type_config::{SnapshotMeta, StoredMembership, TypeConfig};

/// First bytes of a snapshot file; the trailing digit is the format version.
pub(crate) const SNAP_MAGIC: &[u8; 14] = b"LOOKOUT-SNAP1\n";

// Row tags, shared with backups (`server/snapshot_stream.rs`), which use the
// same row encoding for the tables they carry.
pub(crate) const TAG_END: u8 = 0;
pub(crate) const TAG_KV: u8 = 1;
pub(crate) const TAG_LEASE: u8 = 2;
const TAG_ALARM: u8 = 3;
const TAG_RAFT_SM: u8 = 4;
/// Auth rows (users, roles, flag, revision). A store that never used auth
/// writes none, so its snapshots read on members built before auth.
pub(crate) const TAG_AUTH: u8 = 5;

/// Writer that keeps a running CRC of everything written.
struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One row: tag, then key and value each as a u32 length and the bytes.
pub(crate) fn put_row(w: &mut impl Write, tag: u8, k: &[u8], v: &[u8]) -> std::io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(k.len() as u32).to_be_bytes())?;
    w.write_all(k)?;
    w.write_all(&(v.len() as u32).to_be_bytes())?;
    w.write_all(v)
}

pub(super) fn build(sh: &Shared) -> Result<(SnapshotMeta, PathBuf)> {
    let db = sh.db();
    let tx = db.begin_read()?;
    let kv = tx.open_table(KV)?;
    let meta = backend::read_meta(&kv)?;
    // The snapshot claims every entry up to `meta.applied`: they must be
    // in the log durably before a purge can rely on the snapshot.
    sh.wait_synced(meta.applied_index)?;
    let membership: StoredMembership = {
        let t = tx.open_table(RAFT_SM)?;
        match t.get(MEMBERSHIP_KEY)? {
            Some(v) => bincode::deserialize(v.value())
                .map_err(|e| crate::error::Error::Storage(e.to_string()))?,
            None => StoredMembership::default(),
        }
    };
    let n = sh.snapshots_built.fetch_add(1, Ordering::Relaxed);
    let id = match &meta.applied {
        Some(l) => format!(
            "{}-{}-{}-{n}",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("none-{n}"),
    };
    let dir = sh.dir.join("snap");
    let part = dir.join(format!("{id}.part"));
    let path = dir.join(format!("{id}.snap"));
    let f = std::fs::File::create(&part)?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, f),
        crc: crc32fast::Hasher::new(),
    };
    w.write_all(SNAP_MAGIC)?;
    for row in kv.iter()? {
        let (k, v) = row?;
        put_row(&mut w, TAG_KV, &k.value().to_be_bytes(), v.value())?;
    }
    for row in tx.open_table(LEASES)?.iter()? {
        let (k, v) = row?;
        put_row(
            &mut w,
            TAG_LEASE,
            &k.value().to_be_bytes(),
            &v.value().to_be_bytes(),
        )?;
    }
    for row in tx.open_table(ALARMS)?.iter()? {
        let (k, v) = row?;
        put_row(
            &mut w,
            TAG_ALARM,
            &k.value().to_be_bytes(),
            &v.value().to_be_bytes(),
        )?;
    }
    for row in tx.open_table(RAFT_SM)?.iter()? {
        let (k, v) = row?;
        put_row(&mut w, TAG_RAFT_SM, k.value().as_bytes(), v.value())?;
    }
    for row in tx.open_table(crate::auth::AUTH)?.iter()? {
        let (k, v) = row?;
        put_row(&mut w, TAG_AUTH, k.value(), v.value())?;
    }
    w.write_all(&[TAG_END])?;
    let crc = w.crc.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&crc.to_be_bytes())?;
    let f = inner
        .into_inner()
        .map_err(|e| crate::error::Error::Storage(e.to_string()))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&part, &path)?;
    let smeta = SnapshotMeta {
        last_log_id: meta.applied,
        last_membership: membership,
        snapshot_id: id,
    };
    set_current(&sh.dir, &smeta, &path)?;
    tracing::info!(snapshot = %smeta.snapshot_id, "built snapshot");
    Ok((smeta, path))
}

/// Records `path` as the current snapshot (atomically) and deletes older
/// snapshot files.
pub(super) fn set_current(dir: &Path, meta: &SnapshotMeta, path: &Path) -> Result<()> {
    let snap = dir.join("snap");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = bincode::serialize(&(meta, &name))
        .map_err(|e| crate::error::Error::Storage(e.to_string()))?;
    let tmp = snap.join("current.meta.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, snap.join("current.meta"))?;
    if let Ok(d) = std::fs::File::open(&snap) {
        let _ = d.sync_all();
    }
    // Older files may still be streaming to a follower through an open
    // handle; unlinking leaves those readers their data.
    for e in std::fs::read_dir(&snap)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".snap") && n != name {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

pub(super) fn current_snapshot(dir: &Path) -> std::io::Result<Option<Snapshot<TypeConfig>>> {
    let snap = dir.join("snap");
    let bytes = match std::fs::read(snap.join("current.meta")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (meta, name): (SnapshotMeta, String) =
        bincode::deserialize(&bytes).map_err(std::io::Error::other)?;
    let f = std::fs::File::open(snap.join(name))?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(f)),
    }))
}

fn read_exact_vec(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

pub(super) fn bad(what: &str) -> crate::error::Error {
    crate::error::Error::Storage(format!("snapshot file: {what}"))
}

/// Replaces the store's content with the snapshot file's, in one durable
/// transaction, then reloads the in-memory state.
pub(crate) fn install(sh: &Shared, meta: &SnapshotMeta, mut file: std::fs::File) -> Result<()> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    // Keep a copy as this member's current snapshot (it may have to send
    // it on); written while the rows are read.
    let dir = sh.dir.join("snap");
    let n = sh.snapshots_built.fetch_add(1, Ordering::Relaxed);
    let keep = dir.join(format!("installed-{}-{n}.snap", meta.snapshot_id));
    let keep_part = dir.join(format!("installed-{}-{n}.part", meta.snapshot_id));
    let mut copy = BufWriter::new(std::fs::File::create(&keep_part)?);
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    let mut take = |r: &mut BufReader<std::fs::File>, n: usize| -> Result<Vec<u8>> {
        let v = read_exact_vec(r, n).map_err(|_| bad("truncated"))?;
        crc.update(&v);
        copy.write_all(&v)?;
        Ok(v)
    };
    if take(&mut r, SNAP_MAGIC.len())? != SNAP_MAGIC {
        return Err(bad("unknown format (not LOOKOUT-SNAP1)"));
    }
    let _file = sh.file_lock.lock();
    let db = sh.db();
    let txn = db.begin_write()?;
    txn.delete_table(KV)?;
    txn.delete_table(LEASES)?;
    txn.delete_table(ALARMS)?;
    txn.delete_table(RAFT_SM)?;
    txn.delete_table(crate::auth::AUTH)?;
    {
        let mut kv = txn.open_table(KV)?;
        let mut leases = txn.open_table(LEASES)?;
        let mut alarms = txn.open_table(ALARMS)?;
        let mut raft_sm = txn.open_table(RAFT_SM)?;
        let mut auth = txn.open_table(crate::auth::AUTH)?;
        loop {
            let tag = take(&mut r, 1)?[0];
            if tag == TAG_END {
                break;
            }
            let kl = u32::from_be_bytes(take(&mut r, 4)?.try_into().map_err(|_| bad("len"))?);
            let k = take(&mut r, kl as usize)?;
            let vl = u32::from_be_bytes(take(&mut r, 4)?.try_into().map_err(|_| bad("len"))?);
            let v = take(&mut r, vl as usize)?;
            let u64_of = |b: &[u8]| -> Result<u64> {
                Ok(u64::from_be_bytes(b.try_into().map_err(|_| bad("u64"))?))
            };
            match tag {
                TAG_KV => {
                    let key =
                        u128::from_be_bytes(k.as_slice().try_into().map_err(|_| bad("kv key"))?);
                    kv.insert(key, v.as_slice())?;
                }
                TAG_LEASE => {
                    leases.insert(u64_of(&k)? as i64, u64_of(&v)? as i64)?;
                }
                TAG_ALARM => {
                    alarms.insert(u64_of(&k)?, u64_of(&v)?)?;
                }
                TAG_RAFT_SM => {
                    let key = String::from_utf8(k).map_err(|_| bad("raft_sm key"))?;
                    raft_sm.insert(key.as_str(), v.as_slice())?;
                }
                TAG_AUTH => {
                    auth.insert(k.as_slice(), v.as_slice())?;
                }
                _ => return Err(bad("unknown row tag")),
            }
        }
    }
    let want = crc.finalize();
    let got = read_u32(&mut r).map_err(|_| bad("missing checksum"))?;
    if want != got {
        // Dropping the transaction aborts it: the store is untouched.
        return Err(bad("checksum mismatch"));
    }
    copy.write_all(&got.to_be_bytes())?;
    txn.commit()?;
    let state = backend::load_state(&db)?;
    let membership = read_membership(&db)?;
    let old_rev = sh.state.load().rev;
    let rev = state.rev;
    sh.state.store(Arc::new(state));
    sh.membership.store(Arc::new(membership));
    // Watchers skipped the installed revisions: each re-reads them from
    // history (or is cancelled with compact_revision if they are gone).
    sh.hub.reset(rev);
    sh.refresh_leases();
    sh.snapshots_installed.fetch_add(1, Ordering::Relaxed);
    drop(_file);
    let f = copy
        .into_inner()
        .map_err(|e| crate::error::Error::Storage(e.to_string()))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&keep_part, &keep)?;
    set_current(&sh.dir, meta, &keep)?;
    tracing::info!(
        snapshot = %meta.snapshot_id,
        from_revision = old_rev,
        revision = rev,
        "installed snapshot"
    );
    Ok(())
}
