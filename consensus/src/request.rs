//! The replicated write: every change to the store is one [`Request`]
//! value. Raft will put these in its log, so they are serde-serializable
//! (etcd messages travel as their protobuf bytes) and carry every
//! nondeterministic choice (lease IDs, TTLs, expiry) made by the proposer.

use lookout_proto::pb::{
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use serde::{Deserialize, Serialize};

/// One write, applied by [`crate::apply::Applier::apply`].
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
}

/// What applying a [`Request`] answers. Headers carry only the revision;
/// the serving node fills in its cluster/member IDs and term.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

/// serde adapter: a prost message as its protobuf encoding.
mod pb_bytes {
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
        ];
        for r in reqs {
            let s = serde_json::to_string(&r).unwrap();
            let back: Request = serde_json::from_str(&s).unwrap();
            assert_eq!(back, r);
        }
    }
}
