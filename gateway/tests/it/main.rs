//! The `lookout` gateway and binary against real etcd 3.4 and our own
//! store: one binary, one module per concern.

mod admin;
mod crash;
mod etcdctl_session;
mod harness;
mod http_endpoints;
mod informer;
mod kv_vs_etcd;
mod lifecycle;
mod many_gateways;
mod prefixes;
mod support;
mod watch_guarantees;
