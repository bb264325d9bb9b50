//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay
//! tests: each takes untrusted bytes and runs them through the same
//! decoder a member runs on what a peer sent or a disk held. Not an API:
//! the functions exist so that private decoders can be reached from
//! outside the crate, and they return nothing but "did not panic".
//!
//! ```text
//!  bytes ─> wal_segment      raft-wal/ segment file ─> Wal::open, read, bincode Entry/Meta
//!        ─> snapshot_install raft snapshot file    ─> sm::install (a scratch redb)
//!        ─> backup_restore   Maintenance backup    ─> snapshot_stream::restore
//!        ─> peer_message     PeerRequest (prost)   ─> bincode of every peer payload
//! ```
//!
//! Checksums (crc32 of WAL records and snapshots, sha256 of backups) would
//! stop a fuzzer at the first byte it changes, so every target taking a
//! file has a "sealed" mode: the first input byte picks raw (the bytes as
//! they are) or sealed (the harness writes the checksums the decoder
//! expects, so the mutated content behind them is what gets parsed).
//!
//! It must never write outside the scratch directories it makes, and
//! never keep state between inputs that changes what an input does
//! (except the scratch store of `snapshot_install`, which every install
//! replaces whole).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use lookout_proto::peer::PeerRequest;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message;

use crate::raft::type_config::{Entry, NodeId, TypeConfig};

/// A scratch directory on tmpfs when there is one: the decoders fsync,
/// and a disk fsync per input would make the fuzzer crawl.
fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A directory removed again when dropped.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(tag: &str) -> Scratch {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = scratch_root().join(format!("lookout-fuzz-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("scratch dir");
    Scratch(p)
}

/// Splits off the mode byte: `true` for sealed.
fn mode(data: &[u8]) -> Option<(bool, &[u8])> {
    let (&m, rest) = data.split_first()?;
    Some((m & 1 == 1, rest))
}

// === raft log (wal.rs, log_store.rs) ===

/// A WAL segment: raw, the bytes are the whole file (named as segment 1
/// from index 1); sealed, the harness writes a valid header and cuts the
/// rest into records (`len:u16` little endian + payload, each stamped
/// with its index and chained crc), then flips the byte named by the last
/// four input bytes, if they point inside the file. Then the log is opened,
/// every record read back and decoded as `raft/log_store/` decodes it.
pub fn wal_segment(data: &[u8]) {
    let Some((sealed, body)) = mode(data) else {
        return;
    };
    let dir = scratch_dir("wal");
    let wal_dir = dir.path().join("raft-wal");
    std::fs::create_dir_all(&wal_dir).expect("wal dir");
    let file = if sealed {
        sealed_segment(body)
    } else {
        body.to_vec()
    };
    std::fs::write(wal_dir.join(crate::raft::wal::seg_name(1, 1)), &file).expect("write segment");
    // The meta file, when the input holds one, follows a 0xFF 0xFE marker.
    if let Some(at) = body.windows(2).position(|w| w == [0xff, 0xfe]) {
        let meta = &body[at + 2..];
        let mut m = crc32fast::hash(meta).to_le_bytes().to_vec();
        m.extend_from_slice(meta);
        std::fs::write(wal_dir.join("meta"), m).expect("write meta");
    }
    let purged_of = |b: &[u8]| crate::raft::log_store::purged_index(b);
    let Ok((wal, rec)) = crate::raft::wal::Wal::open(&wal_dir, purged_of) else {
        return;
    };
    if let Some(m) = &rec.meta {
        let _ = crate::raft::log_store::decode_meta(m);
    }
    for (i, payload) in &rec.records {
        let _ = bincode::deserialize::<Entry>(payload);
        let _ = wal.read(*i);
    }
    // The writer side must keep working on whatever was recovered.
    let next = rec.records.last().map_or(1, |(i, _)| i + 1);
    if wal.append(next, b"after-recovery").is_ok() && wal.write().is_ok() {
        let _ = wal.sync();
        assert_eq!(
            wal.read(next).ok().flatten().as_deref(),
            Some(&b"after-recovery"[..]),
            "a record appended after recovery must read back"
        );
    }
}

fn sealed_segment(body: &[u8]) -> Vec<u8> {
    let (records, flip) = match body.len().checked_sub(4) {
        Some(n) => (
            &body[..n],
            Some(u32::from_le_bytes(body[n..].try_into().expect("4 bytes"))),
        ),
        None => (body, None),
    };
    let seed = 7;
    let mut out = crate::raft::wal::header_bytes(1, seed).to_vec();
    let mut crc = seed;
    let mut index = 1u64;
    let mut rest = records;
    while rest.len() >= 2 {
        let want = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let payload = &rest[2..][..want.min(rest.len() - 2)];
        rest = &rest[2 + payload.len()..];
        if payload.is_empty() {
            continue;
        }
        let len = payload.len() as u32;
        crc = crate::raft::wal::record_crc(crc, len, index, payload);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(payload);
        index += 1;
    }
    // Preallocated zeros, as a real segment has behind its records.
    out.resize(out.len() + 64, 0);
    if let Some(f) = flip {
        let at = f as usize % (out.len() + 1);
        if let Some(b) = out.get_mut(at) {
            *b ^= (f >> 24) as u8 | 1;
        }
    }
    out
}

// === raft snapshots (sm.rs) ===

/// One scratch state machine for every install: opening redb per input
/// would be most of the time spent.
fn scratch_sm() -> &'static Mutex<(Scratch, Arc<crate::raft::sm::Shared>)> {
    static SM: OnceLock<Mutex<(Scratch, Arc<crate::raft::sm::Shared>)>> = OnceLock::new();
    SM.get_or_init(|| {
        let dir = scratch_dir("snap");
        let tokens = Arc::new(crate::auth::Tokens::new(Default::default()));
        let sh = crate::raft::sm::Shared::open_with(dir.path(), tokens).expect("scratch store");
        Mutex::new((dir, sh))
    })
}

/// A raft snapshot file as a leader sends it: raw, or sealed (the
/// harness prefixes the magic and appends the crc32 the installer checks).
/// Installed into a scratch state machine, then the state is reloaded as
/// the installer does.
pub fn snapshot_install(data: &[u8]) {
    let Some((sealed, body)) = mode(data) else {
        return;
    };
    let mut file = Vec::with_capacity(body.len() + 20);
    if sealed {
        file.extend_from_slice(crate::raft::sm::snapshot::SNAP_MAGIC);
        file.extend_from_slice(body);
        let crc = crc32fast::hash(&file);
        file.extend_from_slice(&crc.to_be_bytes());
    } else {
        file.extend_from_slice(body);
    }
    let guard = scratch_sm().lock();
    let (dir, sh) = &*guard;
    let path = dir.path().join("input.snap");
    std::fs::write(&path, &file).expect("write snapshot");
    let f = std::fs::File::open(&path).expect("open snapshot");
    let meta = openraft::SnapshotMeta::<NodeId, crate::raft::type_config::MemberNode> {
        last_log_id: None,
        last_membership: Default::default(),
        snapshot_id: "fuzz".into(),
    };
    let _ = crate::raft::sm::snapshot::install(sh, &meta, f);
}

// === backups (snapshot_stream.rs) ===

/// A backup file as `lookout snapshot restore` reads it: raw, or sealed
/// (magic in front, the sha256 trailer appended). Restored into a fresh
/// data dir, which is then opened as a store would open it.
pub fn backup_restore(data: &[u8]) {
    let Some((sealed, body)) = mode(data) else {
        return;
    };
    let dir = scratch_dir("restore");
    let path = dir.path().join("backup.db");
    {
        let mut f = std::fs::File::create(&path).expect("backup file");
        if sealed {
            use sha2::Digest;
            let mut sha = sha2::Sha256::new();
            sha.update(crate::server::snapshot_stream::BACKUP_MAGIC);
            sha.update(body);
            f.write_all(crate::server::snapshot_stream::BACKUP_MAGIC)
                .expect("write");
            f.write_all(body).expect("write");
            f.write_all(&sha.finalize()).expect("write");
        } else {
            f.write_all(body).expect("write");
        }
    }
    let data_dir = dir.path().join("member");
    if crate::server::snapshot_stream::restore(&path, &data_dir).is_ok() {
        let tokens = Arc::new(crate::auth::Tokens::new(Default::default()));
        let _ = crate::raft::sm::Shared::open_with(&data_dir, tokens);
    }
}

// === peer messages (peer.rs) ===

/// A peer gRPC message: the envelope decoded with prost, its payload with
/// bincode as every peer method decodes it (the first byte picks the
/// method, so each payload type gets the whole input too).
pub fn peer_message(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let envelope = PeerRequest::decode(rest).ok();
    let payload: &[u8] = match &envelope {
        Some(env) if which & 0x80 != 0 => &env.payload,
        _ => rest,
    };
    match which % 5 {
        0 => drop(bincode::deserialize::<AppendEntriesRequest<TypeConfig>>(
            payload,
        )),
        1 => drop(bincode::deserialize::<VoteRequest<NodeId>>(payload)),
        2 => drop(bincode::deserialize::<InstallSnapshotRequest<TypeConfig>>(
            payload,
        )),
        3 => drop(bincode::deserialize::<crate::raft::peer::Forward>(payload)),
        _ => drop(bincode::deserialize::<
            crate::error::Result<crate::raft::peer::ForwardOk>,
        >(payload)),
    }
}

#[cfg(test)]
mod tests {
    //! The committed corpus (`fuzz/corpus/<target>/`) replayed through
    //! every target in the ordinary test run, so a regression input stays
    //! fixed without a fuzzer; and the writer of the seed inputs (real
    //! encodings made by the real writers), run by hand with `--ignored`.

    use super::*;
    use crate::mvcc::request::Request;
    use crate::raft::type_config::{Batch, LogId};
    use crate::store::Store;
    use lookout_proto::pb::{LeaseGrantRequest, PutRequest};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            out.push((p, b));
        }
        out.sort();
        assert!(!out.is_empty(), "no corpus in {}", dir.display());
        out
    }

    fn replay(target: &str, f: fn(&[u8])) {
        for (p, b) in corpus(target) {
            let r = std::panic::catch_unwind(|| f(&b));
            assert!(r.is_ok(), "{target}: {} panicked", p.display());
        }
    }

    #[test]
    fn wal_corpus_replays() {
        replay("wal_segment", wal_segment);
    }

    #[test]
    fn snapshot_corpus_replays() {
        replay("snapshot_install", snapshot_install);
    }

    #[test]
    fn backup_corpus_replays() {
        replay("backup_restore", backup_restore);
    }

    #[test]
    fn peer_corpus_replays() {
        replay("peer_message", peer_message);
    }

    fn entry(i: u64, req: Request) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 7), i),
            payload: EntryPayload::Normal(Batch(vec![req])),
        }
    }

    fn put(k: &str, v: &str) -> Request {
        Request::Put(PutRequest {
            key: k.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        })
    }

    fn write_seed(target: &str, name: &str, bytes: &[u8]) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }

    /// Writes the seed inputs: `cargo test -p lookout-consensus
    /// write_fuzz_seeds -- --ignored`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "writes files into fuzz/corpus"]
    async fn write_fuzz_seeds() {
        // Raft log: a real segment as the writer leaves it, and the same
        // records in the sealed form.
        let entries = vec![
            entry(1, put("a", "1")),
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 7), 2),
                payload: EntryPayload::Blank,
            },
            entry(3, Request::LeaseGrant { id: 5, ttl: 10 }),
            entry(4, Request::Compact { revision: 2 }),
        ];
        let payloads: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| bincode::serialize(e).unwrap())
            .collect();
        let dir = scratch_dir("seed-wal");
        let (wal, _) = crate::raft::wal::Wal::open(dir.path(), |_| None).unwrap();
        for (i, p) in payloads.iter().enumerate() {
            wal.append(i as u64 + 1, p).unwrap();
        }
        wal.write().unwrap();
        wal.sync().unwrap();
        drop(wal);
        let seg = std::fs::read(dir.path().join(crate::raft::wal::seg_name(1, 1))).unwrap();
        let used = 24 + payloads.iter().map(|p| 16 + p.len()).sum::<usize>();
        let mut raw = vec![0u8];
        raw.extend_from_slice(&seg[..used + 64]);
        write_seed("wal_segment", "raw-4-records", &raw);
        let mut sealed = vec![1u8];
        for p in &payloads {
            sealed.extend_from_slice(&(p.len() as u16).to_le_bytes());
            sealed.extend_from_slice(p);
        }
        let mut meta = sealed.clone();
        let m = crate::raft::log_store::Meta::default();
        meta.extend_from_slice(&[0xff, 0xfe]);
        meta.extend_from_slice(&bincode::serialize(&m).unwrap());
        sealed.extend_from_slice(&u32::MAX.to_le_bytes());
        write_seed("wal_segment", "sealed-4-records", &sealed);
        write_seed("wal_segment", "sealed-with-meta", &meta);

        // Peer messages.
        let vote = VoteRequest::<NodeId>::new(
            openraft::Vote::new(2, 7),
            Some(LogId::new(CommittedLeaderId::new(1, 7), 4)),
        );
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(2, 7),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 7), 1)),
            entries: entries.clone(),
            leader_commit: Some(LogId::new(CommittedLeaderId::new(1, 7), 3)),
        };
        let fwd = crate::raft::peer::Forward::Propose(vec![put("k", "v")]);
        let ok: crate::error::Result<crate::raft::peer::ForwardOk> =
            Ok(crate::raft::peer::ForwardOk::Index(9));
        for (sel, name, payload) in [
            (0u8, "append", bincode::serialize(&append).unwrap()),
            (1, "vote", bincode::serialize(&vote).unwrap()),
            (3, "forward", bincode::serialize(&fwd).unwrap()),
            (4, "forward-ok", bincode::serialize(&ok).unwrap()),
        ] {
            let mut b = vec![sel];
            b.extend_from_slice(&payload);
            write_seed("peer_message", name, &b);
            let env = PeerRequest {
                version: crate::raft::peer::PEER_VERSION,
                cluster_id: 42,
                payload: payload.into(),
            };
            let mut b = vec![sel | 0x80];
            b.extend_from_slice(&env.encode_to_vec());
            write_seed("peer_message", &format!("{name}-envelope"), &b);
        }

        // A raft snapshot and a backup of a store with keys, a deleted
        // key, a lease and a compaction.
        let sdir = scratch_dir("seed-store");
        let store = Store::open(crate::StoreConfig::new(sdir.path().join("data"))).unwrap();
        let mut tries = 0;
        while store
            .put(PutRequest {
                key: b"a".to_vec().into(),
                value: b"1".to_vec().into(),
                ..Default::default()
            })
            .await
            .is_err()
        {
            tries += 1;
            assert!(tries < 200, "no leader");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let lease = store
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .unwrap();
        for (k, v) in [("a", "2"), ("b", "x"), ("c/d", "y")] {
            store
                .put(PutRequest {
                    key: k.as_bytes().to_vec().into(),
                    value: v.as_bytes().to_vec().into(),
                    lease: if k == "b" { lease.id } else { 0 },
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let mut rx = crate::server::snapshot_stream::snapshot(&store);
        let mut backup = Vec::new();
        while let Some(m) = rx.recv().await {
            backup.extend_from_slice(&m.unwrap().blob);
        }
        let mut raw = vec![0u8];
        raw.extend_from_slice(&backup);
        write_seed("backup_restore", "raw-store", &raw);
        let mut sealed = vec![1u8];
        sealed.extend_from_slice(&backup[16..backup.len() - 32]);
        write_seed("backup_restore", "sealed-store", &sealed);

        store.raft().trigger().snapshot().await.unwrap();
        let snap_dir = sdir.path().join("data/snap");
        let mut file = None;
        for _ in 0..200 {
            file = std::fs::read_dir(&snap_dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "snap"));
            if file.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let snap = std::fs::read(file.expect("a snapshot file")).unwrap();
        let mut raw = vec![0u8];
        raw.extend_from_slice(&snap);
        write_seed("snapshot_install", "raw-store", &raw);
        let mut sealed = vec![1u8];
        sealed
            .extend_from_slice(&snap[crate::raft::sm::snapshot::SNAP_MAGIC.len()..snap.len() - 4]);
        write_seed("snapshot_install", "sealed-store", &sealed);
        store.close();
    }
}
