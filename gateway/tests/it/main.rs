//! The `lookout` gateway and binary against real etcd 3.4 and our own
//! store: one binary, one module per concern (`http_*`: the HTTP/JSON API).

mod admin;
mod crash;
mod etcdctl_session;
mod harness;
mod http_client;
mod http_endpoints;
mod http_etcd_compat;
mod http_v1;
mod http_watch;
mod informer;
mod kv_vs_etcd;
mod lifecycle;
mod prefixes;
mod support;
mod watch_guarantees;
