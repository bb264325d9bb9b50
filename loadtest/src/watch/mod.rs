//! Watchers: many watches multiplexed over few gRPC streams, or one HTTP
//! NDJSON stream each, all feeding the same [`WatchCheck`]s.
//!
//! ```text
//!   coordinator ──spawn──> stream task (one gRPC Watch stream, N watchers)
//!        │                   create N ─> created ─> events ─> WatchCheck + latency
//!        │                   stream error ─> reopen, re-create each from last+1
//!        ├── target(rev) ──> task returns once all its watchers reached it
//!        └── stop ─────────> task returns now (drain deadline, Ctrl-C)
//! ```
//!
//! Tasks own their watchers' state outright (no locks on the event path) and
//! hand it back when they end; only progress counters are shared.

pub mod grpc;
pub mod http;
pub mod lite;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lookout_testkit::checker::WatchCheck;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hist::LatencyHist;
use crate::progress::Counters;

/// What every watcher of a run watches.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    pub key: Bytes,
    pub range_end: Bytes,
}

/// A watcher that stops reading: `after` the writer starts, for `for_`.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub after: Duration,
    pub for_: Duration,
}

/// Streams that move to another endpoint mid-run, as a client whose
/// gateway connection was killed resumes on another gateway.
#[derive(Debug, Clone)]
pub struct Switch {
    /// From the writer's start.
    pub after: Duration,
    /// Where to resume ("host:port").
    pub endpoint: String,
}

/// Signals from the coordinator to every stream task.
#[derive(Debug, Clone)]
pub struct Signals {
    /// The revision every watcher must reach; `i64::MAX` until known.
    pub target: watch::Receiver<i64>,
    /// Cancelled once when tasks must end now.
    pub stop: CancellationToken,
    /// When the writer started (stalls are timed from it).
    pub writer_started: watch::Receiver<Option<tokio::time::Instant>>,
    pub counters: Arc<Counters>,
}

/// The coordinator's ends of [`Signals`].
#[derive(Debug)]
pub struct Controls {
    pub target: watch::Sender<i64>,
    pub stop: CancellationToken,
    pub writer_started: watch::Sender<Option<tokio::time::Instant>>,
}

/// A fresh pair of signal ends.
pub fn signals(counters: Arc<Counters>) -> (Controls, Signals) {
    let (target_tx, target) = watch::channel(i64::MAX);
    let stop = CancellationToken::new();
    let (ws_tx, writer_started) = watch::channel(None);
    (
        Controls {
            target: target_tx,
            stop: stop.clone(),
            writer_started: ws_tx,
        },
        Signals {
            target,
            stop,
            writer_started,
            counters,
        },
    )
}

/// Bounds for one stream task.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Deadline for creating all watchers (and for each resume).
    pub setup_timeout: Duration,
    /// Reopen attempts after a stream failure before its watchers are lost.
    pub max_resumes: u32,
    /// Events sent before this wall-clock time (ns) are history, not live:
    /// their put→event latency is not recorded.
    pub live_from_unix_ns: u64,
    /// Record time-to-reach for this revision (catch-up), if set.
    pub reach_rev: Option<i64>,
}

/// What a stream task hands back.
#[derive(Debug)]
pub struct StreamOutcome {
    /// Which group the watchers belong to (normal, slow, http).
    pub group: Group,
    pub checks: Vec<WatchCheck>,
    /// Watchers whose create was acknowledged.
    pub created: usize,
    pub latency: LatencyHist,
    /// Time from task start until each watcher reached `reach_rev`.
    pub reach: LatencyHist,
    pub resumes: u64,
    /// First few stream errors, for the report.
    pub errors: Vec<String>,
    /// Responses for a watch id this stream never created.
    pub orphan_events: u64,
    /// When every watcher's create had been acknowledged.
    pub ready_at: Option<std::time::Instant>,
}

impl StreamOutcome {
    pub(crate) fn new(group: Group, checks: Vec<WatchCheck>) -> Self {
        Self {
            group,
            checks,
            created: 0,
            latency: LatencyHist::new(),
            reach: LatencyHist::new(),
            resumes: 0,
            errors: Vec::new(),
            orphan_events: 0,
            ready_at: None,
        }
    }

    pub(crate) fn note_error(&mut self, e: impl std::fmt::Display) {
        if self.errors.len() < 4 {
            self.errors.push(e.to_string());
        }
    }
}

/// Watchers are reported per group so stalled and HTTP watchers never blur
/// the numbers of the ordinary ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Normal,
    Slow,
    Http,
}

/// Resolves with the next value of `rx`; never when its sender is gone.
pub async fn next_value<T: Clone>(rx: &mut watch::Receiver<T>) -> T {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    rx.borrow_and_update().clone()
}
