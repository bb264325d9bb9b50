//! The applier: the one task that lists the upstream, watches it from the
//! applied revision, and applies each batch (prev kvs from the working
//! snapshot, events encoded once, ring, snapshot, fan-out to the streams).
//!
//! ```text
//!   list ranges @R ──> snapshot R, ring empty from R+1
//!   watch hull from applied+1 (progress_notify)
//!     events   ──> prev kv from state ──> CachedEvent ──> working snapshot (in place) + ring ──> fan-out
//!     progress ──> ring/snapshot revision advance (no events)
//!     compacted──> relist @R' ──> reset ring ──> cancel watchers below R' (compact_revision)
//!     error    ──> backoff, resume from applied+1 (maybe another endpoint)
//! ```
//!
//! It is the only writer of the working snapshot, the ring and the fan-out
//! revision; it never waits on a stream (a full stream queue is the
//! stream's problem, see `stream`).

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use imbl::OrdMap;
use lookout_proto::pb::WatchCreateRequest;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::CacheConfig;
use crate::error::{CacheError, is_compacted_status};
use crate::event::{CachedEvent, EventKind};
use crate::inner::{CacheInner, PUBLISH_EVERY_MIN, WriteScope};
use crate::mapkey::{KvMap, MapKey};
use crate::metrics::CacheMetrics;
use crate::registry::FanoutScratch;
use crate::secondary::build_states;
use crate::snapshot::Snapshot;
use crate::stream::frames::WatchFrames;
use crate::stream::handle::{WatchHandle, open};
use crate::stream::state::{Pending, sleep_until_opt};
use crate::upstream::WatchMsg;

/// How long after an unconfirmed progress report the applier asks again
/// (longer than etcd needs to notify the watchers of a write it made
/// visible, short next to a linearizable read).
const PROGRESS_CONFIRM_DELAY: Duration = Duration::from_millis(2);

#[derive(Debug)]
pub(crate) struct Applier {
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
    pub(crate) fn new(inner: Arc<CacheInner>) -> Self {
        let backoff = Backoff::new(inner.config.backoff_base, inner.config.backoff_max);
        Self {
            inner,
            scratch: FanoutScratch::default(),
            backoff,
            unconfirmed_progress: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let shutdown = self.inner.shutdown.clone();
        // `Some(c)`: (re)list needed; `c` is the upstream compaction that
        // forced it (0 for the initial list).
        let mut relist: Option<i64> = Some(0);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if let Some(compact) = relist {
                match self.list_and_install(compact).await {
                    Ok(()) => relist = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "list failed; retrying");
                        if self.sleep_or_shutdown(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            match self.watch(&shutdown).await {
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
                    if self.sleep_or_shutdown(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps one backoff step; true if shut down meanwhile.
    async fn sleep_or_shutdown(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = shutdown.cancelled() => true,
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

    async fn watch(&mut self, shutdown: &CancellationToken) -> WatchEnd {
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
            _ = shutdown.cancelled() => return WatchEnd::Shutdown,
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
                _ = sleep_until_opt(confirm_at), if confirm_at.is_some() => {
                    confirm_at = None;
                    watch.request_progress();
                    continue;
                }
                _ = shutdown.cancelled() => return WatchEnd::Shutdown,
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
        open(&self.inner)
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
