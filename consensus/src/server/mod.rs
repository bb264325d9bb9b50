//! The store's gRPC faces: the etcd v3 services, the peer service (the
//! half of the peer transport that calls into `Store`), watch streams and
//! the Maintenance.Snapshot backup stream.

pub(crate) mod grpc;
pub(crate) mod peer;
pub(crate) mod snapshot_stream;
pub(crate) mod watch;

pub use grpc::{EtcdService, credentials, routes, serve};
