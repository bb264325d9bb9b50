//! What a store node is told at start.

use std::path::PathBuf;
use std::time::Duration;

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Room gRPC framing gets above `max_request_bytes` (etcd's grpcOverheadBytes),
/// so an oversized request reaches the store and gets etcd's own error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// etcd's maximum lease TTL (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's default `--quota-backend-bytes` (2 GiB).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// `--auto-compaction-mode` with its retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep `retention` worth of history (etcd's `periodic`).
    Periodic(Duration),
    /// Keep the last `n` revisions (etcd's `revision`).
    Revision(i64),
}

/// Configuration of one store node.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Member name (`--name`).
    pub name: String,
    /// Where the redb file lives (`--data-dir`).
    pub data_dir: PathBuf,
    /// URLs clients are told to use (`--advertise-client-urls`).
    pub client_urls: Vec<String>,
    /// URLs peers would use (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How often idle watchers that asked for it get a progress
    /// notification (etcd's `--experimental-watch-progress-notify-interval`).
    pub progress_notify_interval: Duration,
    /// Shortest lease TTL in seconds; shorter grants are raised to it. etcd
    /// derives it from its election timeout: ceil(1.5 * 1000 ms) = 2 s.
    pub min_lease_ttl: i64,
    /// `--initial-cluster` as (name, peer URLs); empty means this member
    /// alone (a one-member raft cluster).
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// `--initial-cluster-state new` (true) or `existing` (false: the
    /// member was added with `member add` and waits to be replicated to).
    pub initial_cluster_new: bool,
    /// `--initial-cluster-token`: part of every member and cluster ID.
    pub cluster_token: String,
    /// `--heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `--election-timeout`.
    pub election_timeout: Duration,
    /// `--snapshot-count`: applied entries between snapshots (the log is
    /// purged behind each snapshot, keeping `snapshot_catchup_entries`).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot so a slightly slow follower catches
    /// up from the log instead of a snapshot.
    pub snapshot_catchup_entries: u64,
    /// `--quota-backend-bytes` (0 = etcd's default 2 GiB; negative flag
    /// values disable the quota, stored as `u64::MAX`).
    pub quota_backend_bytes: u64,
    /// `--auto-compaction-mode` / `--auto-compaction-retention`.
    pub auto_compaction: Option<AutoCompaction>,
    /// Peer TLS (`--peer-cert-file`, `--peer-key-file`,
    /// `--peer-trusted-ca-file`, `--peer-client-cert-auth`): the peer
    /// listener's identity, and this member's client identity towards
    /// `https://` peer URLs.
    pub peer_tls: Option<crate::tls::TlsFiles>,
    /// Serve the streamed append rpc (`AppendStream` in peer.proto).
    /// Off, this member answers it Unimplemented, as a member built before
    /// it does, so leaders fall back to one unary call per append (a mixed
    /// version cluster during a rolling upgrade, and the test of that
    /// fallback). This member still uses streams towards peers that serve
    /// them.
    pub serve_append_stream: bool,
    /// `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`,
    /// `--client-cert-auth` (see `auth/`).
    pub auth: crate::auth::AuthConfig,
}

impl StoreConfig {
    /// etcd's defaults, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: "default".into(),
            data_dir: data_dir.into(),
            client_urls: vec!["http://localhost:2379".into()],
            peer_urls: vec!["http://localhost:2380".into()],
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            progress_notify_interval: Duration::from_secs(600),
            min_lease_ttl: 2,
            initial_cluster: Vec::new(),
            initial_cluster_new: true,
            cluster_token: "etcd-cluster".into(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 10_000,
            snapshot_catchup_entries: 5_000,
            quota_backend_bytes: DEFAULT_QUOTA_BYTES,
            auto_compaction: None,
            peer_tls: None,
            serve_append_stream: true,
            auth: Default::default(),
        }
    }

    /// etcd's request timeout: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election_timeout
    }

    /// The initial cluster with this member alone when none was given.
    pub fn effective_initial_cluster(&self) -> Vec<(String, Vec<String>)> {
        if self.initial_cluster.is_empty() {
            vec![(self.name.clone(), self.peer_urls.clone())]
        } else {
            self.initial_cluster.clone()
        }
    }
}
