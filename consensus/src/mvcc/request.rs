//! The replicated write: every change to the store is one [`Request`]
//! value. Raft will put these in its log, so they are serde-serializable
//! (etcd messages travel as their protobuf bytes) and carry every
//! nondeterministic choice (lease IDs, TTLs, expiry) made by the proposer.

use lookout_proto::pb::{
    AlarmResponse, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use serde::{Deserialize, Serialize};

/// One write, applied by [`crate::mvcc::apply::Applier::apply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Put(#[serde(with = "pb_bytes")] PutRequest),
    DeleteRange(#[serde(with = "pb_bytes")] DeleteRangeRequest),
    Txn(#[serde(with = "pb_bytes")] TxnRequest),
    /// Physical compaction of every revision superseded at `revision`.
    Compact {
        revision: i64,
    },
    /// `id` and `ttl` are final: the proposer picked the ID and applied the
    /// minimum TTL.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// A client's revoke, or an expiry decided by the proposer's clock.
    LeaseRevoke {
        id: i64,
    },
    /// Raise (`activate`) or clear an alarm of one member (etcd's
    /// AlarmRequest; `alarm` is etcd's AlarmType: 1 NOSPACE, 2 CORRUPT).
    /// Clearing with `member` 0 clears that alarm on every member.
    Alarm {
        activate: bool,
        member: u64,
        alarm: i32,
    },
    /// A client's request with who sent it (etcd's request header
    /// `username` and `auth_revision`): the apply checks its permissions
    /// when auth is enabled. An empty `user` with revision 0 is a client
    /// that named nobody. Requests without this wrapper come from the
    /// store itself (lease expiry, quota alarms) and are trusted.
    As {
        user: String,
        revision: u64,
        req: Box<Request>,
    },
    /// A change to users, roles or the auth flag (auth/apply.rs).
    Auth(crate::auth::AuthRequest),
}

impl Request {
    /// Whether etcd's capped applier refuses this request while the
    /// NOSPACE alarm is raised (it would grow the store).
    pub fn grows_store(&self) -> bool {
        match self {
            Request::Put(_) | Request::LeaseGrant { .. } => true,
            Request::Txn(t) => txn_has_put(t),
            Request::As { req, .. } => req.grows_store(),
            _ => false,
        }
    }

    /// The request itself, without the [`Request::As`] wrapper.
    pub fn inner(&self) -> &Request {
        match self {
            Request::As { req, .. } => req.inner(),
            r => r,
        }
    }

    /// Roughly its size in the log (for batch limits).
    pub fn size(&self) -> usize {
        use prost::Message;
        match self {
            Request::Put(p) => p.encoded_len(),
            Request::DeleteRange(d) => d.encoded_len(),
            Request::Txn(t) => t.encoded_len(),
            Request::As { user, req, .. } => user.len() + 8 + req.size(),
            _ => 16,
        }
    }
}

fn txn_has_put(t: &TxnRequest) -> bool {
    use lookout_proto::pb::request_op::Request as Op;
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(Op::RequestPut(_)) => true,
            Some(Op::RequestTxn(t)) => txn_has_put(t),
            _ => false,
        })
}

/// What applying a [`Request`] answers. Headers carry only the revision;
/// the serving node fills in its cluster/member IDs and term. Serializable
/// because a leader answers a follower's forwarded writes with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Put(#[serde(with = "pb_bytes")] PutResponse),
    DeleteRange(#[serde(with = "pb_bytes")] DeleteRangeResponse),
    Txn(#[serde(with = "pb_bytes")] TxnResponse),
    Compact(#[serde(with = "pb_bytes")] CompactionResponse),
    LeaseGrant(#[serde(with = "pb_bytes")] LeaseGrantResponse),
    LeaseRevoke(#[serde(with = "pb_bytes")] LeaseRevokeResponse),
    Alarm(#[serde(with = "pb_bytes")] AlarmResponse),
    /// An applied [`Request::Auth`]; `token` is the simple token an
    /// Authenticate issued (empty for every other change).
    Auth {
        token: String,
    },
}

/// One applied request as its proposer sees it: etcd's answer (or etcd's
/// error) and the store revision after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub response: crate::error::Result<Response>,
    pub revision: i64,
}

/// serde adapter: a prost message as its protobuf encoding.
pub(crate) mod pb_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<M: prost::Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&m.encode_to_vec())
    }

    pub fn deserialize<'de, M: prost::Message + Default, D: Deserializer<'de>>(
        d: D,
    ) -> Result<M, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_serde() {
        let reqs = vec![
            Request::Put(PutRequest {
                key: "a".into(),
                value: "b".into(),
                lease: 7,
                ..Default::default()
            }),
            Request::LeaseGrant { id: 5, ttl: 10 },
            Request::Compact { revision: 3 },
            Request::Alarm {
                activate: true,
                member: 9,
                alarm: 1,
            },
        ];
        for r in reqs {
            let s = serde_json::to_string(&r).unwrap();
            let back: Request = serde_json::from_str(&s).unwrap();
            assert_eq!(back, r);
        }
    }
}
