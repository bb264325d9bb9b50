//! `lookout-gateway`: gRPC and HTTP/JSON front ends over the cache, write
//! forwarding, and the `lookout` binary.
//!
//! ```text
//!   curl ──HTTP/1.1──┐
//!   etcdctl ──h2 ────┴─> one port ─> http::serve ─> gRPC routes | http::router ─> EtcdApi
//! ```
//!
//! [`http`] is the HTTP/JSON layer (etcd's `/v3` JSON gateway paths and the
//! readable `/v1` API) and the one-listener server assembly `lookout store`
//! uses. It must never re-encode a shared watch event per watcher.

pub mod http;
