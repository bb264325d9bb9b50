//! [`CacheConfig`]: how a cache behaves. Its own room because the front
//! ([`crate::Cache`]), the shared state and the streams all read it.

use std::time::Duration;

use crate::keys::KeyRange;
use crate::secondary::IndexSet;

/// How a [`crate::Cache`] behaves. `Default` caches every key.
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
