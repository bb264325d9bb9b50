//! The cache's current data: an immutable ordered map at one revision.
//!
//! The applier owns a working `Snapshot` and updates it in place; a reader
//! gets an `Arc<Snapshot>` cloned from it (imbl's `OrdMap` shares every
//! node, so the clone is O(1)) and never sees a later change. A list is
//! therefore always one consistent revision.
//!
//! Why in place and not a new snapshot per write: a persistent map copies
//! the path to a key (three 64-wide nodes for 100k keys, each copy cloning
//! every key and `Arc` in it) whenever that path is shared with a snapshot
//! a reader might hold. Publishing a snapshot per upstream response made
//! every write pay that copy (and its later drop) even when nobody read;
//! publishing only when a reader asks makes a write pay it only for the
//! nodes shared with the last published snapshot, at most once each per
//! publish.

use lookout_proto::mvccpb::KeyValue;

use crate::mapkey::KvMap;
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
    /// Bumped by every change of the working snapshot; a published copy
    /// with the working generation is current.
    pub(crate) generation: u64,
    data: KvMap,
    /// The declared indexes (shared by every snapshot of a cache).
    defs: IndexSet,
    /// One state per declared index, in `defs` order.
    indexes: Vec<IndexState>,
}

impl Snapshot {
    #[cfg(test)]
    pub(crate) fn new(revision: i64, data: KvMap) -> Self {
        Self {
            revision,
            generation: 0,
            data,
            defs: IndexSet::default(),
            indexes: Vec::new(),
        }
    }

    pub(crate) fn with_indexes(
        revision: i64,
        data: KvMap,
        defs: IndexSet,
        indexes: Vec<IndexState>,
    ) -> Self {
        Self {
            revision,
            generation: 0,
            data,
            defs,
            indexes,
        }
    }

    /// The applier's in-place access: the map and the index states, which
    /// it changes together for one batch.
    pub(crate) fn parts_mut(&mut self) -> (&mut KvMap, &mut Vec<IndexState>) {
        (&mut self.data, &mut self.indexes)
    }

    pub(crate) fn set_revision(&mut self, revision: i64) {
        self.revision = revision;
    }

    /// The declared indexes.
    pub fn index_set(&self) -> &IndexSet {
        &self.defs
    }

    /// The entries whose index `index` has `value`, by key (`None`: none).
    pub(crate) fn index_entries(&self, index: usize, value: &[u8]) -> Option<&KvMap> {
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
    pub fn data(&self) -> &KvMap {
        &self.data
    }
}
