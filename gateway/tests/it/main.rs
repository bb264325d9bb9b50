//! The gateway against real etcd 3.4: one binary, one module per concern.

mod harness;
mod kv_vs_etcd;
mod watch_guarantees;
