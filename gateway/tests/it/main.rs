//! Process-level tests of the `lookout` binary: etcdctl interop against
//! real etcd, crash safety; the HTTP/JSON API (`http_*`).

mod crash;
mod etcdctl_session;
mod http_client;
mod http_etcd_compat;
mod http_v1;
mod http_watch;
mod support;
