//! Integration tests of the store: in-process servers on 127.0.0.1:0
//! driven over gRPC, and the same probes against a real etcd 3.4.

mod auth;
mod cluster;
mod crash;
mod leases;
mod linearizable;
mod membership;
mod mvcc;
mod rebuild;
mod space;
mod support;
mod vs_etcd;
mod watch;
