//! `lookout-consensus`: the revision store, replicated with raft. It owns
//! MVCC on redb (etcd's revisions, generations, tombstones, compaction),
//! leases, the store's watch hub, raft replication through openraft (the
//! log and state machine stores, snapshots, the peer transport,
//! membership), and the store's etcd v3 gRPC services. A store started
//! without an initial cluster is a one-member raft cluster: one code path.
//! Range options, key ranges and txn compares are `lookout-semantics`',
//! shared with the cache: the store decides which pairs a range holds at
//! which revision (`state.rs`), the shared code what the answer is.
//!
//! ```text
//!  gRPC (server.rs) ─> Store (store.rs) ─validate─> Proposer (proposer.rs): batch
//!        ^              │                             │ leader: raft.client_write
//!        │              │ reads: read index, then     │ follower: forward (peer.rs)
//!        │              │ the applied MvccState       v
//!        │              │                  openraft: append to raft-wal/ (wal.rs, one
//!        │              │                  fdatasync per group; log_store.rs),
//!        │              │                  replicate (peer.rs), commit
//!        │              │                             v
//!   watch streams <── watch.rs <── hub.rs <── sm.rs: Applier::apply each Request
//!                                               (lookout.redb, no fsync: the log replays it)
//!  leader only (background.rs): lease expiry, auto-compaction -> proposals
//!  snapshots (sm.rs): redb read txn -> file -> chunks -> follower's redb
//!  backups (snapshot_stream.rs): Maintenance.Snapshot = one redb read txn
//!        -> 32 KiB chunks + sha256; `restore` writes a new member's data dir
//!  TLS (tls.rs): reloading rustls acceptor for client and peer listeners,
//!        peer clients dial https:// peer URLs with the peer certificate
//!  auth (auth/): users, roles, permissions and the enabled flag as
//!        replicated state; tokens; checks at the places etcd makes them
//!  metrics (metrics.rs): etcd's etcd_server_*, etcd_disk_*, etcd_mvcc_*,
//!        etcd_network_peer_* and etcd_debugging_* families, updated by the
//!        parts above with relaxed atomics, rendered by Store::render_metrics
//! ```
//!
//! It must never depend on the cache or the gateway, never acknowledge a
//! write before a quorum made it durable and this member applied it, never
//! read a clock or a random source inside `apply` (every member replays
//! it), and never hold a whole snapshot in memory.

pub mod auth;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod metrics;
pub(crate) mod mvcc;
pub(crate) mod raft;
pub mod server;
pub mod store;
pub mod tls;

pub use config::StoreConfig;
pub use error::{Error, Result, to_status};
pub use mvcc::apply::{Applied, Applier};
pub use mvcc::request::{Reply, Request, Response};
pub use mvcc::revision::Revision;
pub use mvcc::state::MvccState;
pub use server::peer::{serve_peer, serve_peer_tls};
pub use server::{EtcdService, routes, serve};
pub use store::Store;

/// `--initial-cluster` parsing, for the binary's flags.
pub mod cluster {
    pub use crate::raft::cluster::parse_initial_cluster;
}

/// Backup restore, for `lookout snapshot restore`.
pub mod snapshot_stream {
    pub use crate::server::snapshot_stream::restore;
}

/// Request checks the gateway runs before it forwards (and fuzzes).
pub mod validate {
    pub use crate::mvcc::validate::{check_delete, check_put, check_range, check_txn};
}
