//! `lookout-gateway`: the etcd v3 gRPC API served from the watch cache,
//! write forwarding, the HTTP metrics/health port, and the `lookout` binary.
//!
//! ```text
//!  clients (etcdctl, clientv3, etcd-client)
//!     │ etcd v3 gRPC (+ /metrics, /health over HTTP/1.1 on the same port)
//!     v
//!  run_gateway ─ KV.Range ──────────────> cache snapshot (serializable | linearizable:
//!              │                          one coalesced revision probe, then a bounded wait)
//!              │            └─ old rev / outside prefixes ─> upstream Range
//!              ├ KV.Put/Delete/Txn/Compact, Lease* ─> upstream ─> wait until the cache has w
//!              ├ KV.Txn (reads only) ─> compares + ranges on one snapshot
//!              ├ Watch ─> cache stream ─> WatchFrame bytes ─> pass-through codec (encode once)
//!              ├ LeaseKeepAlive ─> one upstream stream per client stream
//!              └ Maintenance.Status / Cluster.MemberList answered here; the rest forwarded
//!                          │ one list + one watch
//!                          v
//!                 upstream: `lookout store` | etcd
//! ```
//!
//! Library first: [`run_gateway`] (or [`Gateway::start`] for tests that
//! want the cache and the bound addresses) takes a [`GatewayConfig`], a
//! bound listener and a shutdown future; [`GatewayArgs`] are the clap flags
//! of `lookout gateway` (etcd grpc-proxy's names).
//!
//! It must never answer a read from data older than the client may see (a
//! linearizable read waits for the store's current revision, a write's
//! response waits for the cache to hold it), never re-encode a watch event
//! per watcher, and never turn an upstream status into a different one:
//! forwarded requests come back exactly as the store answered.
//!
//! # Differences from etcd worth knowing
//!
//! - A watch outside the `--prefix`es is refused (created + canceled, watch
//!   id -1, with a `cancel_reason`) rather than proxied.
//! - An unknown `sort_target` gets etcd 3.5's InvalidArgument (etcd 3.4
//!   crashes on it).
//! - Compactions made directly on the store (not through this gateway)
//!   are not seen: a watch from a revision the store compacted but the
//!   ring still holds replays true events instead of a compact cancel.

mod admission;
mod args;
mod cluster;
mod codec;
mod config;
mod error;
mod http;
mod keepalive;
mod kv;
mod lease;
mod maintenance;
mod metrics;
mod readindex;
mod register;
mod server;
mod txn;
mod watch;

pub use admission::{GateConfig, GateStats};
pub use args::{GatewayArgs, parse_duration};
pub use codec::WatchCodec;
pub use config::GatewayConfig;
pub use error::GatewayError;
pub use metrics::GatewayMetrics;
pub use server::{Gateway, run_gateway};
