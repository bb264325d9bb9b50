//! Backups: Maintenance.Snapshot (what `etcdctl snapshot save` calls) and
//! restoring a member's data dir from such a file
//! (`lookout snapshot restore`).
//!
//! ```text
//!  Snapshot RPC ─> blocking task: ONE redb read txn
//!        pass 1: sum the row sizes (exact remaining_bytes, as etcd sends)
//!        pass 2: rows ─> 32 KiB chunks ─> bounded mpsc ─> gRPC stream
//!        last message: sha256 of everything before it (etcd's trailer)
//!  restore(file, dir): check magic + sha256 ─> fresh lookout.redb, one
//!        durable txn: kv rows (counters kept, raft position cleared), leases
//! ```
//!
//! The file is not etcd's bolt format (etcdctl only writes it; `lookout
//! snapshot restore` reads it): magic `LOOKOUT-BACKUP1\n`, then rows
//! `tag u8 | klen u32 | key | vlen u32 | value`, an end tag, zero padding
//! to a multiple of 512 bytes (etcdctl 3.4 refuses other lengths), then
//! the 32-byte sha256 of all preceding bytes, as etcd appends one to its
//! snapshot stream. A restored member carries no raft log, no membership
//! and no alarms of the old cluster: it starts a new cluster from its own
//! `--initial-cluster` (as `etcdctl snapshot restore` does), with the
//! same keys, revisions, compaction point, leases, and auth state (users,
//! roles, permissions, the enabled flag: a restored cluster keeps its
//! access control, as etcd's does).
//!
//! It must never hold the database in memory (rows stream through one
//! chunk buffer) and never restore into a data dir that has data.

use std::io::{BufReader, Read, Write};
use std::path::Path;

use bytes::Bytes;
use lookout_proto::pb::SnapshotResponse;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::{Error, Result};
use crate::mvcc::backend::{self, ALARMS, KV, LEASES, META_KEY, Meta};
use crate::raft::sm::snapshot::{TAG_AUTH, TAG_END, TAG_KV, TAG_LEASE, put_row};
use crate::store::Store;

/// First bytes of a backup file; the digit is the format version.
pub const BACKUP_MAGIC: &[u8; 16] = b"LOOKOUT-BACKUP1\n";
/// etcd's snapshot send buffer size.
const CHUNK: usize = 32 * 1024;

/// What [`restore`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub revision: i64,
    pub compact_revision: i64,
    /// Revision records (every version of every key, tombstones included).
    pub kv_records: u64,
    pub leases: u64,
}

// === Maintenance.Snapshot ===

/// Streams a consistent backup of `store` as etcd's Snapshot RPC does:
/// chunks with `remaining_bytes`, then one message holding the sha256.
/// The database is read from one read transaction in a blocking task;
/// the stream ends early (and the transaction closes) when the client
/// goes away.
pub fn snapshot(store: &Store) -> mpsc::Receiver<Result<SnapshotResponse, Status>> {
    let (tx, rx) = mpsc::channel(4);
    let shared = store.inner.shared.clone();
    let db = shared.db();
    let header = store.header(store.revision());
    tokio::task::spawn_blocking(move || {
        let sent = (|| -> Result<()> {
            let rtx = db.begin_read()?;
            let kv = rtx.open_table(KV)?;
            // redb may hold an apply whose log fsync is still running
            // (see `raft/sm/`): a backup carries synced writes only.
            shared.wait_synced(backend::read_meta(&kv)?.applied_index)?;
            let leases = rtx.open_table(LEASES)?;
            let auth = rtx.open_table(crate::auth::AUTH)?;
            // Pass 1: the exact size, so every chunk carries etcd's
            // remaining_bytes. Same transaction, so both passes agree.
            let mut total = BACKUP_MAGIC.len() as u64 + 1;
            for row in kv.iter()? {
                let (_, v) = row?;
                total += 1 + 4 + 16 + 4 + v.value().len() as u64;
            }
            total += leases.len()? * (1 + 4 + 8 + 4 + 8);
            for row in auth.iter()? {
                let (k, v) = row?;
                total += 1 + 4 + k.value().len() as u64 + 4 + v.value().len() as u64;
            }
            // etcdctl 3.4 accepts a snapshot only when its length is a
            // multiple of 512 plus the 32-byte sha256 (bolt's page rule):
            // zero padding after the end tag makes ours so.
            let padded = total.div_ceil(512) * 512;
            let mut w = ChunkSender {
                tx: &tx,
                header,
                buf: Vec::with_capacity(CHUNK),
                sha: Sha256::new(),
                total: padded,
                sent: 0,
            };
            w.write_all(BACKUP_MAGIC)?;
            for row in kv.iter()? {
                let (k, v) = row?;
                put_row(&mut w, TAG_KV, &k.value().to_be_bytes(), v.value())?;
            }
            for row in leases.iter()? {
                let (k, v) = row?;
                put_row(
                    &mut w,
                    TAG_LEASE,
                    &k.value().to_be_bytes(),
                    &v.value().to_be_bytes(),
                )?;
            }
            for row in auth.iter()? {
                let (k, v) = row?;
                put_row(&mut w, TAG_AUTH, k.value(), v.value())?;
            }
            w.write_all(&[TAG_END])?;
            w.write_all(&vec![0u8; (padded - total) as usize])?;
            w.flush()?;
            if w.sent != padded {
                return Err(Error::Internal(format!(
                    "snapshot size changed while streaming ({} != {padded})",
                    w.sent
                )));
            }
            let sha = w.sha.finalize();
            tx.blocking_send(Ok(SnapshotResponse {
                header,
                remaining_bytes: 0,
                blob: Bytes::copy_from_slice(&sha),
            }))
            .map_err(|_| Error::Internal("client went away".into()))?;
            tracing::info!(bytes = padded + 32, "snapshot sent");
            Ok(())
        })();
        if let Err(e) = sent {
            tracing::warn!(error = %e, "snapshot stream stopped");
            let _ = tx.blocking_send(Err(crate::error::to_status(e)));
        }
    });
    rx
}

/// Buffers rows into [`CHUNK`]-sized messages and sends them.
struct ChunkSender<'a> {
    tx: &'a mpsc::Sender<Result<SnapshotResponse, Status>>,
    header: Option<lookout_proto::pb::ResponseHeader>,
    buf: Vec<u8>,
    sha: Sha256,
    total: u64,
    sent: u64,
}

impl Write for ChunkSender<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.sha.update(&blob);
        self.sent += blob.len() as u64;
        let msg = SnapshotResponse {
            header: self.header,
            remaining_bytes: self.total.saturating_sub(self.sent),
            blob: blob.into(),
        };
        self.tx
            .blocking_send(Ok(msg))
            .map_err(|_| std::io::Error::other("snapshot client went away"))
    }
}

// === restore ===

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Storage(format!("snapshot file: {what}"))
}

/// Checks a backup's trailing sha256 without loading it.
///
/// # Errors
/// Unreadable, too short, or the hash does not match (a truncated or
/// altered file).
pub fn verify(file: &Path) -> Result<()> {
    let len = std::fs::metadata(file)?.len();
    let body = len
        .checked_sub(32)
        .filter(|b| *b >= BACKUP_MAGIC.len() as u64)
        .ok_or_else(|| bad("too short"))?;
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let mut sha = Sha256::new();
    let mut left = body;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        r.read_exact(&mut buf[..n])?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    r.read_exact(&mut want)?;
    if sha.finalize().as_slice() != want {
        return Err(bad("sha256 mismatch (truncated or corrupted)"));
    }
    Ok(())
}

/// Writes a member data dir from a backup made by `snapshot` (Maintenance.Snapshot): the keys,
/// revisions, compaction point and leases; no raft log and no membership,
/// so the member bootstraps a new cluster from its `--initial-cluster`.
///
/// # Errors
/// `data_dir` already holds a store, the file fails `verify` or is not
/// a Lookout backup, or writing fails.
pub fn restore(file: &Path, data_dir: &Path) -> Result<Restored> {
    if ["lookout.redb", "raft-log.redb", "raft-wal"]
        .iter()
        .any(|f| data_dir.join(f).exists())
    {
        return Err(Error::Storage(format!(
            "data-dir {:?} exists; restore only into a new directory",
            data_dir.display()
        )));
    }
    verify(file)?;
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)?;
    if &magic != BACKUP_MAGIC {
        return Err(bad("not a Lookout backup (no LOOKOUT-BACKUP1 header)"));
    }
    let db = backend::open_db(data_dir)?;
    let txn = db.begin_write()?;
    let mut out = Restored {
        revision: 0,
        compact_revision: 0,
        kv_records: 0,
        leases: 0,
    };
    {
        let mut kv = txn.open_table(KV)?;
        let mut leases = txn.open_table(LEASES)?;
        let mut auth = txn.open_table(crate::auth::AUTH)?;
        // Alarms name members of the old cluster; a new cluster starts clean.
        let _ = txn.open_table(ALARMS)?;
        loop {
            let mut tag = [0u8; 1];
            r.read_exact(&mut tag).map_err(|_| bad("truncated"))?;
            if tag[0] == TAG_END {
                break;
            }
            let k = read_field(&mut r)?;
            let v = read_field(&mut r)?;
            match tag[0] {
                TAG_KV => {
                    let key = u128::from_be_bytes(k.try_into().map_err(|_| bad("kv key"))?);
                    if key == META_KEY {
                        let m = Meta::decode(&v);
                        out.revision = m.rev;
                        out.compact_revision = m.compact_rev;
                        let fresh = Meta {
                            rev: m.rev,
                            compact_rev: m.compact_rev,
                            applied_index: 0,
                            applied: None,
                        };
                        kv.insert(key, fresh.encode().as_slice())?;
                    } else {
                        out.kv_records += 1;
                        kv.insert(key, v.as_slice())?;
                    }
                }
                TAG_LEASE => {
                    let id = i64::from_be_bytes(k.try_into().map_err(|_| bad("lease id"))?);
                    let ttl = i64::from_be_bytes(v.try_into().map_err(|_| bad("lease ttl"))?);
                    leases.insert(id, ttl)?;
                    out.leases += 1;
                }
                TAG_AUTH => {
                    auth.insert(k.as_slice(), v.as_slice())?;
                }
                t => return Err(bad(format!("unknown row tag {t}"))),
            }
        }
    }
    txn.commit()?;
    tracing::info!(
        data_dir = %data_dir.display(),
        revision = out.revision,
        records = out.kv_records,
        leases = out.leases,
        "restored member data from snapshot"
    );
    Ok(out)
}

fn read_field(r: &mut impl Read) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|_| bad("truncated"))?;
    let n = u32::from_be_bytes(len) as usize;
    let mut v = vec![0u8; n];
    r.read_exact(&mut v).map_err(|_| bad("truncated"))?;
    Ok(v)
}
