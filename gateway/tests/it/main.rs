//! Process-level tests of the `lookout` binary: etcdctl interop against
//! real etcd, crash safety.

mod crash;
mod etcdctl_session;
mod support;
