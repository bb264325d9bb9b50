//! The cache's current data: an immutable ordered map at one revision.
//!
//! The applier builds the next snapshot from the previous one (imbl's
//! `OrdMap` shares all untouched nodes, so a clone is O(1) and an update
//! O(log n)) and swaps it in atomically; readers hold an `Arc<Snapshot>` and
//! never block the applier. A list is therefore always one consistent revision.

use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use lookout_proto::mvccpb::KeyValue;

use crate::secondary::{IndexSet, IndexState};

/// The keyspace the cache holds, as of `revision`. Values are `Arc`s so a
/// path copy in the map moves pointers, not key-values.
///
/// The secondary indexes ([`crate::IndexDef`]) travel with the data: both
/// are derived from the previous snapshot by the same batch, so a filtered
/// read sees exactly the entries matching at `revision`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    revision: i64,
    data: OrdMap<Bytes, Arc<KeyValue>>,
    /// The declared indexes (shared by every snapshot of a cache).
    defs: IndexSet,
    /// One state per declared index, in `defs` order.
    indexes: Vec<IndexState>,
}

impl Snapshot {
    #[cfg(test)]
    pub(crate) fn new(revision: i64, data: OrdMap<Bytes, Arc<KeyValue>>) -> Self {
        Self {
            revision,
            data,
            defs: IndexSet::default(),
            indexes: Vec::new(),
        }
    }

    pub(crate) fn with_indexes(
        revision: i64,
        data: OrdMap<Bytes, Arc<KeyValue>>,
        defs: IndexSet,
        indexes: Vec<IndexState>,
    ) -> Self {
        Self {
            revision,
            data,
            defs,
            indexes,
        }
    }

    /// The declared indexes.
    pub fn index_set(&self) -> &IndexSet {
        &self.defs
    }

    pub(crate) fn index_states(&self) -> &[IndexState] {
        &self.indexes
    }

    /// The entries whose index `index` has `value`, by key (`None`: none).
    pub(crate) fn index_entries(
        &self,
        index: usize,
        value: &[u8],
    ) -> Option<&OrdMap<Bytes, Arc<KeyValue>>> {
        self.indexes.get(index)?.entries(value)
    }

    /// Number of distinct values of index `index` (diagnostics).
    pub fn index_values_len(&self, index: usize) -> usize {
        self.indexes.get(index).map_or(0, IndexState::values_len)
    }

    /// The store revision this snapshot reflects: every event up to and
    /// including it has been applied, none after it.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.data.get(key).map(|kv| &**kv)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The map itself (cheap to clone; iterate with `range`).
    pub fn data(&self) -> &OrdMap<Bytes, Arc<KeyValue>> {
        &self.data
    }
}
