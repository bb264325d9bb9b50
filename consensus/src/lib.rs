//! `lookout-consensus`: the revision store, replicated with raft. It owns
//! MVCC on redb (etcd's revisions, generations, tombstones, compaction),
//! leases, the store's watch hub, raft replication through openraft (the
//! log and state machine stores, snapshots, the peer transport,
//! membership), and the store's etcd v3 gRPC services. A store started
//! without an initial cluster is a one-member raft cluster: one code path.
//! Range options, key ranges and txn compares are `lookout-semantics`',
//! shared with the cache: the store decides which pairs a range holds at
//! which revision (`mvcc/state.rs`), the shared code what the answer is.
//!
//! ```text
//!  gRPC (server/grpc.rs) ─> Store (store/) ─validate─> Proposer (store/proposer.rs): batch
//!        ^              │                             │ leader: raft.client_write
//!        │              │ reads: read index, then     │ follower: forward (raft/peer.rs)
//!        │              │ the applied MvccState       v
//!        │              │                  openraft: append to raft-wal/ (raft/wal/, one
//!        │              │                  fdatasync per group; raft/log_store/),
//!        │              │                  replicate (raft/peer.rs), commit
//!        │              │                             v
//!   watch streams <── server/watch.rs <── mvcc/hub.rs <── raft/sm/: Applier::apply each Request
//!                                               (lookout.redb, no fsync: the log replays it)
//!  leader only (store/background.rs, lease/expiry.rs): lease expiry, auto-compaction -> proposals
//!  snapshots (raft/sm/): redb read txn -> file -> chunks -> follower's redb
//!  backups (server/snapshot_stream.rs): Maintenance.Snapshot = one redb read txn
//!        -> 32 KiB chunks + sha256; `restore` writes a new member's data dir
//!  TLS (tls.rs): reloading rustls acceptor for client and peer listeners,
//!        peer clients dial https:// peer URLs with the peer certificate
//!  auth (auth/): users, roles, permissions and the enabled flag as
//!        replicated state; tokens; checks at the places etcd makes them
//!  metrics (metrics/): etcd's etcd_server_*, etcd_disk_*, etcd_mvcc_*,
//!        etcd_network_peer_* and etcd_debugging_* families, updated by the
//!        parts above with relaxed atomics, rendered by Store::render_metrics
//! ```
//!
//! Where things live. No file imports itself back through others
//! (`python3 scripts/import-cycles.py consensus` finds no cycle). Folders
//! are concerns, not layers: `auth/`, `metrics/` and `lease/` each hold a
//! part that `mvcc`, `raft` or `store` use and an `impl Store` part that
//! uses them.
//!
//! - `error.rs`, `config.rs`, `tls.rs`: shared leaves.
//! - `auth/`: replicated auth state, its apply, permission checks, tokens.
//! - `metrics/`: the counters and their Prometheus rendering.
//! - `mvcc/`: revisions, the key index, `MvccState`, the redb tables,
//!   the replicated `Request` and how it applies, request checks, the
//!   encoded fast path, the watch hub that applied events go through.
//! - `raft/`: openraft's types and member identity, the WAL and log store,
//!   durability, the state machine and its snapshots, the peer client.
//! - `store/`: `Store`, the handle that drives raft and reads `mvcc`; its
//!   proposer, membership and alarms, leader-only background tasks.
//! - `lease/`: the store's lease API, the leader's expiry loop and the
//!   Lease gRPC service (its doc says which lease parts live elsewhere).
//! - `server/`: gRPC services over `Store`, the peer service, watch
//!   streams, the backup stream and `restore`.
//! - `fuzz.rs`: entry points for the fuzz targets (hidden, not an API).
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
pub(crate) mod lease;
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
