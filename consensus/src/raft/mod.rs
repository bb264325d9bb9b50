//! Replication through openraft: the member records and type
//! configuration, the write-ahead log and the log store on it, the state
//! machine that applies committed entries to `mvcc`, and the client half of
//! the peer transport. Nothing here depends on `Store`: the store drives
//! raft, never the reverse.

pub(crate) mod cluster;
pub(crate) mod durability;
pub(crate) mod log_store;
pub(crate) mod peer;
pub(crate) mod sm;
pub(crate) mod type_config;
pub(crate) mod wal;
