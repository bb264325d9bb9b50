//! [`CacheInner`]: the state one cache's applier, front, streams and splice
//! tasks share (config, upstream, published and working snapshots, history
//! ring, registry, revisions, header ids, metrics, gates), and the few
//! operations on it that more than one of them needs. It reads and owns
//! state; it never drives the upstream (the applier does) and never builds
//! watch responses (the streams do).

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use arc_swap::ArcSwap;
use lookout_proto::pb::ResponseHeader;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::compaction::{CompactionCheck, CompactionOwner};
use crate::config::CacheConfig;
use crate::gate::InitialGate;
use crate::history::History;
use crate::keys::KeyRange;
use crate::metrics::CacheMetrics;
use crate::registry::Registry;
use crate::snapshot::Snapshot;
use crate::stream::state::MIN_PROGRESS_INTERVAL;
use crate::upstream::Upstream;

/// Header ids learned from the upstream, copied into every response.
#[derive(Debug, Default)]
struct HeaderIds {
    pub(crate) cluster_id: AtomicU64,
    pub(crate) member_id: AtomicU64,
    pub(crate) raft_term: AtomicU64,
}

/// State shared by the applier, streams and splice tasks.
#[derive(Debug)]
pub(crate) struct CacheInner {
    pub(crate) config: CacheConfig,
    pub(crate) upstream: Arc<dyn Upstream>,
    /// The single range the upstream watch covers.
    pub(crate) hull: KeyRange,
    /// The configured ranges cover every key: each store revision then
    /// carries an event the cache sees, and no progress request is needed.
    pub(crate) all_keys: bool,
    /// The last snapshot handed to a reader. Readers load it without
    /// locking; when the working snapshot moved on, the first reader to
    /// notice publishes a copy (see [`crate::snapshot`]).
    pub(crate) published: ArcSwap<Snapshot>,
    /// The applier's snapshot, changed in place. A parking_lot mutex: the
    /// applier holds it for one upstream batch, a reader for an O(1) clone;
    /// nobody awaits while holding it, and it is taken after the registry
    /// and stream locks and before the history lock, never the other way.
    pub(crate) working: Mutex<Working>,
    /// `working`'s generation, readable without the lock.
    pub(crate) working_generation: AtomicU64,
    /// Revisions of writes forwarded by the gateway, above the applied
    /// revision, with what they changed (prefix mode only). A parking_lot
    /// mutex: a few map operations per write or progress report.
    pub(crate) write_hints: Mutex<std::collections::BTreeMap<i64, WriteScope>>,
    /// A parking_lot RwLock: the applier writes a batch at a time, catch-up
    /// readers hold it for a bounded scan; nobody awaits while holding it.
    pub(crate) history: RwLock<History>,
    /// Groups and streams. RwLock: the applier's fan-out reads it; watcher
    /// creation and removal (much rarer) write it.
    pub(crate) registry: RwLock<Registry>,
    /// Revision through which every batch has been pushed to the streams.
    pub(crate) fanout_rev: AtomicI64,
    /// The newest upstream compaction revision the cache has learned (a
    /// forwarded Compact, or a relist forced by one): events at or below it
    /// go out without `prev_kv`, as etcd can no longer read it.
    pub(crate) compacted: AtomicI64,
    /// Same revision, for waiters.
    pub(crate) applied: watch::Sender<i64>,
    pub(crate) ready: AtomicBool,
    ids: HeaderIds,
    pub(crate) metrics: Arc<CacheMetrics>,
    /// Asks the applier to request upstream progress (prefix mode reads).
    pub(crate) progress_kick: Notify,
    pub(crate) next_stream: AtomicU64,
    /// Cancelled once by [`crate::Cache::shutdown`]; the applier and
    /// every stream's consumer look at it.
    pub(crate) shutdown: CancellationToken,
    /// Coalesces the store compaction probes of watch creates.
    pub(crate) compaction_check: CompactionCheck,
    /// Admission of initial states (`max_concurrent_initial`).
    pub(crate) initial_gate: Arc<InitialGate>,
}

/// What a gateway knows about the revision of a write it forwarded (see
/// [`crate::Cache::wait_for_write`]). With configured prefixes a revision that
/// changed nothing cached reaches the cache only as a progress report, and
/// etcd before 3.4.25 / 3.5.8 can report a revision before sending its
/// event (etcd issue #15220); knowing which case a write is makes its
/// read-your-writes wait independent of upstream timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteScope {
    /// Changed no key the cache holds: a progress report at its revision is
    /// complete.
    Outside,
    /// A put of a key the cache holds: its event will come, and the cache
    /// waits for it rather than for a report.
    Inside,
    /// Anything else (a txn or delete touching the cached ranges, which may
    /// or may not change a cached key; lease revokes).
    Unknown,
}

/// The applier's working snapshot.
#[derive(Debug, Default)]
pub(crate) struct Working {
    pub(crate) snap: Snapshot,
    /// Events applied since the last publish. A stale published snapshot
    /// keeps the values it saw alive; publishing after this many (at least
    /// [`PUBLISH_EVERY_MIN`], else a quarter of the entries) bounds that.
    pub(crate) since_publish: usize,
}

/// See [`Working::since_publish`].
pub(crate) const PUBLISH_EVERY_MIN: usize = 4096;

impl CacheInner {
    pub(crate) fn new(upstream: Arc<dyn Upstream>, mut config: CacheConfig) -> Arc<Self> {
        if config.ranges.is_empty() {
            config.ranges = vec![KeyRange::all()];
        }
        if !config.progress_notify_interval.is_zero() {
            config.progress_notify_interval =
                config.progress_notify_interval.max(MIN_PROGRESS_INTERVAL);
        }
        let hull = KeyRange::hull(&config.ranges);
        let all_keys = config.ranges.iter().any(|r| r.covers(&KeyRange::all()));
        Arc::new(CacheInner {
            history: RwLock::new(History::new(config.history_events, config.history_bytes)),
            ids: HeaderIds {
                member_id: AtomicU64::new(config.member_id.unwrap_or(0)),
                ..Default::default()
            },
            upstream,
            hull,
            all_keys,
            published: ArcSwap::from_pointee(Snapshot::default()),
            working: Mutex::new(Working::default()),
            working_generation: AtomicU64::new(0),
            write_hints: Mutex::new(Default::default()),
            registry: RwLock::new(Registry::default()),
            fanout_rev: AtomicI64::new(0),
            compacted: AtomicI64::new(0),
            applied: watch::channel(0).0,
            ready: AtomicBool::new(false),
            metrics: Arc::new(CacheMetrics::default()),
            progress_kick: Notify::new(),
            next_stream: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            compaction_check: Default::default(),
            initial_gate: Arc::new(InitialGate::new(config.max_concurrent_initial)),
            config,
        })
    }

    /// The store compacted at `revision`: trim the ring (see
    /// [`crate::Cache::note_compaction`]).
    pub(crate) fn note_compaction(&self, revision: i64) {
        self.compacted.fetch_max(revision, Release);
        self.history.write().compact(revision);
        self.metrics
            .ring_start
            .store(self.history.read().start(), Relaxed);
    }

    /// The current snapshot: everything applied so far.
    pub(crate) fn snapshot_now(&self) -> Arc<Snapshot> {
        let cur = self.published.load_full();
        if cur.generation == self.working_generation.load(Acquire) {
            return cur;
        }
        self.publish(&mut self.working.lock())
    }

    /// Hands the working snapshot to readers (an O(1) clone).
    pub(crate) fn publish(&self, w: &mut Working) -> Arc<Snapshot> {
        let cur = self.published.load_full();
        if cur.generation == w.snap.generation {
            return cur;
        }
        let fresh = Arc::new(w.snap.clone());
        w.since_publish = 0;
        self.published.store(fresh.clone());
        fresh
    }

    /// Ends a change of the working snapshot: readers now see `revision`.
    pub(crate) fn changed(&self, w: &mut Working, revision: i64) {
        w.snap.set_revision(revision);
        w.snap.generation += 1;
        self.working_generation.store(w.snap.generation, Release);
    }

    pub(crate) fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.ids.cluster_id.load(Relaxed),
            member_id: self.ids.member_id.load(Relaxed),
            revision,
            raft_term: self.ids.raft_term.load(Relaxed),
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Acquire)
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// True when `range` lies inside one configured range.
    pub(crate) fn covers(&self, range: &KeyRange) -> bool {
        self.config.ranges.iter().any(|r| r.covers(range))
    }

    /// Forgets the write hints the cache has passed.
    pub(crate) fn prune_hints(&self, applied: i64) {
        if self.all_keys {
            return;
        }
        let mut h = self.write_hints.lock();
        while h.first_key_value().is_some_and(|(r, _)| *r <= applied) {
            h.pop_first();
        }
    }

    pub(crate) fn in_scope(&self, key: &[u8]) -> bool {
        self.all_keys || self.config.ranges.iter().any(|r| r.contains(key))
    }

    pub(crate) fn learn_header(&self, h: &ResponseHeader) {
        if self.config.member_id.is_none() {
            self.ids.member_id.store(h.member_id, Relaxed);
        }
        self.ids.cluster_id.store(h.cluster_id, Relaxed);
        self.ids.raft_term.store(h.raft_term, Relaxed);
        self.metrics.note_upstream(h.revision);
    }
}

/// The compaction probe coalescer's view of the cache (see
/// [`crate::compaction`]).
impl CompactionOwner for CacheInner {
    fn compaction_check(&self) -> &CompactionCheck {
        &self.compaction_check
    }

    fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    fn known_compaction(&self) -> i64 {
        self.compacted.load(Acquire)
    }

    fn upstream(&self) -> &dyn Upstream {
        &*self.upstream
    }

    fn note_compaction(&self, revision: i64) {
        CacheInner::note_compaction(self, revision);
    }
}
