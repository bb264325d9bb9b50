//! Who is in the cluster: etcd-style deterministic IDs and
//! `--initial-cluster` (the member record itself is in `type_config.rs`).
//!
//! Member IDs depend only on a member's peer URLs and the cluster token
//! (as etcd's, for members of the initial cluster), so `etcdctl member
//! list` shows the same IDs after every restart, and a member added with
//! `member add` computes the ID the leader gave it from its own flags.

use std::collections::BTreeMap;

use sha2::Digest;

use crate::error::{Error, Result};
use crate::raft::type_config::{MemberNode, NodeId};

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
