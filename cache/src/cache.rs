//! [`Cache`]: the front the gateway holds. It starts the applier and
//! answers reads (snapshots, waits for a revision, Range, filtered Range
//! at a past revision) and opens watch streams, all from the shared state
//! ([`crate::inner`]); it never applies an event itself.
//!
//! ```text
//!   readers: published snapshot, or an O(1) copy of the working one when it changed since
//!   wait_for_revision / wait_for_write ──> the applier's applied revision (+ progress kicks)
//!   open_stream ──> (WatchHandle, WatchFrames)
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering::Acquire;
use std::time::{Duration, Instant};

use lookout_proto::pb::{RangeRequest, RangeResponse, ResponseHeader};

use crate::applier::Applier;
use crate::config::CacheConfig;
use crate::error::CacheError;
use crate::inner::{CacheInner, WriteScope};
use crate::keys::KeyRange;
use crate::metrics::CacheMetrics;
use crate::range::evaluate_range;
use crate::secondary::IndexSet;
use crate::snapshot::Snapshot;
use crate::stream::frames::WatchFrames;
use crate::stream::handle::{WatchHandle, open};
use crate::upstream::Upstream;

/// Most write hints kept (older ones are dropped; a dropped hint only
/// means the progress report's timing rule applies again).
const MAX_WRITE_HINTS: usize = 4096;

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
        open(&self.inner)
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
        self.inner.shutdown.cancel();
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
