//! openraft's type configuration for the store, and the types it names:
//! the member record raft replicates and the log entry payload.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mvcc::request::{Reply, Request};

/// Raft node ID: the etcd member ID.
pub type NodeId = u64;

/// A member as raft's membership records it. `name` and `client_urls` are
/// empty until the member has started and published them (etcd shows an
/// added-but-unstarted member the same way).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_urls.join(","))
    }
}

/// One raft log entry's payload: the requests one proposer batch carried.
/// openraft appends (and fsyncs) each client write separately, so
/// batching concurrent requests into one entry is what gives group commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Request>);

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {}", self.0.len())
    }
}

/// The answers to one [`Batch`], in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchReply(pub Vec<Reply>);

openraft::declare_raft_types!(
    /// openraft's types for the store.
    pub TypeConfig:
        D = Batch,
        R = BatchReply,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;
pub type StorageError = openraft::StorageError<NodeId>;
