//! The on-disk layout in redb, and the rebuild of the in-memory state from
//! it on start.
//!
//! ```text
//!   kv:     u128 revision (main<<64|sub) -> protobuf KeyValue (version 0 = tombstone)
//!   meta:   "rev" | "compact" | "applied" -> u64
//!   leases: lease ID -> granted TTL (seconds)
//! ```

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use lookout_proto::mvccpb::KeyValue;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::Result;
use crate::keyindex::KeyIndex;
use crate::revision::Revision;
use crate::state::{LeaseState, MvccState};

pub(crate) const KV: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("kv");
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
pub(crate) const LEASES: TableDefinition<'_, i64, i64> = TableDefinition::new("leases");

pub(crate) const META_REV: &str = "rev";
pub(crate) const META_COMPACT: &str = "compact";
pub(crate) const META_APPLIED: &str = "applied";

/// Opens (or creates) the store file `<dir>/lookout.redb` with its tables.
///
/// # Errors
/// Any redb or I/O failure.
pub fn open_db(dir: &Path) -> Result<Database> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::Storage(e.to_string()))?;
    let db = Database::create(dir.join("lookout.redb"))?;
    let tx = db.begin_write()?;
    {
        tx.open_table(KV)?;
        tx.open_table(META)?;
        tx.open_table(LEASES)?;
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
    let meta = tx.open_table(META)?;
    let get = |k: &str| -> Result<u64> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
    let mut st = MvccState {
        rev: (get(META_REV)? as i64).max(1),
        compact_rev: get(META_COMPACT)? as i64,
        applied_index: get(META_APPLIED)?,
        ..Default::default()
    };
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
    for row in tx.open_table(KV)?.iter()? {
        let (k, v) = row?;
        let rev = Revision::from_key(k.value());
        let kv = KeyValue::decode(v.value())?;
        let ki = keys.entry(kv.key.clone()).or_default();
        if kv.version == 0 {
            ki.tombstone(rev);
        } else {
            ki.put(rev, kv);
        }
        st.rev = st.rev.max(rev.main);
    }
    for (k, ki) in keys {
        if let Some(kv) = &ki.live
            && kv.lease != 0
            && let Some(l) = st.leases.get_mut(&kv.lease)
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
