//! The on-disk layout in redb, and the rebuild of the in-memory state from
//! it on start.
//!
//! ```text
//!   kv:       u128 revision (main<<64|sub) -> protobuf KeyValue (version 0 = tombstone)
//!             u128::MAX (META_KEY)         -> Meta: current rev, compact rev, applied log id
//!   leases:   lease ID -> granted TTL (seconds)
//!   alarms:   member ID -> alarm bits (1 << etcd AlarmType)
//!   raft_sm:  "membership" -> bincode StoredMembership (last applied one)
//!   auth:     users, roles, enabled flag, auth revision (auth/state.rs)
//! ```
//!
//! The raft log lives in its own file (see `raft/log_store/`).
//!
//! The counters live in the kv table under the largest key on purpose:
//! that key shares the rightmost leaf with the newest revisions, a page
//! every commit dirties anyway, so recording them costs no extra page
//! write (and no second table root) in the fsync that acknowledges writes.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use lookout_proto::mvccpb::KeyValue;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::Result;
use crate::mvcc::keyindex::{KeyIndex, LiveKv};
use crate::mvcc::revision::Revision;
use crate::mvcc::state::{LeaseState, MvccState};

pub(crate) const KV: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("kv");
pub(crate) const LEASES: TableDefinition<'_, i64, i64> = TableDefinition::new("leases");
pub(crate) const ALARMS: TableDefinition<'_, u64, u64> = TableDefinition::new("alarms");
pub(crate) const RAFT_SM: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_sm");
/// Key of the last applied membership in [`RAFT_SM`].
pub(crate) const MEMBERSHIP_KEY: &str = "membership";

/// Key of the counters record in the kv table (after every revision).
pub(crate) const META_KEY: u128 = u128::MAX;

/// The counters a restart and raft need, stored in one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub rev: i64,
    pub compact_rev: i64,
    pub applied_index: u64,
    /// Raft's last applied log id (term, leader node, index); `None`
    /// before the first entry (whose id is all zeros, so it needs a flag).
    pub applied: Option<openraft::LogId<u64>>,
}

impl Meta {
    pub(crate) fn encode(&self) -> [u8; 49] {
        let mut b = [0u8; 49];
        b[..8].copy_from_slice(&self.rev.to_be_bytes());
        b[8..16].copy_from_slice(&self.compact_rev.to_be_bytes());
        b[16..24].copy_from_slice(&self.applied_index.to_be_bytes());
        if let Some(l) = &self.applied {
            b[24] = 1;
            b[25..33].copy_from_slice(&l.leader_id.term.to_be_bytes());
            b[33..41].copy_from_slice(&l.leader_id.node_id.to_be_bytes());
            b[41..49].copy_from_slice(&l.index.to_be_bytes());
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Self {
        let n = |r: std::ops::Range<usize>| -> [u8; 8] {
            b.get(r).and_then(|s| s.try_into().ok()).unwrap_or_default()
        };
        let applied = (b.get(24) == Some(&1)).then(|| {
            openraft::LogId::new(
                openraft::CommittedLeaderId::new(
                    u64::from_be_bytes(n(25..33)),
                    u64::from_be_bytes(n(33..41)),
                ),
                u64::from_be_bytes(n(41..49)),
            )
        });
        Self {
            rev: i64::from_be_bytes(n(0..8)),
            compact_rev: i64::from_be_bytes(n(8..16)),
            applied_index: u64::from_be_bytes(n(16..24)),
            applied,
        }
    }
}

/// Reads the counters record (zeros for a fresh store).
pub(crate) fn read_meta<T: ReadableTable<u128, &'static [u8]>>(kv: &T) -> Result<Meta> {
    Ok(kv
        .get(META_KEY)?
        .map(|v| Meta::decode(v.value()))
        .unwrap_or_default())
}

/// Opens (or creates) the store file `<dir>/lookout.redb` with its tables.
///
/// # Errors
/// Any redb or I/O failure.
pub fn open_db(dir: &Path) -> Result<Database> {
    std::fs::create_dir_all(dir).map_err(|e| crate::error::Error::Storage(e.to_string()))?;
    let db = Database::create(dir.join("lookout.redb"))?;
    let tx = db.begin_write()?;
    {
        tx.open_table(KV)?;
        tx.open_table(LEASES)?;
        tx.open_table(ALARMS)?;
        tx.open_table(RAFT_SM)?;
        tx.open_table(crate::auth::AUTH)?;
    }
    tx.commit()?;
    Ok(db)
}

/// Rebuilds the key index, leases and counters from the tables.
///
/// # Errors
/// Any redb failure or an undecodable record.
pub fn load_state(db: &Database) -> Result<MvccState> {
    let tx = db.begin_read()?;
    let kv = tx.open_table(KV)?;
    let meta = read_meta(&kv)?;
    let mut st = MvccState {
        rev: meta.rev.max(1),
        compact_rev: meta.compact_rev,
        applied_index: meta.applied_index,
        applied_log: meta.applied,
        ..Default::default()
    };
    for row in tx.open_table(ALARMS)?.iter()? {
        let (m, bits) = row?;
        st.alarms.insert(m.value(), bits.value());
    }
    // A file from before auth existed has no auth table: auth is off.
    match tx.open_table(crate::auth::AUTH) {
        Ok(t) => st.auth = Arc::new(crate::auth::AuthState::load(&t)?),
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    for row in tx.open_table(LEASES)?.iter()? {
        let (id, ttl) = row?;
        st.leases.insert(
            id.value(),
            Arc::new(LeaseState {
                id: id.value(),
                ttl: ttl.value(),
                keys: Default::default(),
            }),
        );
    }
    // Replaying in revision order rebuilds each key's generations exactly.
    let mut keys: std::collections::BTreeMap<Bytes, KeyIndex> = Default::default();
    for row in kv.range(..META_KEY)? {
        let (k, v) = row?;
        let rev = Revision::from_key(k.value());
        let live = LiveKv::from_encoded(Bytes::copy_from_slice(v.value()))?;
        let ki = keys.entry(live.kv.key.clone()).or_default();
        if live.kv.version == 0 {
            ki.tombstone(rev);
        } else {
            ki.put(rev, live);
        }
        st.rev = st.rev.max(rev.main);
    }
    for (k, ki) in keys {
        if let Some(live) = &ki.live
            && live.kv.lease != 0
            && let Some(l) = st.leases.get_mut(&live.kv.lease)
        {
            Arc::make_mut(l).keys.insert(k.clone());
        }
        st.keys.insert(k, Arc::new(ki));
    }
    Ok(st)
}

/// Reads one revision's record.
pub(crate) fn read_rev<T: ReadableTable<u128, &'static [u8]>>(
    table: &T,
    rev: Revision,
) -> Result<Option<KeyValue>> {
    match table.get(rev.to_key())? {
        Some(v) => Ok(Some(KeyValue::decode(v.value())?)),
        None => Ok(None),
    }
}
