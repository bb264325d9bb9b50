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

/// The keyspace the cache holds, as of `revision`. Values are `Arc`s so a
/// path copy in the map moves pointers, not key-values.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    revision: i64,
    data: OrdMap<Bytes, Arc<KeyValue>>,
}

impl Snapshot {
    pub(crate) fn new(revision: i64, data: OrdMap<Bytes, Arc<KeyValue>>) -> Self {
        Self { revision, data }
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
