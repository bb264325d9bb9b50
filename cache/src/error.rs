//! The cache's one error type, and its mapping to the gRPC status etcd 3.4
//! would answer with (used once, at the gateway's edge).

use std::time::Duration;

/// Everything the cache can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The upstream answered with this status; forwarded unchanged.
    #[error("upstream: {0}")]
    Upstream(tonic::Status),
    /// The revision asked for is older than what the upstream (or the cache's
    /// history) still holds.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    /// `Range` named a revision the current snapshot is not at: the caller
    /// waits for a newer one or forwards an older one upstream.
    #[error("revision {requested} is not the cached revision {cached}")]
    RevisionNotCached { requested: i64, cached: i64 },
    /// A linearizable read waited in vain for the cache to catch up.
    #[error(
        "lookout: cache is at revision {reached}, did not reach {wanted} within {waited:?}; upstream unreachable or slow"
    )]
    Timeout {
        wanted: i64,
        reached: i64,
        waited: Duration,
    },
    /// The initial list has not completed yet.
    #[error("lookout: cache is not ready (initial list from the store not finished)")]
    NotReady,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// `range_end <= key` on a watch (etcd answers created + canceled).
    #[error("mvcc: watcher range is empty")]
    EmptyWatchRange,
    /// A client-chosen watch id already in use on this stream.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateWatchId,
    /// The key range is outside the prefixes this cache holds.
    #[error("lookout: key range is outside the prefixes this gateway caches")]
    OutOfScope,
    /// The cache or the watch stream has shut down.
    #[error("lookout: watch cache closed")]
    Closed,
    /// A request names an index filter `value` but no `index`.
    #[error("lookout: an index filter value needs an index name (index)")]
    ValueWithoutIndex,
    /// The index named in a filter is not declared on this gateway.
    #[error("lookout: unknown index {name:?} ({known})")]
    UnknownIndex { name: String, known: String },
    /// An index filter on a range the index does not cover.
    #[error("lookout: the range is outside the scope {scope} of index {name:?}")]
    IndexScope { name: String, scope: String },
    /// `initial_state` with a `start_revision` the cache has not reached:
    /// the state it has is older than the client's.
    #[error(
        "lookout: an initial state from revision {wanted} needs revision {needed}; this gateway is at {cached}"
    )]
    InitialStateBehind {
        wanted: i64,
        needed: i64,
        cached: i64,
    },
    /// A filtered Range at a revision older than the cache can rebuild
    /// (the store cannot filter, so it is never forwarded).
    #[error(
        "lookout: an index filter at revision {requested} needs the cache's history, which starts after revision {oldest} (cache at {cached}); list again without a revision"
    )]
    IndexRevisionNotCached {
        requested: i64,
        oldest: i64,
        cached: i64,
    },
}

impl From<tonic::Status> for CacheError {
    fn from(s: tonic::Status) -> Self {
        Self::Upstream(s)
    }
}

impl From<CacheError> for tonic::Status {
    fn from(e: CacheError) -> Self {
        use tonic::Code;
        let code = match &e {
            CacheError::Upstream(s) => return s.clone(),
            CacheError::Compacted { .. } => Code::OutOfRange,
            CacheError::RevisionNotCached { requested, cached } if requested > cached => {
                return tonic::Status::out_of_range(
                    "etcdserver: mvcc: required revision is a future revision",
                );
            }
            CacheError::RevisionNotCached { .. } => Code::Unavailable,
            CacheError::Timeout { .. } | CacheError::NotReady | CacheError::Closed => {
                Code::Unavailable
            }
            CacheError::EmptyKey | CacheError::InvalidSortOption => Code::InvalidArgument,
            CacheError::EmptyWatchRange | CacheError::DuplicateWatchId | CacheError::OutOfScope => {
                Code::InvalidArgument
            }
            CacheError::ValueWithoutIndex
            | CacheError::UnknownIndex { .. }
            | CacheError::IndexScope { .. }
            | CacheError::InitialStateBehind { .. } => Code::InvalidArgument,
            CacheError::IndexRevisionNotCached {
                requested, cached, ..
            } if requested > cached => {
                return tonic::Status::out_of_range(
                    "etcdserver: mvcc: required revision is a future revision",
                );
            }
            CacheError::IndexRevisionNotCached { .. } => Code::OutOfRange,
        };
        tonic::Status::new(code, e.to_string())
    }
}

impl CacheError {
    /// True when a revision was compacted (the client must relist).
    pub fn is_compacted(&self) -> bool {
        match self {
            Self::Compacted { .. } => true,
            Self::Upstream(s) => is_compacted_status(s),
            _ => false,
        }
    }
}

/// etcd answers a read or watch below its compaction with OutOfRange and
/// this message; clients match on the text.
pub(crate) fn is_compacted_status(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::OutOfRange
        && s.message().contains("required revision has been compacted")
}
