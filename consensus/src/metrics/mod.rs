//! etcd 3.4's metrics for the store: the counters, gauges and histograms
//! the store's parts update (WAL fsync, backend commit, proposals, peer
//! traffic), and their Prometheus text under etcd's names, types, labels
//! and histogram buckets, so etcd's alert rules and dashboards work on a
//! `lookout store` unchanged.
//!
//! ```text
//!  wal.rs ─ fsync ──────────> WalStats      ┐
//!  sm.rs ─ commit, snapshot ─> StoreMetrics ├─ Store::render_metrics ─> etcd_server_*,
//!  store.rs ─ proposals ────> StoreMetrics  │    etcd_disk_*, etcd_mvcc_*, etcd_network_peer_*,
//!  peer.rs ─ bytes, rtt ────> PeerMetrics   ┘    etcd_debugging_* (text, on scrape)
//! ```
//!
//! Rooms: this file (text format, histograms, the member's counters),
//! `peer.rs` (traffic per peer), `render.rs` (every family's text).
//!
//! Updating is a relaxed atomic add (a histogram adds one bucket and its
//! sum); the only lock is the peer map's, one short lookup per peer
//! message served or forwarded (a connection's appends look it up once).
//! Rendering reads the atomics and
//! openraft's metrics; it never touches the MVCC file except for the
//! in-use size, which the applier samples at most every
//! [`IN_USE_SAMPLE_EVERY`] while it holds its write transaction anyway.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

// === Prometheus text ===

/// A float as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes it (the
/// Prometheus Go client's format, so `le` labels read the same as etcd's:
/// `0.001`, `8192`, `1.048576e+06`).
pub fn go_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v.is_nan() {
        return "NaN".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    // Shortest round-trip digits, then Go's choice: %e when the decimal
    // exponent is below -4 or at least 6 (Go's rule for precision -1).
    let e = format!("{v:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    format!("{v}")
}

/// `# HELP` and `# TYPE` lines of one family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line; `labels` is `a="x",b="y"` or empty.
pub fn sample(out: &mut String, name: &str, labels: &str, v: f64) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {}", go_float(v));
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {}", go_float(v));
    }
}

/// A family with a single unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, v: f64) {
    header(out, name, kind, help);
    sample(out, name, "", v);
}

// === histograms ===

/// etcd's disk latency buckets: 1 ms doubling to 8.192 s
/// (`prometheus.ExponentialBuckets(0.001, 2, 14)`).
pub const DISK_SECONDS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];
/// `etcd_disk_backend_snapshot_duration_seconds`: 10 ms doubling, 17 buckets.
pub const SNAPSHOT_SECONDS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84,
    327.68, 655.36,
];
/// `etcd_disk_backend_defrag_duration_seconds`: 100 ms doubling, 13 buckets.
pub const DEFRAG_SECONDS: &[f64] = &[
    0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6,
];
/// `etcd_network_peer_round_trip_time_seconds`: 100 µs doubling, 16 buckets.
pub const RTT_SECONDS: &[f64] = &[
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768,
];
/// `etcd_debugging_lease_ttl_total`: 1 s doubling, 24 buckets.
pub const LEASE_TTL_SECONDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0, 32768.0, 65536.0, 131072.0, 262144.0, 524288.0, 1048576.0, 2097152.0, 4194304.0,
    8388608.0,
];
/// The Prometheus Go client's default buckets (`prometheus.DefBuckets`),
/// which go-grpc-prometheus uses for `grpc_server_handling_seconds`.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram with fixed upper bounds. Observing is one
/// relaxed add on a bucket and a compare-and-swap on the sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Relaxed);
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |s| {
            Some((f64::from_bits(s) + v).to_bits())
        });
    }

    /// Observes the seconds since `start`.
    pub fn since(&self, start: Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// `name_bucket`, `name_sum` and `name_count` lines (no header), with
    /// `labels` (`a="x"` or empty) before `le`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| go_float(*b));
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        let sum = go_float(f64::from_bits(self.sum.load(Relaxed)));
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
        } else {
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {cum}"
            );
        }
    }

    /// A whole family: header and one unlabelled series.
    pub fn family(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        self.render(out, name, "");
    }
}

mod peer;
mod render;

pub use peer::{PeerMetrics, PeerStats};

// === the store's numbers ===

/// How often the applier measures the MVCC file's in-use bytes (a walk
/// of redb's page tree inside the write transaction it holds anyway).
pub const IN_USE_SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// An apply slower than this counts as slow (etcd's warnApplyDuration).
pub const SLOW_APPLY: Duration = Duration::from_millis(100);

/// The raft log's disk numbers, owned by the WAL.
#[derive(Debug)]
pub struct WalStats {
    /// `etcd_disk_wal_fsync_duration_seconds`: each `fdatasync` of a
    /// group of appended entries.
    pub fsync: Histogram,
    /// `etcd_disk_wal_write_bytes_total`: bytes written to segments.
    pub write_bytes: AtomicU64,
}

impl Default for WalStats {
    fn default() -> Self {
        Self {
            fsync: Histogram::new(DISK_SECONDS),
            write_bytes: AtomicU64::new(0),
        }
    }
}

/// Counters of one member that are not the WAL's or the peers'.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Leader changes seen (a new leader after none or another).
    pub leader_changes: AtomicU64,
    /// Client proposals submitted and not yet answered.
    pub proposals_pending: AtomicI64,
    /// Client proposals that failed (no leader, timeout, stopped, queue full).
    pub proposals_failed: AtomicU64,
    pub read_indexes_failed: AtomicU64,
    /// Read indexes that timed out waiting for the leader or the apply.
    pub slow_read_indexes: AtomicU64,
    /// Applies slower than [`SLOW_APPLY`].
    pub slow_apply: AtomicU64,
    /// 1 while a snapshot from the leader is being installed.
    pub snapshot_apply_in_progress: AtomicI64,
    pub learner_promotes: AtomicU64,
    /// `/health` answers (the HTTP layer counts them here).
    pub health_success: AtomicU64,
    pub health_failures: AtomicU64,
    /// `etcd_disk_backend_commit_duration_seconds`: each redb commit of
    /// an apply batch.
    pub backend_commit: Histogram,
    /// Raft snapshots built from the MVCC file.
    pub backend_snapshot: Histogram,
    pub backend_defrag: Histogram,
    pub defrag_inflight: AtomicI64,
    /// Bytes of pages redb holds live data in, sampled by the applier.
    pub db_in_use_bytes: AtomicU64,
    /// When the applier last sampled it (ms since `created`), 0 = never.
    in_use_sampled_ms: AtomicU64,
    created: Instant,
    /// Applied operations (requests, and the ops inside txns).
    pub puts: AtomicU64,
    pub deletes: AtomicU64,
    pub txns: AtomicU64,
    /// Range requests served by this member.
    pub ranges: AtomicU64,
    /// Key plus value bytes of applied puts.
    pub put_bytes: AtomicU64,
    pub leases_granted: AtomicU64,
    pub leases_revoked: AtomicU64,
    pub leases_renewed: AtomicU64,
    pub leases_expired: AtomicU64,
    pub lease_ttl: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            leader_changes: AtomicU64::new(0),
            proposals_pending: AtomicI64::new(0),
            proposals_failed: AtomicU64::new(0),
            read_indexes_failed: AtomicU64::new(0),
            slow_read_indexes: AtomicU64::new(0),
            slow_apply: AtomicU64::new(0),
            snapshot_apply_in_progress: AtomicI64::new(0),
            learner_promotes: AtomicU64::new(0),
            health_success: AtomicU64::new(0),
            health_failures: AtomicU64::new(0),
            backend_commit: Histogram::new(DISK_SECONDS),
            backend_snapshot: Histogram::new(SNAPSHOT_SECONDS),
            backend_defrag: Histogram::new(DEFRAG_SECONDS),
            defrag_inflight: AtomicI64::new(0),
            db_in_use_bytes: AtomicU64::new(0),
            in_use_sampled_ms: AtomicU64::new(0),
            created: Instant::now(),
            puts: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            txns: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
            put_bytes: AtomicU64::new(0),
            leases_granted: AtomicU64::new(0),
            leases_revoked: AtomicU64::new(0),
            leases_renewed: AtomicU64::new(0),
            leases_expired: AtomicU64::new(0),
            lease_ttl: Histogram::new(LEASE_TTL_SECONDS),
        }
    }
}

impl StoreMetrics {
    /// Whether the applier should sample the in-use size now (claims the
    /// sample, so concurrent callers do not both walk the tree).
    pub fn in_use_due(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64 + 1;
        let last = self.in_use_sampled_ms.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < IN_USE_SAMPLE_EVERY.as_millis() as u64 {
            return false;
        }
        self.in_use_sampled_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
    }

    /// Counts one applied request that succeeded, as etcd's MVCC layer
    /// counts writes: puts and deletes, inside a txn those of the branch
    /// that ran (and its ranges).
    pub fn count_applied(
        &self,
        req: &crate::mvcc::request::Request,
        resp: &crate::error::Result<crate::mvcc::request::Response>,
    ) {
        use crate::mvcc::request::{Request, Response};
        match (req, resp) {
            (Request::Put(p), Ok(_)) => self.count_put(p.key.len() + p.value.len()),
            (Request::DeleteRange(_), Ok(_)) => {
                self.deletes.fetch_add(1, Relaxed);
            }
            (Request::Txn(t), Ok(Response::Txn(r))) => self.count_txn(t, r),
            _ => {}
        }
    }

    fn count_put(&self, bytes: usize) {
        self.puts.fetch_add(1, Relaxed);
        self.put_bytes.fetch_add(bytes as u64, Relaxed);
    }

    fn count_txn(&self, t: &lookout_proto::pb::TxnRequest, r: &lookout_proto::pb::TxnResponse) {
        use lookout_proto::pb::request_op::Request as Op;
        use lookout_proto::pb::response_op::Response as Rop;
        self.txns.fetch_add(1, Relaxed);
        let ops = if r.succeeded { &t.success } else { &t.failure };
        for (op, res) in ops.iter().zip(&r.responses) {
            match (&op.request, &res.response) {
                (Some(Op::RequestPut(p)), _) => self.count_put(p.key.len() + p.value.len()),
                (Some(Op::RequestDeleteRange(_)), _) => {
                    self.deletes.fetch_add(1, Relaxed);
                }
                (Some(Op::RequestRange(_)), _) => {
                    self.ranges.fetch_add(1, Relaxed);
                }
                (Some(Op::RequestTxn(t)), Some(Rop::ResponseTxn(r))) => self.count_txn(t, r),
                _ => {}
            }
        }
    }
}

/// Holds one unit of a gauge (a pending proposal) while alive, so a
/// proposal whose caller went away still leaves the gauge.
#[derive(Debug)]
pub struct Pending<'a>(&'a AtomicI64);

impl<'a> Pending<'a> {
    pub fn new(g: &'a AtomicI64) -> Self {
        g.fetch_add(1, Relaxed);
        Self(g)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_does() {
        assert_eq!(go_float(0.001), "0.001");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(8.192), "8.192");
        assert_eq!(go_float(8192.0), "8192");
        assert_eq!(go_float(131072.0), "131072");
        assert_eq!(go_float(1048576.0), "1.048576e+06");
        assert_eq!(go_float(3.2768), "3.2768");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(12.0), "12");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(12345678.0), "1.2345678e+07");
    }

    #[test]
    fn histograms_are_cumulative_with_etcd_bounds() {
        let h = Histogram::new(DISK_SECONDS);
        h.observe(0.0005);
        h.observe(0.001);
        h.observe(0.003);
        h.observe(100.0);
        let mut o = String::new();
        h.family(&mut o, "x_seconds", "help");
        assert!(o.contains("x_seconds_bucket{le=\"0.001\"} 2\n"), "{o}");
        assert!(o.contains("x_seconds_bucket{le=\"0.002\"} 2\n"));
        assert!(o.contains("x_seconds_bucket{le=\"0.004\"} 3\n"));
        assert!(o.contains("x_seconds_bucket{le=\"8.192\"} 3\n"));
        assert!(o.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(o.contains("x_seconds_count 4\n"));
        assert!(o.contains("x_seconds_sum 100.0045\n"), "{o}");
        assert_eq!(h.count(), 4);
        let mut o = String::new();
        h.render(&mut o, "y", "To=\"a\"");
        assert!(o.contains("y_bucket{To=\"a\",le=\"+Inf\"} 4\n"));
        assert!(o.contains("y_count{To=\"a\"} 4\n"));
    }

    #[test]
    fn the_in_use_sample_is_claimed_once_per_period() {
        let m = StoreMetrics::default();
        assert!(m.in_use_due());
        assert!(!m.in_use_due());
    }
}
