//! [`Cache`]: list-then-watch against the upstream, the applier, and the
//! read side (snapshots, waits for a revision).
//!
//! ```text
//!   list ranges @R ──> snapshot R, ring empty from R+1
//!   watch hull from applied+1 (progress_notify)
//!     events   ──> prev kv from state ──> CachedEvent ──> working snapshot (in place) + ring ──> fan-out
//!     progress ──> ring/snapshot revision advance (no events)
//!   readers: published snapshot, or an O(1) copy of the working one when it changed since
//!     compacted──> relist @R' ──> reset ring ──> cancel watchers below R' (compact_revision)
//!     error    ──> backoff, resume from applied+1 (maybe another endpoint)
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use imbl::OrdMap;
use lookout_proto::pb::{RangeRequest, RangeResponse, ResponseHeader, WatchCreateRequest};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};

use crate::backoff::Backoff;
use crate::error::{CacheError, is_compacted_status};
use crate::event::{CachedEvent, EventKind};
use crate::history::History;
use crate::keys::KeyRange;
use crate::mapkey::MapKey;
use crate::metrics::CacheMetrics;
use crate::range::evaluate_range;
use crate::registry::{FanoutScratch, Registry};
use crate::secondary::{IndexSet, build_states};
use crate::snapshot::{KvMap, Snapshot};
use crate::stream::{self, MIN_PROGRESS_INTERVAL, Pending, WatchFrames, WatchHandle};
use crate::upstream::{Upstream, WatchMsg};

/// How a [`Cache`] behaves. `Default` caches every key.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The key ranges held (default: all keys). The upstream watch covers
    /// their hull; events between them are dropped.
    pub ranges: Vec<KeyRange>,
    /// History ring bounds: whichever is reached first evicts old revisions.
    pub history_events: usize,
    pub history_bytes: usize,
    /// Keys per page of the list.
    pub list_page_size: i64,
    /// Per-stream queue budget in bytes; past it the stream's watchers read
    /// the ring instead of queueing.
    pub stream_queue_bytes: usize,
    /// Events are batched into `WatchResponse`s up to this size.
    pub max_frame_bytes: usize,
    /// Events scanned per catch-up pass per stream (bounds the time the
    /// stream lock is held while reading the ring).
    pub catchup_scan_budget: usize,
    /// Interval of `progress_notify` responses to idle watchers (etcd: 10 min).
    pub progress_notify_interval: Duration,
    /// `member_id` in response headers (default: the upstream's).
    pub member_id: Option<u64>,
    /// Reconnect backoff for the upstream watch and list.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Secondary indexes maintained on every applied event (`--index`).
    pub indexes: IndexSet,
    /// Initial states (`initial_state` watches) streaming at once; the
    /// others wait their turn (each one in flight pins up to a transport
    /// send buffer of pages, so this bounds the memory of a sync storm as
    /// the list gate bounds lists).
    pub max_concurrent_initial: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ranges: vec![KeyRange::all()],
            history_events: 100_000,
            history_bytes: 256 << 20,
            list_page_size: 1000,
            stream_queue_bytes: 1 << 20,
            max_frame_bytes: 1 << 20,
            catchup_scan_budget: 4096,
            progress_notify_interval: Duration::from_secs(600),
            member_id: None,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            indexes: IndexSet::default(),
            max_concurrent_initial: 8,
        }
    }
}

/// Header ids learned from the upstream, copied into every response.
#[derive(Debug, Default)]
struct HeaderIds {
    cluster_id: AtomicU64,
    member_id: AtomicU64,
    raft_term: AtomicU64,
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
    all_keys: bool,
    /// The last snapshot handed to a reader. Readers load it without
    /// locking; when the working snapshot moved on, the first reader to
    /// notice publishes a copy (see [`crate::snapshot`]).
    published: ArcSwap<Snapshot>,
    /// The applier's snapshot, changed in place. A parking_lot mutex: the
    /// applier holds it for one upstream batch, a reader for an O(1) clone;
    /// nobody awaits while holding it, and it is taken after the registry
    /// and stream locks and before the history lock, never the other way.
    working: Mutex<Working>,
    /// `working`'s generation, readable without the lock.
    working_generation: AtomicU64,
    /// Revisions of writes forwarded by the gateway, above the applied
    /// revision, with what they changed (prefix mode only). A parking_lot
    /// mutex: a few map operations per write or progress report.
    write_hints: Mutex<std::collections::BTreeMap<i64, WriteScope>>,
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
    applied: watch::Sender<i64>,
    ready: AtomicBool,
    ids: HeaderIds,
    pub(crate) metrics: Arc<CacheMetrics>,
    /// Asks the applier to request upstream progress (prefix mode reads).
    progress_kick: Notify,
    pub(crate) next_stream: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// Coalesces the store compaction probes of watch creates.
    pub(crate) compaction_check: crate::compaction::CompactionCheck,
    /// Admission of initial states (`max_concurrent_initial`).
    pub(crate) initial_gate: Arc<InitialGate>,
}

/// What a gateway knows about the revision of a write it forwarded (see
/// [`Cache::wait_for_write`]). With configured prefixes a revision that
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

/// Most write hints kept (older ones are dropped; a dropped hint only
/// means the progress report's timing rule applies again).
const MAX_WRITE_HINTS: usize = 4096;

/// The applier's working snapshot.
#[derive(Debug, Default)]
struct Working {
    snap: Snapshot,
    /// Events applied since the last publish. A stale published snapshot
    /// keeps the values it saw alive; publishing after this many (at least
    /// [`PUBLISH_EVERY_MIN`], else a quarter of the entries) bounds that.
    since_publish: usize,
}

/// See [`Working::since_publish`].
const PUBLISH_EVERY_MIN: usize = 4096;

/// Admits initial states: at most `limit` stream at once, counting only
/// permits whose holder handed out a page within [`STALE_AFTER`]. A
/// consumer that stops reading keeps its permit (its watcher resumes where
/// it was) but stops counting, so stalled clients never hold everybody else.
#[derive(Debug)]
pub(crate) struct InitialGate {
    /// Last activity (ms since `epoch`) of every live permit. A
    /// parking_lot mutex: a short scan of at most a few entries per
    /// admission attempt, never held across an await.
    active: Mutex<Vec<Arc<AtomicU64>>>,
    limit: usize,
    epoch: Instant,
    /// Streams with waiting initial states listen here.
    pub(crate) freed: Notify,
}

/// The stamp of a dropped permit.
const DEAD: u64 = u64::MAX;

/// A permit that handed out no page for this long stops counting.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(1);

impl InitialGate {
    fn new(limit: usize) -> Self {
        Self {
            active: Mutex::new(Vec::new()),
            limit: limit.max(1),
            epoch: Instant::now(),
            freed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn try_enter(self: &Arc<Self>) -> Option<InitialPermit> {
        let now = self.now_ms();
        let stale = STALE_AFTER.as_millis() as u64;
        let mut active = self.active.lock();
        active.retain(|p| Arc::strong_count(p) > 1);
        let fresh = active
            .iter()
            .filter(|p| {
                let at = p.load(Relaxed);
                at != DEAD && at + stale >= now
            })
            .count();
        if fresh >= self.limit {
            return None;
        }
        let stamp = Arc::new(AtomicU64::new(now));
        active.push(stamp.clone());
        Some(InitialPermit {
            gate: self.clone(),
            stamp,
        })
    }
}

/// One initial state's admission; dropping it lets the next one in.
#[derive(Debug)]
pub(crate) struct InitialPermit {
    gate: Arc<InitialGate>,
    stamp: Arc<AtomicU64>,
}

impl InitialPermit {
    /// A page went out: the permit counts for another [`STALE_AFTER`].
    pub(crate) fn touch(&self) {
        self.stamp.store(self.gate.now_ms(), Relaxed);
    }
}

impl Drop for InitialPermit {
    fn drop(&mut self) {
        // Mark it dead before waking the waiters (the list drops it lazily).
        self.stamp.store(DEAD, Relaxed);
        self.gate.freed.notify_waiters();
    }
}

impl CacheInner {
    fn new(upstream: Arc<dyn Upstream>, mut config: CacheConfig) -> Arc<Self> {
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
            shutdown: watch::channel(false).0,
            compaction_check: Default::default(),
            initial_gate: Arc::new(InitialGate::new(config.max_concurrent_initial)),
            config,
        })
    }

    /// The store compacted at `revision`: trim the ring (see
    /// [`Cache::note_compaction`]).
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
    fn publish(&self, w: &mut Working) -> Arc<Snapshot> {
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
    fn changed(&self, w: &mut Working, revision: i64) {
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
        *self.shutdown.borrow()
    }

    /// True when `range` lies inside one configured range.
    pub(crate) fn covers(&self, range: &KeyRange) -> bool {
        self.config.ranges.iter().any(|r| r.covers(range))
    }

    /// Forgets the write hints the cache has passed.
    fn prune_hints(&self, applied: i64) {
        if self.all_keys {
            return;
        }
        let mut h = self.write_hints.lock();
        while h.first_key_value().is_some_and(|(r, _)| *r <= applied) {
            h.pop_first();
        }
    }

    fn in_scope(&self, key: &[u8]) -> bool {
        self.all_keys || self.config.ranges.iter().any(|r| r.contains(key))
    }

    fn learn_header(&self, h: &ResponseHeader) {
        if self.config.member_id.is_none() {
            self.ids.member_id.store(h.member_id, Relaxed);
        }
        self.ids.cluster_id.store(h.cluster_id, Relaxed);
        self.ids.raft_term.store(h.raft_term, Relaxed);
        self.metrics.note_upstream(h.revision);
    }
}

/// The watch cache. Start it with [`Cache::start`]; it lists and watches the
/// upstream in a background task until [`Cache::shutdown`] or drop.
#[derive(Debug)]
pub struct Cache {
    inner: Arc<CacheInner>,
    task: tokio::task::JoinHandle<()>,
}

impl Cache {
    /// Starts the list-then-watch loop on the current tokio runtime.
    pub fn start(upstream: Arc<dyn Upstream>, config: CacheConfig) -> Self {
        let inner = CacheInner::new(upstream, config);
        let task = tokio::spawn(Applier::new(inner.clone()).run());
        Self { inner, task }
    }

    /// Waits until the initial list is applied; returns its revision.
    ///
    /// # Errors
    /// [`CacheError::NotReady`] after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<i64, CacheError> {
        let mut rx = self.inner.applied.subscribe();
        let inner = &self.inner;
        match tokio::time::timeout(timeout, rx.wait_for(|_| inner.is_ready())).await {
            Ok(Ok(_)) => Ok(self.revision()),
            _ => Err(CacheError::NotReady),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// The current snapshot. Cheap when nothing changed since the last
    /// call; otherwise an O(1) copy of the applier's state, which may wait
    /// for the applier to finish the upstream batch it is applying.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot_now()
    }

    /// The revision the cache has applied and fanned out.
    pub fn revision(&self) -> i64 {
        self.inner.fanout_rev.load(Acquire)
    }

    /// The oldest revision a watch can start from without an upstream splice,
    /// and the newest applied: `[start, last]`.
    pub fn history_window(&self) -> (i64, i64) {
        let h = self.inner.history.read();
        (h.start(), h.last())
    }

    /// Waits (at most `timeout`) until the cache has applied `revision`, and
    /// returns a snapshot at or after it. With configured prefixes it asks
    /// the upstream for progress so that a quiet prefix still advances.
    ///
    /// # Errors
    /// [`CacheError::Timeout`], or [`CacheError::NotReady`] before the first list.
    pub async fn wait_for_revision(
        &self,
        revision: i64,
        timeout: Duration,
    ) -> Result<Arc<Snapshot>, CacheError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.inner.applied.subscribe();
        loop {
            if self.inner.is_ready() && *rx.borrow_and_update() >= revision {
                return Ok(self.snapshot());
            }
            if !self.inner.all_keys && self.inner.is_ready() {
                self.inner.progress_kick.notify_one();
            }
            // Re-ask for progress every 100 ms in case a request was lost
            // with a reconnect; otherwise just wait for the next apply.
            let step = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            let _ = tokio::time::timeout_at(step, rx.changed()).await;
            if tokio::time::Instant::now() >= deadline {
                if self.inner.is_ready() && *rx.borrow() >= revision {
                    return Ok(self.snapshot());
                }
                if !self.inner.is_ready() {
                    return Err(CacheError::NotReady);
                }
                return Err(CacheError::Timeout {
                    wanted: revision,
                    reached: *rx.borrow(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// [`Cache::wait_for_revision`] for the revision of a write this
    /// gateway forwarded, told what the write changed: an `Outside` write's
    /// revision is trusted from the first progress report at it, an
    /// `Inside` one only once its event has been applied.
    ///
    /// # Errors
    /// As [`Cache::wait_for_revision`].
    pub async fn wait_for_write(
        &self,
        revision: i64,
        scope: WriteScope,
        timeout: Duration,
    ) -> Result<Arc<Snapshot>, CacheError> {
        let inner = &self.inner;
        if inner.all_keys {
            return self.wait_for_revision(revision, timeout).await;
        }
        if scope != WriteScope::Unknown && revision > inner.fanout_rev.load(Acquire) {
            let mut h = inner.write_hints.lock();
            h.insert(revision, scope);
            while h.len() > MAX_WRITE_HINTS {
                h.pop_first();
            }
        }
        let started = tokio::time::Instant::now();
        let snap = self.wait_for_revision(revision, timeout).await?;
        if scope != WriteScope::Inside {
            return Ok(snap);
        }
        // A report taken for the revision before the hint arrived may
        // have moved the cache past it without its event: wait for that.
        let deadline = started + timeout;
        let mut rx = inner.applied.subscribe();
        loop {
            if inner.history.read().last_event() >= revision {
                return Ok(self.snapshot());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(CacheError::Timeout {
                    wanted: revision,
                    reached: *rx.borrow(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// True when `key` is cached (it lies in a configured range).
    pub fn holds(&self, key: &[u8]) -> bool {
        self.inner.in_scope(key)
    }

    /// True when some key of `range` is cached (it intersects a configured
    /// range).
    pub fn touches(&self, range: &KeyRange) -> bool {
        let inner = &self.inner;
        inner.all_keys || inner.config.ranges.iter().any(|r| r.intersects(range))
    }

    /// Tells the cache the upstream compacted at `revision` (the gateway
    /// forwarded a successful `Compact`): the history ring drops what lies
    /// below it, so watches from a compacted revision are cancelled with
    /// `compact_revision` exactly as etcd cancels them, instead of being
    /// replayed from the ring, and events at or below it lose `prev_kv` (etcd
    /// reads it at revision - 1, which no longer exists). Compactions made by
    /// other clients directly on the store are not seen here (etcd announces
    /// them to nobody).
    pub fn note_compaction(&self, revision: i64) {
        self.inner.note_compaction(revision);
    }

    /// Call before creating a watch from `start`: when `start` is a past
    /// revision the ring holds, asks the store (one probe shared by the
    /// creates arriving meanwhile) whether it compacted past it, and trims
    /// the ring if so, so the create that follows is cancelled with
    /// `compact_revision` as etcd would cancel it. Compactions made on the
    /// store directly or through another gateway are learned this way.
    /// Returns at once for starts that need no history (now, future) or
    /// that the ring cannot serve anyway. Never fails: an unreachable store
    /// lets the watch replay from the ring (counted in
    /// [`CacheMetrics::compaction_probe_errors`]).
    pub async fn check_compaction(&self, start: i64) {
        let inner = &self.inner;
        if start <= 0
            || start > inner.fanout_rev.load(Acquire)
            || start <= inner.compacted.load(Acquire)
            || start < inner.history.read().start()
        {
            return;
        }
        crate::compaction::CompactionCheck::check(inner, start).await;
    }

    /// The newest store compaction revision the cache knows of.
    pub fn compacted_revision(&self) -> i64 {
        self.inner.compacted.load(Acquire)
    }

    /// A linearizable read point: learns the upstream's current revision with
    /// one cheap linearizable request and waits until the cache has it.
    ///
    /// # Errors
    /// The upstream's status, [`CacheError::Timeout`] or [`CacheError::NotReady`].
    pub async fn linearizable_snapshot(
        &self,
        timeout: Duration,
    ) -> Result<Arc<Snapshot>, CacheError> {
        let rev = self.inner.upstream.current_revision().await?;
        self.inner.metrics.note_upstream(rev);
        self.wait_for_revision(rev, timeout).await
    }

    /// Serves a `Range` from the current snapshot (serializable) with a full
    /// response header.
    ///
    /// # Errors
    /// See [`evaluate_range`].
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, CacheError> {
        self.range_at(&self.snapshot(), req)
    }

    /// Serves a `Range` from `snap` with a full response header.
    ///
    /// # Errors
    /// See [`evaluate_range`].
    pub fn range_at(
        &self,
        snap: &Snapshot,
        req: &RangeRequest,
    ) -> Result<RangeResponse, CacheError> {
        if !self.inner.is_ready() {
            return Err(CacheError::NotReady);
        }
        let mut resp = match evaluate_range(snap, req) {
            Err(CacheError::RevisionNotCached { requested, cached }) if !req.index.is_empty() => {
                self.filtered_past(snap, req, requested, cached)?
            }
            r => r?,
        };
        resp.header = Some(self.inner.header(snap.revision()));
        Ok(resp)
    }

    /// A filtered Range at a past revision R, rebuilt from `snap` and the
    /// history ring (the store cannot filter, so it is never forwarded):
    /// the entries matching now, with every key the ring shows changing
    /// after R replaced by its state at R (the `prev_kv` of its first event
    /// after R, which the ring keeps). Costs the matches plus the ring's
    /// events after R.
    fn filtered_past(
        &self,
        snap: &Snapshot,
        req: &RangeRequest,
        requested: i64,
        cached: i64,
    ) -> Result<RangeResponse, CacheError> {
        use std::collections::{BTreeMap, HashMap};
        use std::ops::Bound;
        let compacted = self.inner.compacted.load(Acquire);
        if requested < compacted {
            return Err(CacheError::Compacted {
                compact_revision: compacted,
            });
        }
        let h = self.inner.history.read();
        let oldest = (h.start() - 1).max(compacted);
        if requested > cached || requested < oldest {
            return Err(CacheError::IndexRevisionNotCached {
                requested,
                oldest,
                cached,
            });
        }
        let range = KeyRange::from_request(&req.key, &req.range_end);
        let f = snap
            .index_set()
            .resolve(&range, &req.index, &req.value)?
            .expect("an index was named");
        let crate::history::Cursor::At(mut i) = h.cursor(requested + 1) else {
            return Err(CacheError::IndexRevisionNotCached {
                requested,
                oldest,
                cached,
            });
        };
        // Key -> its entry at `requested` if it matched then.
        let mut touched: HashMap<bytes::Bytes, Option<lookout_proto::mvccpb::KeyValue>> =
            HashMap::new();
        while let Some(ev) = h.get(i) {
            if ev.revision() > cached {
                break;
            }
            i += 1;
            if !range.contains(ev.key()) || touched.contains_key(ev.key()) {
                continue;
            }
            let matched = ev.index_values(f.index()).0 == Some(f.value());
            let then = matched.then(|| ev.prev_kv().cloned()).flatten();
            touched.insert(ev.key().clone(), then);
        }
        drop(h);
        let bounds = (
            Bound::Included(range.start().as_ref()),
            match range.end() {
                Some(e) => Bound::Excluded(e.as_ref()),
                None => Bound::Unbounded,
            },
        );
        let mut out: BTreeMap<bytes::Bytes, Arc<lookout_proto::mvccpb::KeyValue>> = snap
            .index_entries(f.index(), f.value())
            .into_iter()
            .flat_map(|m| m.range::<_, [u8]>(bounds))
            .filter(|(k, _)| !touched.contains_key(k.as_ref()))
            .map(|(_, v)| (v.key.clone(), v.clone()))
            .collect();
        for (k, v) in touched {
            if let Some(kv) = v {
                out.insert(k, Arc::new(kv));
            }
        }
        Ok(crate::range::evaluate_over(
            req,
            None,
            out.values().map(|v| &**v),
        ))
    }

    /// The declared secondary indexes (`--index`).
    pub fn indexes(&self) -> &IndexSet {
        &self.inner.config.indexes
    }

    /// A response header with this cache's ids at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        self.inner.header(revision)
    }

    /// True when `range` lies inside the configured ranges (else the gateway
    /// forwards the request upstream).
    pub fn covers(&self, range: &KeyRange) -> bool {
        self.inner.covers(range)
    }

    /// Opens a watch stream: the control half and the delivery half.
    pub fn open_stream(&self) -> (WatchHandle, WatchFrames) {
        stream::open(&self.inner)
    }

    pub fn upstream(&self) -> &Arc<dyn Upstream> {
        &self.inner.upstream
    }

    pub fn metrics(&self) -> &Arc<CacheMetrics> {
        &self.inner.metrics
    }

    /// Number of watch groups (for tests and the gateway's status).
    pub fn group_count(&self) -> usize {
        self.inner.registry.read().group_count()
    }

    /// Stops the background task; open streams end with `Closed`.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        for s in self.inner.registry.read().streams() {
            s.wake();
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.shutdown();
        self.task.abort();
    }
}

// === the applier ===

/// How long after an unconfirmed progress report the applier asks again
/// (longer than etcd needs to notify the watchers of a write it made
/// visible, short next to a linearizable read).
const PROGRESS_CONFIRM_DELAY: Duration = Duration::from_millis(2);

#[derive(Debug)]
struct Applier {
    inner: Arc<CacheInner>,
    scratch: FanoutScratch,
    backoff: Backoff,
    /// A progress report not yet trusted in full (see [`Applier::progress`]).
    unconfirmed_progress: Option<i64>,
}

/// Why the watch loop stopped.
enum WatchEnd {
    Shutdown,
    /// Reconnect and resume from applied + 1.
    Broken,
    /// The resume revision is compacted upstream: relist.
    Compacted(i64),
}

impl Applier {
    fn new(inner: Arc<CacheInner>) -> Self {
        let backoff = Backoff::new(inner.config.backoff_base, inner.config.backoff_max);
        Self {
            inner,
            scratch: FanoutScratch::default(),
            backoff,
            unconfirmed_progress: None,
        }
    }

    async fn run(mut self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        // `Some(c)`: (re)list needed; `c` is the upstream compaction that
        // forced it (0 for the initial list).
        let mut relist: Option<i64> = Some(0);
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Some(compact) = relist {
                match self.list_and_install(compact).await {
                    Ok(()) => relist = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "list failed; retrying");
                        if self.sleep_or_shutdown(&mut shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            match self.watch(&mut shutdown).await {
                WatchEnd::Shutdown => return,
                WatchEnd::Compacted(c) => {
                    tracing::warn!(
                        compact_revision = c,
                        "resume revision compacted upstream; relisting"
                    );
                    relist = Some(c);
                }
                WatchEnd::Broken => {
                    self.inner.metrics.upstream_errors.fetch_add(1, Relaxed);
                    if self.sleep_or_shutdown(&mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps one backoff step; true if shut down meanwhile.
    async fn sleep_or_shutdown(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let d = self.backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = shutdown.wait_for(|s| *s) => true,
        }
    }

    /// Lists every configured range at one revision and installs the result.
    /// `compact`: the upstream compaction that forced a relist (0: unknown
    /// or the initial list).
    async fn list_and_install(&mut self, compact: i64) -> Result<(), CacheError> {
        let inner = &self.inner;
        let began = Instant::now();
        let mut revision = 0;
        let mut map = OrdMap::new();
        for range in &inner.config.ranges {
            let res = inner
                .upstream
                .list(range, revision, inner.config.list_page_size)
                .await?;
            inner.learn_header(&res.header);
            revision = res.revision;
            for kv in res.kvs {
                map.insert(MapKey::from(&kv.key), Arc::new(kv));
            }
        }
        let us = began.elapsed().as_micros() as u64;
        inner.metrics.lists.fetch_add(1, Relaxed);
        inner.metrics.list_latency_us_last.store(us, Relaxed);
        inner.metrics.list_latency_us_total.fetch_add(us, Relaxed);

        self.install(revision, map, compact);
        Ok(())
    }

    /// Installs a listed state at `revision`. The registry write lock keeps
    /// watcher creation out while the ring, snapshot and fan-out revision
    /// jump together.
    fn install(&mut self, revision: i64, map: KvMap, compact: i64) {
        let inner = &self.inner;
        // Any list after the first replaces history the cache no longer has.
        // When the upstream did not say where it compacted, the truthful
        // floor is the first revision the cache can serve again.
        let relisting = inner.is_ready();
        let compact = if compact > 0 {
            inner.compacted.fetch_max(compact, Release);
            compact
        } else {
            revision + 1
        };
        let reg = inner.registry.write();
        {
            let mut h = inner.history.write();
            h.reset(revision, compact);
        }
        let states = build_states(&inner.config.indexes, &map);
        {
            let mut w = inner.working.lock();
            let generation = w.snap.generation;
            w.snap = Snapshot::with_indexes(revision, map, inner.config.indexes.clone(), states);
            w.snap.generation = generation;
            inner.changed(&mut w, revision);
            // At once: the previous snapshot is a whole other state.
            inner.publish(&mut w);
        }
        inner.fanout_rev.store(revision, Release);
        if relisting {
            inner.metrics.relists.fetch_add(1, Relaxed);
            for s in reg.streams() {
                s.push_control(Pending::Reset {
                    relist_rev: revision,
                    compact_revision: compact,
                });
            }
        }
        drop(reg);
        inner.ready.store(true, Release);
        inner.applied.send_replace(revision);
        self.publish_gauges();
        tracing::info!(revision, compact, "cache listed");
    }

    async fn watch(&mut self, shutdown: &mut watch::Receiver<bool>) -> WatchEnd {
        let inner = self.inner.clone();
        let from = inner.fanout_rev.load(Acquire) + 1;
        let (key, range_end) = inner.hull.to_request();
        let opened = tokio::select! {
            w = inner.upstream.watch(WatchCreateRequest {
                key,
                range_end,
                start_revision: from,
                progress_notify: true,
                ..Default::default()
            }) => w,
            _ = shutdown.wait_for(|s| *s) => return WatchEnd::Shutdown,
        };
        let mut watch = match opened {
            Ok(w) => w,
            Err(s) if is_compacted_status(&s) => return WatchEnd::Compacted(0),
            Err(s) => {
                tracing::warn!(error = %s, "upstream watch failed");
                return WatchEnd::Broken;
            }
        };
        inner.metrics.upstream_watches.fetch_add(1, Relaxed);
        self.unconfirmed_progress = None;
        // When a progress report waits for confirmation: ask again then.
        let mut confirm_at: Option<tokio::time::Instant> = None;
        loop {
            let msg = tokio::select! {
                m = watch.recv() => m,
                _ = inner.progress_kick.notified() => {
                    watch.request_progress();
                    continue;
                }
                _ = crate::stream::sleep_until_opt(confirm_at), if confirm_at.is_some() => {
                    confirm_at = None;
                    watch.request_progress();
                    continue;
                }
                _ = shutdown.wait_for(|s| *s) => return WatchEnd::Shutdown,
            };
            match msg {
                Ok(Some(WatchMsg::Events { header, events })) => {
                    inner.learn_header(&header);
                    self.backoff.reset();
                    self.unconfirmed_progress = None;
                    self.apply(events);
                }
                Ok(Some(WatchMsg::Progress { header })) => {
                    inner.learn_header(&header);
                    if self.progress(header.revision) {
                        confirm_at = Some(tokio::time::Instant::now() + PROGRESS_CONFIRM_DELAY);
                    }
                }
                Ok(Some(WatchMsg::Created { header, .. })) => {
                    inner.learn_header(&header);
                    self.backoff.reset();
                }
                Ok(Some(WatchMsg::Compacted {
                    compact_revision, ..
                })) => {
                    return WatchEnd::Compacted(compact_revision);
                }
                Ok(Some(WatchMsg::Canceled { reason, .. })) => {
                    tracing::warn!(%reason, "upstream cancelled the cache's watch");
                    return WatchEnd::Broken;
                }
                Ok(None) => return WatchEnd::Broken,
                Err(s) => {
                    tracing::warn!(error = %s, "upstream watch broke");
                    return WatchEnd::Broken;
                }
            }
        }
    }

    /// Applies one upstream batch: prev kvs from the current state, encode
    /// once, ring, snapshot swap, fan-out, publish.
    fn apply(&mut self, events: Vec<lookout_proto::mvccpb::Event>) {
        let inner = &*self.inner;
        inner
            .metrics
            .events_in
            .fetch_add(events.len() as u64, Relaxed);
        let last_event = inner.history.read().last_event();
        let defs = &inner.config.indexes;
        let mut w = inner.working.lock();
        let applied = w.snap.revision();
        let (map, states) = w.snap.parts_mut();
        let mut batch = Vec::with_capacity(events.len());
        let mut through = applied;
        for ev in events {
            let Some(kv) = ev.kv else { continue };
            let rev = kv.mod_revision;
            if rev <= last_event {
                // Already applied (an upstream replaying after a reconnect).
                continue;
            }
            if rev <= applied {
                inner.metrics.progress_regressions.fetch_add(1, Relaxed);
                tracing::error!(
                    rev,
                    applied,
                    "upstream sent an event below its own progress report"
                );
            }
            through = through.max(rev);
            if !inner.in_scope(&kv.key) {
                continue;
            }
            let kind = EventKind::from_i32(ev.r#type);
            let ev = match kind {
                EventKind::Put => {
                    // One descent of the map: insert hands back the previous entry.
                    let kv = Arc::new(kv);
                    let prev = map.insert(MapKey::from(&kv.key), kv.clone());
                    let ev = CachedEvent::indexed(kind, kv.clone(), prev, defs);
                    update_indexes(states, &ev, Some(&kv));
                    ev
                }
                EventKind::Delete => {
                    let prev = map.remove(&kv.key[..]);
                    let ev = CachedEvent::indexed(kind, Arc::new(kv), prev, defs);
                    update_indexes(states, &ev, None);
                    ev
                }
            };
            batch.push(Arc::new(ev));
        }
        if through == applied && batch.is_empty() {
            return;
        }
        inner.history.write().append(&batch, through);
        inner.changed(&mut w, through);
        w.since_publish += batch.len();
        if w.since_publish >= PUBLISH_EVERY_MIN.max(w.snap.len() / 4) {
            inner.publish(&mut w);
        }
        drop(w);
        let reg = (!batch.is_empty()).then(|| {
            let reg = inner.registry.read();
            reg.fan_out(
                &batch,
                &mut self.scratch,
                inner.config.stream_queue_bytes,
                &inner.metrics,
            );
            reg
        });
        // Before the registry lock is released: a watcher created right
        // after this fan-out must read `through`, or it would go live at a
        // revision whose events were already handed out without it.
        inner.fanout_rev.store(through, Release);
        drop(reg);
        inner.prune_hints(through);
        inner.applied.send_replace(through);
        self.publish_gauges();
    }

    /// A progress report at `rev`. etcd before 3.4.25 / 3.5.8 (etcd issue
    /// #15220; Debian bookworm ships 3.4.23) can report the revision of a
    /// write whose event it has not sent yet: the revision becomes visible
    /// before the write's watchers are notified. Its apply loop is
    /// sequential, so every revision below `rev` was sent before the
    /// report: trust `rev - 1` at once and `rev` itself when a second
    /// report, asked for a moment later, says the same with no event in
    /// between. Returns whether that second report should be asked for.
    fn progress(&mut self, rev: i64) -> bool {
        if rev <= self.inner.working.lock().snap.revision() {
            self.unconfirmed_progress = None;
            return false;
        }
        let hint = self.inner.write_hints.lock().get(&rev).copied();
        match hint {
            Some(WriteScope::Outside) => {
                self.unconfirmed_progress = None;
                self.advance(rev);
                return false;
            }
            Some(WriteScope::Inside) => {
                // Its event is on its way; never confirm it by timing.
                self.unconfirmed_progress = None;
                self.advance(rev - 1);
                return false;
            }
            Some(WriteScope::Unknown) | None => {}
        }
        if self.unconfirmed_progress == Some(rev) {
            self.unconfirmed_progress = None;
            self.advance(rev);
            return false;
        }
        self.unconfirmed_progress = Some(rev);
        self.advance(rev - 1);
        true
    }

    /// Upstream progress: the store is at `rev` and nothing in our hull
    /// changed since the last event.
    fn advance(&mut self, rev: i64) {
        let inner = &*self.inner;
        {
            let mut w = inner.working.lock();
            if rev <= w.snap.revision() {
                return;
            }
            inner.history.write().advance(rev);
            inner.changed(&mut w, rev);
        }
        inner.prune_hints(rev);
        inner.fanout_rev.store(rev, Release);
        inner.applied.send_replace(rev);
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let inner = &*self.inner;
        let h = inner.history.read();
        let m = &inner.metrics;
        m.cache_revision.store(h.last(), Relaxed);
        m.note_upstream(h.last());
        m.ring_events.store(h.len() as i64, Relaxed);
        m.ring_bytes.store(h.bytes() as i64, Relaxed);
        m.ring_start.store(h.start(), Relaxed);
    }
}

/// Moves the entry of `ev` between index values: out of each index's old
/// value, into its new one (`kv`, the entry after the event; `None` for a
/// delete). The event already carries both values, so nothing is parsed.
fn update_indexes(
    states: &mut [crate::secondary::IndexState],
    ev: &CachedEvent,
    kv: Option<&Arc<lookout_proto::mvccpb::KeyValue>>,
) {
    for (st, (old, new)) in states.iter_mut().zip(ev.all_index_values()) {
        if let Some(o) = old
            && new.as_ref() != Some(o)
        {
            st.remove(o, ev.key());
        }
        if let (Some(n), Some(kv)) = (new, kv) {
            st.insert(n.clone(), kv);
        }
    }
}

/// Drives the real applier and fan-out without an upstream connection, for
/// the fan-out benchmark: events are handed in as an upstream watch would.
/// Not part of the API.
#[doc(hidden)]
#[derive(Debug)]
pub struct BenchHarness {
    inner: Arc<CacheInner>,
    applier: Applier,
}

#[doc(hidden)]
impl BenchHarness {
    /// A cache at revision 1 with no data; its upstream is never contacted.
    pub fn new(config: CacheConfig) -> Self {
        let never_used =
            crate::etcd::EtcdUpstream::new(crate::etcd::EtcdUpstreamConfig::new(["127.0.0.1:9"]));
        let inner = CacheInner::new(Arc::new(never_used), config);
        let mut applier = Applier::new(inner.clone());
        applier.install(1, OrdMap::new(), 0);
        Self { inner, applier }
    }

    pub fn open_stream(&self) -> (WatchHandle, WatchFrames) {
        stream::open(&self.inner)
    }

    /// One upstream watch response's events.
    pub fn apply(&mut self, events: Vec<lookout_proto::mvccpb::Event>) {
        self.applier.apply(events);
    }

    pub fn revision(&self) -> i64 {
        self.inner.fanout_rev.load(Acquire)
    }

    /// The current snapshot, as a reader gets it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot_now()
    }

    pub fn metrics(&self) -> &CacheMetrics {
        &self.inner.metrics
    }
}
