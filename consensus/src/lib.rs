//! `lookout-consensus`: the revision store. It owns MVCC on redb (etcd's
//! revisions, generations, tombstones, compaction), leases, the store's
//! watch hub, and the store's etcd v3 gRPC services; raft replication
//! will reuse the same [`Request`] / [`Applier`] state machine.
//!
//! ```text
//!  gRPC (server.rs) ──> Store (store.rs) ──validate──> Writer (writer.rs)
//!        ^                 │ reads: published MvccState      │ Applier::apply x N
//!        │                 │ (+ redb for history)            │ one redb commit (fsync)
//!        │                 v                                 v
//!   watch streams <── watch.rs <── hub.rs <── events, after the commit
//! ```
//!
//! It must never depend on the cache or the gateway, never acknowledge a
//! write before its redb commit returned, and never read a clock or a
//! random source inside `apply` (raft replays it on every member).

pub mod apply;
pub mod backend;
mod background;
pub mod cluster;
pub mod config;
pub mod encode;
pub mod error;
mod hub;
pub mod keyindex;
pub mod log_store;
mod members;
pub mod peer;
mod proposer;
pub mod request;
pub mod revision;
pub mod server;
mod sm;
pub mod state;
pub mod store;
pub mod validate;
mod watch;

pub use apply::{Applied, Applier};
pub use config::StoreConfig;
pub use error::{Error, Result};
pub use peer::serve_peer;
pub use request::{Reply, Request, Response};
pub use revision::Revision;
pub use server::{EtcdService, routes, serve, to_status};
pub use state::MvccState;
pub use store::Store;
