//! `lookout-gateway`: the etcd v3 gRPC API served from the watch cache,
//! write forwarding, the HTTP/JSON API for curl users ([`http`]), the
//! HTTP metrics/health port, and the `lookout` binary's subcommands
//! ([`commands`]).
//!
//! ```text
//!  clients (etcdctl, clientv3, etcd-client, curl)
//!     │ etcd v3 gRPC + HTTP/JSON (/v3 etcd paths, /v1 readable, /metrics, /health)
//!     │ on one port: HTTP/2 and HTTP/1.1, routed by path
//!     v
//!  run_gateway ─ KV.Range ─ [list gate] ─> cache snapshot (serializable | linearizable:
//!              │                          one coalesced revision probe, then a bounded wait)
//!              │            └─ old rev / outside prefixes ─> upstream Range
//!              ├ KV.Put/Delete/Txn/Compact, Lease* ─> upstream ─> wait until the cache has w
//!              ├ KV.Txn (reads only) ─> compares + ranges on one snapshot
//!              ├ Watch ─> [resume wait] [catch-up gate] [compaction probe] ─> cache stream
//!              │          ─> gRPC messages written straight into DATA chunks (encode once)
//!              ├ LeaseKeepAlive ─> KeepAliveHub: one upstream stream for all clients,
//!              │                   concurrent keep-alives of a lease coalesced
//!              ├ Maintenance.Status answered here; the rest forwarded; Auth forwarded
//!              ├ Lock, Election ─> [`concurrency`] over the same services: txns
//!              │                   forwarded, every wait a cache watcher
//!              └ Cluster.MemberList: this gateway, or every gateway registered
//!                under --resolver-prefix (each keeps its own entry alive with a lease)
//!                          │ one list + one watch (+ one keep-alive stream)
//!                          v
//!                 upstream: `lookout store` | etcd
//! ```
//!
//! Around every listener (store and gateway): TLS with etcd's flag names
//! and reloading certificates (`lookout_consensus::tls`), gRPC request
//! metrics and `/metrics` `/health` ([`telemetry`]), etcd 3.5's `/livez`
//! and `/readyz` (`health.rs`), etcd's auth on the gateway, checked
//! against a local copy of the store's users and roles, with
//! `--auth-config` roles on the same engine (`auth/`), and flags from
//! `LOOKOUT_<FLAG>` variables or a `--config` file ([`config_file`]).
//!
//! ```text
//!  TCP ─(limits, TLS handshake, refusals logged)─> GrpcMetricsLayer
//!       ─> gRPC routes (each service asks auth/ who the caller is and
//!          what it may do) | HTTP API | /metrics /health /livez /readyz
//! ```
//!
//! [`api::EtcdApi`] is one backend's services (the store's in `lookout
//! store`, the gateway's here); the HTTP layer ([`http`]) and Lock/Election
//! ([`concurrency`]) are written once over it.
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
//! # Where things live
//!
//! ```text
//!  server.rs      Gateway: start-up, service registration, shutdown order
//!  shared.rs      Shared: what every service holds (names no service)
//!  kv.rs txn.rs lease.rs watch.rs maintenance.rs cluster.rs
//!                 the etcd services, each over Shared
//!  forward.rs     calls forwarded to the store, as the caller
//!  readindex.rs   the coalesced revision probe of linearizable reads
//!  admission.rs   storm-control gates
//!  keepalive/     the one upstream keep-alive stream (hub.rs: its state)
//!  register.rs    --resolver-prefix registration
//!  health.rs      /livez and /readyz
//!  listener.rs    connection limits; codec.rs watch responses encoded once
//!  auth/          who a caller is and what it may do
//!  api/ http/ concurrency/
//!                 the backend trait, the HTTP/JSON API, Lock/Election
//!  telemetry/     gRPC and process metrics, the store's ops port, logs
//!  metrics.rs     the gateway's own counters and their /metrics text
//!  error.rs       GatewayError and every tonic::Status built here
//!  args.rs config.rs config_file.rs
//!                 flags, the library configuration, --config and env
//!  commands/      what `lookout store|gateway|dev` run (main.rs and
//!                 cli.rs only parse flags and call these)
//!  fuzz.rs        entry points for the fuzz/ workspace
//! ```
//!
//! Services name `shared.rs`, never `server.rs`; helpers several HTTP
//! handlers share sit in leaf modules (`http/request.rs`), so no two files
//! import each other (`scripts/import-cycles.py gateway` checks).
//!
//! # Many gateways
//!
//! Any client may resume on any gateway from its last seen revision plus
//! one: a gateway that has not reached it yet waits (bounded by
//! `--read-timeout`) rather than failing, and one whose ring holds it checks
//! with the store that it was not compacted meanwhile (one probe shared by
//! concurrent creates), so compactions made through another gateway or on
//! the store directly cancel with `compact_revision` exactly as etcd does.
//!
//! # Storm control
//!
//! Lists (multi-key Ranges) and watch creates that replay history pass a
//! gate each: `--max-concurrent-*` run, `--max-queued-*` wait (at most
//! `--storm-queue-timeout`), the rest get ResourceExhausted with a retry
//! hint (`grpc-retry-pushback-ms`, also in the message) at once. The replay
//! itself is paced per stream (flow control and the cache's scan budget).
//!
//! # Secondary indexes
//!
//! `--index NAME[@PREFIX]=json:/ptr|key:REGEX` declares indexes the cache
//! maintains; Range and Watch take Lookout's extension fields `index`,
//! `value` and (Watch) `initial_state` (proto field numbers 1000+), and
//! `/v1` takes `?index=&value=&initial=true`. A filtered request is never
//! forwarded upstream: the store would answer it unfiltered.
//!
//! # Differences from etcd worth knowing
//!
//! - A watch outside the `--prefix`es is refused (created + canceled, watch
//!   id -1, with a `cancel_reason`) rather than proxied.
//! - An unknown `sort_target` gets etcd 3.5's InvalidArgument (etcd 3.4
//!   crashes on it).
//! - Keep-alives of one lease sent by several clients at the same moment
//!   are answered by one upstream renewal (the same TTL etcd would give
//!   each).

mod admission;
pub mod api;
mod args;
mod auth;
mod cluster;
mod codec;
pub mod commands;
pub mod concurrency;
mod config;
pub mod config_file;
mod error;
mod forward;
#[doc(hidden)]
pub mod fuzz;
mod health;
pub mod http;
mod keepalive;
mod kv;
mod lease;
mod listener;
mod maintenance;
mod metrics;
mod readindex;
mod register;
mod server;
mod shared;
pub mod telemetry;
mod txn;
mod watch;

pub use admission::{GateConfig, GateStats};
pub use args::{ClientTlsArgs, GatewayArgs, parse_duration, parse_index};
pub use auth::AuthzError;
pub use codec::WatchCodec;
pub use config::GatewayConfig;
pub use error::GatewayError;
pub use listener::{ListenerLimits, ListenerMetrics};
pub use metrics::GatewayMetrics;
pub use server::{Gateway, run_gateway};
