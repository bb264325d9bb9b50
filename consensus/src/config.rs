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
        }
    }
}
