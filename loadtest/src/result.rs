//! The one JSON line a run prints, and the pieces it is made of.

use std::collections::BTreeMap;

use lookout_testkit::checker::CheckTotals;
use serde::{Deserialize, Serialize};

use crate::hist::LatencySummary;
use crate::procstat::ProcStats;
use crate::promscrape::ServerMetrics;
use crate::writer::WriterStats;

/// Everything one scenario run measured against one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// "fanout", "slow", "informers", "catchup", "http", "put", "range".
    pub scenario: String,
    /// The target's name ("etcd", "grpc-proxy", "lookout", or `--label`).
    pub target: String,
    pub endpoint: String,
    /// The scenario's parameters, for tables and for re-running.
    pub params: BTreeMap<String, serde_json::Value>,
    /// The command line that reproduces this run against a running target.
    pub command: String,
    /// True when nothing in `problems` happened.
    pub sustained: bool,
    /// Why the target did not sustain the load (empty when it did).
    pub problems: Vec<String>,
    /// Wall time of the whole scenario.
    pub duration_s: f64,
    /// 1-minute load average when the run started (the machine is shared).
    #[serde(default)]
    pub loadavg_1m: f64,
    /// Time to create every watcher / sync every informer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_s: Option<f64>,
    /// Time from the last put until every watcher had everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_s: Option<f64>,
    /// The headline latency: put sent -> event received for watch scenarios,
    /// request latency for put/range.
    pub latency: LatencySummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<WriterStats>,
    /// Per watcher group: "normal", "slow", "http", "informers".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub watch: BTreeMap<String, WatchStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub informers: Option<InformerStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catchup: Option<CatchupStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<OpsStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// Server RSS grown by creating the watchers, per watcher, by process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rss_per_watcher_bytes: BTreeMap<String, f64>,
    /// Measured server processes (`--server-pid`).
    pub servers: Vec<ProcStats>,
    /// What the targets counted themselves (`--metrics-endpoint`), by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_metrics: BTreeMap<String, ServerMetrics>,
    /// The load generator itself: when it is saturated, so is the test.
    pub client: ProcStats,
    /// Where the checker's truth came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub truth: String,
}

/// One group of watchers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchStats {
    pub watchers: u64,
    pub connections: u64,
    pub streams: u64,
    /// Watchers whose create the server acknowledged.
    pub created: u64,
    pub checks: CheckTotals,
    /// Watchers that had not reached the last revision by the drain
    /// deadline (events late).
    pub not_caught_up: u64,
    /// Events delivered per second over writer time + drain.
    pub deliveries_per_s: f64,
    pub latency: LatencySummary,
    pub resumes: u64,
    pub orphan_events: u64,
    /// First few stream errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Informer scenario specifics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InformerStats {
    pub clients: u64,
    pub synced: u64,
    /// From the common start until the last informer was synced.
    pub all_synced_s: f64,
    /// Per-informer time to synced (list + watch created).
    pub sync_latency: LatencySummary,
    /// Lists whose key count or revision was wrong.
    pub list_mismatch: u64,
    pub list_errors: u64,
    pub keys_listed_per_s: f64,
    /// Burst delivery latency (put sent -> event received).
    pub burst_latency: LatencySummary,
    pub burst_puts: u64,
}

/// Catch-up scenario specifics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatchupStats {
    /// Revisions behind head at which the watchers started.
    pub behind: u64,
    pub head_rev: i64,
    /// Time until each watcher had the head revision.
    pub catchup_time: LatencySummary,
    pub caught_up: u64,
    /// History events delivered per second during catch-up, all watchers.
    pub history_events_per_s: f64,
}

/// Memory scenario specifics: what its steps measured on the front process
/// (the first `--server-pid`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    pub rss_start_bytes: u64,
    pub rss_watchers_bytes: u64,
    pub rss_streams_bytes: u64,
    pub rss_connections_bytes: u64,
    /// RSS growth per watcher on one shared stream.
    pub per_watcher_bytes: f64,
    /// Per extra stream (its one watcher's share subtracted).
    pub per_stream_bytes: f64,
    /// Per extra connection (its stream and watcher subtracted).
    pub per_connection_bytes: f64,
    /// Seconds each step took to create its watches.
    pub setup_s: [f64; 3],
}

/// put / range specifics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpsStats {
    pub total: u64,
    pub ok: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub ops_per_s: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_kinds: BTreeMap<String, u64>,
}

impl RunResult {
    /// The serialised one-line form.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Records a problem (and so clears `sustained`).
    pub fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
        self.sustained = false;
    }

    /// The normal watcher group, if any.
    pub fn normal(&self) -> Option<&WatchStats> {
        self.watch.get("normal")
    }

    /// The group headline figures come from: "normal" when present (the
    /// ordinary watchers), else the only group there is (all-HTTP runs).
    pub fn primary(&self) -> Option<&WatchStats> {
        self.normal().or_else(|| self.watch.values().next())
    }

    /// CPU seconds and peak RSS of the first measured server process whose
    /// label is `label` (or of the first one when `label` is empty).
    pub fn server(&self, label: &str) -> Option<&ProcStats> {
        self.servers
            .iter()
            .find(|s| label.is_empty() || s.label == label)
    }
}
