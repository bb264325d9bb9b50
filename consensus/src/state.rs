//! The store's in-memory state: key index, leases and counters, as one
//! immutable value. The writer clones it (O(1): `imbl` maps share
//! structure), applies a batch to the clone, commits redb, then publishes
//! the clone; readers hold a published snapshot and never wait.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use lookout_proto::mvccpb::KeyValue;
use lookout_proto::pb::RangeRequest;
use lookout_proto::pb::range_request::{SortOrder, SortTarget};

use crate::error::{Error, Result};
use crate::keyindex::KeyIndex;
use crate::revision::Revision;

/// A lease as the state machine knows it (expiry lives in the lessor).
#[derive(Clone, Debug)]
pub struct LeaseState {
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Keys currently attached (live keys whose `lease` is this ID).
    pub keys: imbl::OrdSet<Bytes>,
}

/// The deterministic in-memory state; see the module doc.
#[derive(Clone, Debug, Default)]
pub struct MvccState {
    /// `Arc` per entry so that copying an imbl node copies pointers only.
    pub keys: imbl::OrdMap<Bytes, Arc<KeyIndex>>,
    pub leases: imbl::OrdMap<i64, Arc<LeaseState>>,
    /// Current main revision (1 for a fresh store).
    pub rev: i64,
    /// Last compaction's revision (0 when never compacted).
    pub compact_rev: i64,
    /// Index of the last applied request (raft's applied index).
    pub applied_index: u64,
    /// Raft's id of the last applied log entry (`None` before any).
    pub applied_log: Option<openraft::LogId<u64>>,
    /// Raised alarms: member ID -> bits (1 << etcd AlarmType).
    pub alarms: imbl::OrdMap<u64, u64>,
    /// Users, roles and the auth flag (see `auth/`), applied with the
    /// writes so a batch sees its own auth changes.
    pub auth: Arc<crate::auth::AuthState>,
}

/// etcd's AlarmType NOSPACE.
pub const ALARM_NOSPACE: i32 = 1;

impl MvccState {
    /// Whether any member raised the NOSPACE alarm.
    pub fn nospace(&self) -> bool {
        self.alarms
            .values()
            .any(|bits| bits & (1 << ALARM_NOSPACE) != 0)
    }
}

/// A range's result before headers are added.
#[derive(Debug, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub count: i64,
    pub more: bool,
    /// The revision the range was read at.
    pub rev: i64,
}

/// A key span as a pair of bounds over borrowed keys.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// `[key, range_end)` as etcd reads it: empty end = the key alone, `"\0"`
/// = every key >= key.
pub fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if range_end == [0] {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if range_end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(range_end)))
    }
}

/// Whether `k` is in `[key, range_end)` with etcd's conventions.
pub fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == [0] {
        k >= key
    } else {
        k >= key && k < range_end
    }
}

impl MvccState {
    /// Keys in the range with their index entries, in key order.
    pub fn index_range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Bytes, &'a Arc<KeyIndex>)> + 'a {
        let bounds = key_bounds(key, range_end);
        bounds
            .map(|b| self.keys.range::<_, [u8]>(b))
            .into_iter()
            .flatten()
    }

    /// Checks a read revision against the current and compacted ones and
    /// resolves `<= 0` to the current revision.
    ///
    /// # Errors
    /// [`Error::FutureRev`] or [`Error::Compacted`].
    pub fn read_rev(&self, revision: i64) -> Result<i64> {
        let rev = if revision <= 0 { self.rev } else { revision };
        if rev > self.rev {
            return Err(Error::FutureRev);
        }
        if rev < self.compact_rev {
            return Err(Error::Compacted);
        }
        Ok(rev)
    }

    /// etcd's Range: every `RangeRequest` option. `read` fetches a historic
    /// revision's record (current values come from memory).
    ///
    /// # Errors
    /// Future or compacted revision, or a storage failure from `read`.
    pub fn range(
        &self,
        req: &RangeRequest,
        read: &mut dyn FnMut(Revision) -> Result<Option<KeyValue>>,
    ) -> Result<RangeResult> {
        let rev = self.read_rev(req.revision)?;
        let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // As etcd: fetch everything when the result will be sorted or
        // filtered, otherwise one more than the limit to learn `more`.
        let fetch_limit = if order != SortOrder::None || filtered || req.limit <= 0 {
            usize::MAX
        } else {
            req.limit as usize + 1
        };
        let current = rev == self.rev;
        let mut out = RangeResult {
            rev,
            ..Default::default()
        };
        for (_, ki) in self.index_range(&req.key, &req.range_end) {
            if current {
                let Some(live) = &ki.live else { continue };
                out.count += 1;
                if !req.count_only && out.kvs.len() < fetch_limit {
                    out.kvs.push(live.kv.clone());
                }
            } else {
                let Some(at) = ki.revision_at(rev) else {
                    continue;
                };
                out.count += 1;
                if !req.count_only && out.kvs.len() < fetch_limit {
                    // A revision the index still lists but redb no longer
                    // has was compacted under us.
                    out.kvs.push(read(at)?.ok_or(Error::Compacted)?);
                }
            }
        }
        if filtered {
            out.kvs.retain(|kv| {
                !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                    || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                    || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                    || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
            });
        }
        let order = if target != SortTarget::Key && order == SortOrder::None {
            SortOrder::Ascend
        } else {
            order
        };
        if order != SortOrder::None {
            let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
                match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            if order == SortOrder::Descend {
                out.kvs.sort_by(|a, b| cmp(b, a));
            } else {
                out.kvs.sort_by(cmp);
            }
        }
        if req.limit > 0 && out.kvs.len() > req.limit as usize {
            out.kvs.truncate(req.limit as usize);
            out.more = true;
        }
        if req.keys_only {
            for kv in &mut out.kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(out)
    }
}
