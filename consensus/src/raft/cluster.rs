//! Who is in the cluster: openraft's type configuration, the member record
//! raft replicates, etcd-style deterministic IDs, and `--initial-cluster`.
//!
//! Member IDs depend only on a member's peer URLs and the cluster token
//! (as etcd's, for members of the initial cluster), so `etcdctl member
//! list` shows the same IDs after every restart, and a member added with
//! `member add` computes the ID the leader gave it from its own flags.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::{Error, Result};
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

/// Deterministic 64-bit ID from a label and strings.
pub(crate) fn derive_id(label: &str, parts: &[&str]) -> u64 {
    let mut h = sha2::Sha256::new();
    h.update(label.as_bytes());
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")).max(1)
}

/// A member's ID: from its sorted peer URLs and the cluster token, as etcd
/// derives the IDs of its initial members.
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.push(token);
    derive_id("member", &urls)
}

/// Parses `--initial-cluster` (`name=url,name=url2,other=url3`): a member
/// may list several peer URLs by repeating its name.
///
/// # Errors
/// [`Error::Internal`] naming the malformed element.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| Error::Internal(format!("bad --initial-cluster element {part:?}")))?;
        if url.is_empty() {
            return Err(Error::Internal(format!(
                "bad --initial-cluster element {part:?}"
            )));
        }
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(out)
}

/// The initial membership: ID -> node with name and peer URLs only, so
/// every member that bootstraps computes the very same first log entry.
pub fn initial_members(
    cluster: &[(String, Vec<String>)],
    token: &str,
) -> BTreeMap<NodeId, MemberNode> {
    cluster
        .iter()
        .map(|(name, urls)| {
            (
                member_id(urls, token),
                MemberNode {
                    name: name.clone(),
                    peer_urls: urls.clone(),
                    client_urls: Vec::new(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_depend_on_urls_and_token() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster");
        assert_eq!(
            a,
            member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster")
        );
        assert_ne!(
            a,
            member_id(&["http://127.0.0.1:2381".into()], "etcd-cluster")
        );
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "other"));
    }

    #[test]
    fn initial_cluster_parses_like_etcd() {
        let c = parse_initial_cluster("a=http://x:1,b=http://y:2,a=http://x:3").unwrap();
        assert_eq!(
            c,
            vec![
                (
                    "a".to_string(),
                    vec!["http://x:1".to_string(), "http://x:3".into()]
                ),
                ("b".to_string(), vec!["http://y:2".to_string()]),
            ]
        );
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=").is_err());
    }
}
