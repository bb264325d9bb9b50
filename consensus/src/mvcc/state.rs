//! The store's in-memory state: key index, leases and counters, as one
//! immutable value. The writer clones it (O(1): `imbl` maps share
//! structure), applies a batch to the clone, commits redb, then publishes
//! the clone; readers hold a published snapshot and never wait.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use lookout_proto::mvccpb::KeyValue;
use lookout_proto::pb::RangeRequest;
use lookout_semantics::{RangeEntry, Selection, key_bounds};

use crate::error::{Error, Result};
use crate::mvcc::keyindex::{KeyIndex, LiveKv};
use crate::mvcc::revision::Revision;

/// A lease as the state machine knows it (expiry lives in the lessor).
#[derive(Clone, Debug)]
pub struct LeaseState {
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Keys currently attached (live keys whose `lease` is this ID).
    pub keys: imbl::OrdSet<Bytes>,
}

impl LeaseState {
    /// When a lease granted `ttl` seconds ago at `now` runs out. A TTL
    /// read back from disk or a restored backup is not checked as a grant
    /// is, so it is clamped to what a grant accepts (a negative one would
    /// otherwise wrap to centuries and overflow the clock).
    pub fn deadline(now: std::time::Instant, ttl: i64) -> std::time::Instant {
        let secs = ttl.clamp(0, crate::config::MAX_LEASE_TTL) as u64;
        now.checked_add(std::time::Duration::from_secs(secs))
            .unwrap_or(now + std::time::Duration::from_secs(u32::MAX as u64))
    }
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

/// A current pair as Range evaluation sees it: the decoded pair to sort
/// and filter by, and its stored encoding for responses written as bytes
/// ([`crate::mvcc::encode`]).
impl RangeEntry for &LiveKv {
    fn kv(&self) -> &KeyValue {
        &self.kv
    }

    fn into_kv(self) -> KeyValue {
        self.kv.clone()
    }
}

impl MvccState {
    /// Keys in the range with their index entries, in key order.
    /// The entries outlive the iterator: they borrow the state only, not
    /// the request's key bytes.
    pub fn index_range<'s, 'k>(
        &'s self,
        key: &'k [u8],
        range_end: &'k [u8],
    ) -> impl Iterator<Item = (&'s Bytes, &'s Arc<KeyIndex>)> + use<'s, 'k> {
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

    /// etcd's Range at the current revision, every option applied
    /// ([`lookout_semantics::evaluate`]); the pairs are borrowed from memory.
    /// The caller has checked the request's revision.
    pub fn select_current<'a>(&'a self, req: &RangeRequest) -> Selection<&'a LiveKv> {
        let live = self
            .index_range(&req.key, &req.range_end)
            .filter_map(|(_, ki)| ki.live.as_ref());
        match lookout_semantics::evaluate(req, live, Ok::<_, Infallible>) {
            Ok(sel) => sel,
            Err(never) => match never {},
        }
    }

    /// etcd's Range: every `RangeRequest` option, through the evaluation
    /// the cache uses too. `read` fetches a historic revision's record, and
    /// is called only for the pairs the answer holds (current values come
    /// from memory).
    ///
    /// # Errors
    /// Future or compacted revision, or a storage failure from `read`.
    pub fn range(
        &self,
        req: &RangeRequest,
        read: &mut dyn FnMut(Revision) -> Result<Option<KeyValue>>,
    ) -> Result<RangeResult> {
        let rev = self.read_rev(req.revision)?;
        let (count, more, kvs) = if rev == self.rev {
            let sel = self.select_current(req);
            (sel.count, sel.more, sel.into_kvs())
        } else {
            let at = self
                .index_range(&req.key, &req.range_end)
                .filter_map(|(_, ki)| ki.revision_at(rev));
            // A revision the index still lists but redb no longer has was
            // compacted under us.
            let sel = lookout_semantics::evaluate(req, at, |r| read(r)?.ok_or(Error::Compacted))?;
            (sel.count, sel.more, sel.into_kvs())
        };
        Ok(RangeResult {
            kvs,
            count,
            more,
            rev,
        })
    }
}
