//! `lookout-consensus`: the revision store (MVCC on redb, leases, the store's
//! watch hub, raft replication, and the store's etcd v3 gRPC services).
//!
//! It must never depend on the cache or the gateway.
