//! Counters and gauges the gateway exports (Prometheus text). Plain atomics:
//! updating them is a relaxed add on the hot path, never a lock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Live numbers of one cache. Gauges can be read at any time; counters only
/// grow.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// Gauge: watchers registered (all phases).
    pub watchers: AtomicI64,
    /// Gauge: distinct watch groups (key range + filters + prev_kv).
    pub groups: AtomicI64,
    /// Gauge: open watch streams.
    pub streams: AtomicI64,
    /// Counter: events received from the upstream watch.
    pub events_in: AtomicU64,
    /// Counter: events delivered to watchers (one per watcher per event).
    pub events_out: AtomicU64,
    /// Counter: `WatchResponse` frames handed out (events, control, progress).
    pub deliveries: AtomicU64,
    /// Gauge: revision the cache has applied.
    pub cache_revision: AtomicI64,
    /// Gauge: newest revision the upstream reported (headers, progress).
    pub upstream_revision: AtomicI64,
    /// Gauge: events and bytes in the history ring.
    pub ring_events: AtomicI64,
    pub ring_bytes: AtomicI64,
    /// Gauge: oldest revision the ring serves.
    pub ring_start: AtomicI64,
    /// Counter: full lists of the configured ranges (initial + relists).
    pub lists: AtomicU64,
    /// Counter: relists caused by an upstream compaction while disconnected.
    pub relists: AtomicU64,
    /// Gauge: duration of the last list, microseconds.
    pub list_latency_us_last: AtomicU64,
    /// Counter: total microseconds spent listing.
    pub list_latency_us_total: AtomicU64,
    /// Counter: upstream watch (re)connections.
    pub upstream_watches: AtomicU64,
    /// Counter: upstream watch streams that ended with an error.
    pub upstream_errors: AtomicU64,
    /// Counter: stream overflows (a consumer fell behind its byte budget and
    /// its watchers moved to reading the ring).
    pub slow_switches: AtomicU64,
    /// Counter: watchers cancelled with `compact_revision`.
    pub compact_cancels: AtomicU64,
    /// Counter: store compaction probes for watch creates from the ring
    /// (one answers every create that arrived while the previous ran).
    pub compaction_probes: AtomicU64,
    /// Counter: compaction probes the store did not answer (the watch
    /// replayed from the ring unchecked).
    pub compaction_probe_errors: AtomicU64,
    /// Counter: watchers served by an upstream watch spliced into the stream.
    pub splices: AtomicU64,
    /// Counter: events that arrived below a revision upstream progress had
    /// already announced (etcd before 3.4.25 can send a requested progress
    /// ahead of pending events). Applied, never dropped; should stay 0.
    pub progress_regressions: AtomicU64,
}

impl CacheMetrics {
    /// How far the cache trails the newest revision the upstream reported.
    pub fn lag(&self) -> i64 {
        (self.upstream_revision.load(Relaxed) - self.cache_revision.load(Relaxed)).max(0)
    }

    pub(crate) fn note_upstream(&self, rev: i64) {
        self.upstream_revision.fetch_max(rev, Relaxed);
    }
}
