//! Every `etcd_*` family of a member as Prometheus text, under etcd
//! 3.4's names, types, help texts and labels.

use std::sync::atomic::Ordering::Relaxed;

use openraft::RaftMetrics;

use super::{StoreMetrics, header, sample, single};
use crate::mvcc::state::MvccState;
use crate::raft::type_config::{MemberNode, NodeId};
use crate::store::Store;

impl Store {
    /// This member's counters.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.shared().metrics
    }

    /// Every `etcd_*` family this member exports, as Prometheus text
    /// (etcd 3.4's names, types, labels and buckets). The gRPC families
    /// (`grpc_server_*`, `etcd_network_client_grpc_*`) and `process_*`
    /// belong to the server in front and are rendered there.
    pub fn render_metrics(&self, out: &mut String) {
        let m = self.metrics();
        let st = self.snapshot();
        let raft = self.raft().metrics().borrow().clone();
        let me = self.member_id();
        let learner = raft
            .membership_config
            .membership()
            .learner_ids()
            .any(|l| l == me);
        let db_size = self.db_size() as f64;

        self.render_server(out, m, &raft, learner);
        self.render_identity(out, m, me);
        self.render_disk(out, m);
        render_mvcc(out, m, db_size);
        // --- etcd_network_peer_* ---
        self.peer_metrics().render(out, me);
        render_debugging(out, m, &st, db_size);
    }

    /// etcd_server_*: leadership, raft indexes and proposals.
    fn render_server(
        &self,
        out: &mut String,
        m: &StoreMetrics,
        raft: &RaftMetrics<NodeId, MemberNode>,
        learner: bool,
    ) {
        let flag = |b: bool| f64::from(u8::from(b));
        // --- etcd_server_* ---
        single(
            out,
            "etcd_server_has_leader",
            "gauge",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            flag(self.leader_id().is_some()),
        );
        single(
            out,
            "etcd_server_is_leader",
            "gauge",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            flag(self.is_leader()),
        );
        single(
            out,
            "etcd_server_is_learner",
            "gauge",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            flag(learner),
        );
        single(
            out,
            "etcd_server_leader_changes_seen_total",
            "counter",
            "The number of leader changes seen.",
            m.leader_changes.load(Relaxed) as f64,
        );
        single(
            out,
            "etcd_server_learner_promote_successes",
            "counter",
            "The total number of successful learner promotions while this member is leader.",
            m.learner_promotes.load(Relaxed) as f64,
        );
        // etcd's raft index gauges. openraft does not publish the commit
        // index, so "committed" is the newest index in this member's log
        // (an entry is there at most one replication round before it
        // commits), never below what it applied.
        let applied = raft.last_applied.map_or(0, |l| l.index);
        let committed = raft.last_log_index.unwrap_or(0).max(applied);
        single(
            out,
            "etcd_server_proposals_committed_total",
            "gauge",
            "The total number of consensus proposals committed.",
            committed as f64,
        );
        single(
            out,
            "etcd_server_proposals_applied_total",
            "gauge",
            "The total number of consensus proposals applied.",
            applied as f64,
        );
        single(
            out,
            "etcd_server_proposals_pending",
            "gauge",
            "The current number of pending proposals to commit.",
            m.proposals_pending.load(Relaxed).max(0) as f64,
        );
        single(
            out,
            "etcd_server_proposals_failed_total",
            "counter",
            "The total number of failed proposals seen.",
            m.proposals_failed.load(Relaxed) as f64,
        );
        single(
            out,
            "etcd_server_read_indexes_failed_total",
            "counter",
            "The total number of failed read indexes seen.",
            m.read_indexes_failed.load(Relaxed) as f64,
        );
        single(
            out,
            "etcd_server_slow_read_indexes_total",
            "counter",
            "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
            m.slow_read_indexes.load(Relaxed) as f64,
        );
        single(
            out,
            "etcd_server_slow_apply_total",
            "counter",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            m.slow_apply.load(Relaxed) as f64,
        );
        single(
            out,
            "etcd_server_heartbeat_send_failures_total",
            "counter",
            "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
            self.peer_metrics().heartbeat_failures.load(Relaxed) as f64,
        );
        single(
            out,
            "etcd_server_snapshot_apply_in_progress_total",
            "gauge",
            "1 if the server is applying the incoming snapshot. 0 if none.",
            m.snapshot_apply_in_progress.load(Relaxed).max(0) as f64,
        );
    }

    /// etcd_server_*: health checks, quota, member ID and versions.
    fn render_identity(&self, out: &mut String, m: &StoreMetrics, me: u64) {
        single(
            out,
            "etcd_server_health_success",
            "counter",
            "The total number of successful health checks",
            m.health_success.load(Relaxed) as f64,
        );
        single(
            out,
            "etcd_server_health_failures",
            "counter",
            "The total number of failed health checks",
            m.health_failures.load(Relaxed) as f64,
        );
        let quota = match self.config().quota_backend_bytes {
            u64::MAX => 0.0,
            q => q as f64,
        };
        single(
            out,
            "etcd_server_quota_backend_bytes",
            "gauge",
            "Current backend storage quota size in bytes.",
            quota,
        );
        header(
            out,
            "etcd_server_id",
            "gauge",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        );
        sample(out, "etcd_server_id", &format!("server_id=\"{me:x}\""), 1.0);
        header(
            out,
            "etcd_server_version",
            "gauge",
            "Which version is running. 1 for 'server_version' label with current version.",
        );
        let v = crate::store::VERSION;
        sample(
            out,
            "etcd_server_version",
            &format!("server_version=\"{v}\""),
            1.0,
        );
        header(
            out,
            "etcd_cluster_version",
            "gauge",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
        );
        let minor = v.rsplit_once('.').map_or(v, |(a, _)| a);
        sample(
            out,
            "etcd_cluster_version",
            &format!("cluster_version=\"{minor}\""),
            1.0,
        );
    }

    /// etcd_disk_*: the raft log's fsyncs and the backend's commits.
    fn render_disk(&self, out: &mut String, m: &StoreMetrics) {
        // --- etcd_disk_* ---
        let wal = self.wal_stats();
        wal.fsync.family(
            out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        );
        // A gauge in etcd 3.4 despite its name.
        single(
            out,
            "etcd_disk_wal_write_bytes_total",
            "gauge",
            "Total number of bytes written in WAL.",
            wal.write_bytes.load(Relaxed) as f64,
        );
        m.backend_commit.family(
            out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        );
        m.backend_snapshot.family(
            out,
            "etcd_disk_backend_snapshot_duration_seconds",
            "The latency distribution of backend snapshots.",
        );
        m.backend_defrag.family(
            out,
            "etcd_disk_backend_defrag_duration_seconds",
            "The latency distribution of backend defragmentation.",
        );
        single(
            out,
            "etcd_disk_defrag_inflight",
            "gauge",
            "Whether or not defrag is active on the member. 1 means active, 0 means not.",
            m.defrag_inflight.load(Relaxed).max(0) as f64,
        );
    }
}

/// etcd_mvcc_*: database size and request counts.
fn render_mvcc(out: &mut String, m: &StoreMetrics, db_size: f64) {
    // --- etcd_mvcc_* ---
    single(
        out,
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        db_size,
    );
    let in_use = m.db_in_use_bytes.load(Relaxed) as f64;
    single(
        out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        // Before the first sample: the file, as a fresh etcd reports.
        if in_use > 0.0 {
            in_use.min(db_size)
        } else {
            db_size
        },
    );
    for (name, help, v) in [
        ("put", "puts", &m.puts),
        ("delete", "deletes", &m.deletes),
        ("range", "ranges", &m.ranges),
        ("txn", "txns", &m.txns),
    ] {
        single(
            out,
            &format!("etcd_mvcc_{name}_total"),
            "counter",
            &format!("Total number of {help} seen by this member."),
            v.load(Relaxed) as f64,
        );
    }
}

/// etcd_debugging_*: MVCC and lease internals.
fn render_debugging(out: &mut String, m: &StoreMetrics, st: &MvccState, db_size: f64) {
    // --- etcd_debugging_* ---
    single(
        out,
        "etcd_debugging_mvcc_keys_total",
        "gauge",
        "Total number of keys.",
        st.keys.len() as f64,
    );
    single(
        out,
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current revision of store.",
        st.rev as f64,
    );
    single(
        out,
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        st.compact_rev as f64,
    );
    single(
        out,
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        db_size,
    );
    for (name, help, v) in [
        ("put", "puts", &m.puts),
        ("delete", "deletes", &m.deletes),
        ("range", "ranges", &m.ranges),
        ("txn", "txns", &m.txns),
    ] {
        single(
            out,
            &format!("etcd_debugging_mvcc_{name}_total"),
            "counter",
            &format!("Total number of {help} seen by this member."),
            v.load(Relaxed) as f64,
        );
    }
    single(
        out,
        "etcd_debugging_mvcc_total_put_size_in_bytes",
        "gauge",
        "The total size of put kv pairs seen by this member.",
        m.put_bytes.load(Relaxed) as f64,
    );
    single(
        out,
        "etcd_debugging_lease_granted_total",
        "counter",
        "The total number of granted leases.",
        m.leases_granted.load(Relaxed) as f64,
    );
    single(
        out,
        "etcd_debugging_lease_revoked_total",
        "counter",
        "The total number of revoked leases.",
        m.leases_revoked.load(Relaxed) as f64,
    );
    single(
        out,
        "etcd_debugging_lease_renewed_total",
        "counter",
        "The number of renewed leases seen by the leader.",
        m.leases_renewed.load(Relaxed) as f64,
    );
    m.lease_ttl.family(
        out,
        "etcd_debugging_lease_ttl_total",
        "Bucketed histogram of lease TTLs.",
    );
    single(
        out,
        "etcd_debugging_server_lease_expired_total",
        "counter",
        "The total number of expired leases.",
        m.leases_expired.load(Relaxed) as f64,
    );
    // Not etcd's: Lookout has had it since before the metrics work,
    // and dashboards built on it keep working.
    single(
        out,
        "etcd_debugging_lease_total",
        "gauge",
        "The number of leases granted and not expired.",
        st.leases.len() as f64,
    );
}
