//! The scenarios. Each takes a [`RunCtx`] (where to send load, what to
//! measure) and its own parameters, and returns one [`RunResult`](crate::RunResult).
//!
//! - [`fanout`]: W watchers over C connections, a paced writer, every event
//!   checked; `slow`, `http` and `catchup` are fan-out with a twist;
//! - [`informers`]: N clients list then watch at once, then a burst;
//! - [`memory`]: server RSS per idle watcher, per stream, per connection;
//! - [`ops`]: plain put and range throughput;
//! - [`index`]: secondary-index filters and initial-state watches against
//!   their unfiltered / list+watch baselines.
//!
//! What the watch scenarios share once the load stops (judging stream
//! outcomes, cross-checking the writer with the store's history, RSS per
//! watcher) is in `verdict`; this file has the run context and bounded
//! waits every scenario uses.

pub mod fanout;
pub mod index;
pub mod informers;
pub mod memory;
pub mod ops;
mod verdict;

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::procstat::{self, ProcStats};

/// Where a run sends load and what it measures.
#[derive(Debug, Clone)]
pub struct RunCtx {
    /// The target's name in results.
    pub target: String,
    /// gRPC endpoint of the system under test ("127.0.0.1:2379").
    pub endpoint: String,
    /// The store behind it, read once at the end as the checker's truth.
    pub truth_endpoint: String,
    /// Keys of this run live under this prefix only.
    pub prefix: Bytes,
    /// Server processes to measure: (label, pid).
    pub server_pids: Vec<(String, u32)>,
    /// Prometheus `/metrics` to read at the start and end: (label, host:port).
    pub metrics_endpoints: Vec<(String, String)>,
    pub progress: bool,
    /// Fires on Ctrl-C: every phase ends promptly and reports what it has.
    pub stop: CancellationToken,
    /// The command line that reproduces the run.
    pub command: String,
}

/// Measures this process (the load generator) over a run.
pub(crate) struct ClientProc {
    start: Option<procstat::ProcSample>,
}

impl ClientProc {
    pub(crate) fn start() -> Self {
        Self {
            start: procstat::sample(std::process::id()).ok(),
        }
    }

    pub(crate) fn finish(self) -> ProcStats {
        let pid = std::process::id();
        match (self.start, procstat::sample(pid)) {
            (Some(a), Ok(b)) => ProcStats {
                label: "client".into(),
                pid,
                cpu_s: b.cpu_s - a.cpu_s,
                peak_rss_bytes: b.hwm_bytes,
                hwm_bytes: b.hwm_bytes,
                rss_start_bytes: a.rss_bytes,
                rss_end_bytes: b.rss_bytes,
                error: None,
            },
            _ => ProcStats {
                label: "client".into(),
                pid,
                error: Some("/proc/self unreadable".into()),
                ..ProcStats::default()
            },
        }
    }
}

/// Polls `done` every 20 ms until it holds, `timeout` passes or `stop`
/// fires; returns whether it held. Every wait in a run goes through here, so
/// none can hang.
pub(crate) async fn wait_until(
    timeout: Duration,
    stop: &CancellationToken,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if stop.is_cancelled() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JSON value for a `params` map.
pub(crate) fn p(v: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Seconds with up to three decimals, for params.
pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The 1-minute load average now: the machine is shared, so every result
/// says how busy it was when the run started.
pub(crate) fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(-1.0)
}
