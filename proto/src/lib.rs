//! `lookout-proto`: the etcd v3 API as Rust types and tonic stubs.
//!
//! ```text
//!   proto/*.proto --protox--> FileDescriptorSet --tonic-prost-build--> OUT_DIR/*.rs
//!                                            └----pbjson-build-----> OUT_DIR/*.serde.rs
//! ```
//!
//! Every message also implements `serde::Serialize` / `Deserialize` in the
//! proto3 JSON mapping etcd 3.4's grpc-gateway uses (`/v3/kv/range` and
//! friends): the .proto's own field names, 64-bit integers as strings,
//! bytes as standard base64, enums by name, zero values left out.
//!
//! This crate owns the wire format only: the message types, the gRPC client
//! and server traits, and small helpers on them. It must never hold logic
//! that belongs to the store or the cache, and must stay wire compatible with
//! etcd 3.4 (same packages, field numbers and types).

#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's server-side lock service (`v3lockpb.Lock`).
#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's server-side election service (`v3electionpb.Election`).
#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// The store-to-store (peer) protocol: versioned envelopes around raft
/// messages and forwarded requests.
#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod peer {
    tonic::include_proto!("lookout.peer");
}

/// What a gateway asks a `lookout store` beside etcd's API (who a token
/// names).
#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod gateway {
    tonic::include_proto!("lookout.gateway");
}

pub use etcdserverpb as pb;

#[cfg(test)]
mod json_tests {
    //! The JSON etcd 3.4's gateway wrote for the same messages (captured
    //! from a real etcd with curl), byte for byte.
    use super::{mvccpb, pb};
    use bytes::Bytes;

    fn header(rev: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: 16486887387798504669,
            member_id: 2053262249999359528,
            revision: rev,
            raft_term: 2,
        })
    }

    const HEADER: &str = r#"{"cluster_id":"16486887387798504669","member_id":"2053262249999359528","revision":"REV","raft_term":"2"}"#;

    fn h(rev: i64) -> String {
        HEADER.replace("REV", &rev.to_string())
    }

    #[test]
    fn range_response_is_etcds_json() {
        let r = pb::RangeResponse {
            header: header(2),
            kvs: vec![mvccpb::KeyValue {
                key: Bytes::from_static(b"foo"),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: Bytes::from_static(b"bar"),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!(
                r#"{{"header":{},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}],"count":"1"}}"#,
                h(2)
            )
        );
    }

    #[test]
    fn lease_status_and_watch_names_are_the_protos() {
        let g = pb::LeaseTimeToLiveResponse {
            header: header(7),
            id: 1234,
            ttl: 59,
            granted_ttl: 60,
            keys: vec![Bytes::from_static(b"lk")],
        };
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            format!(
                r#"{{"header":{},"ID":"1234","TTL":"59","grantedTTL":"60","keys":["bGs="]}}"#,
                h(7)
            )
        );
        let s = pb::StatusResponse {
            header: header(8),
            version: "3.4.23".into(),
            db_size: 20480,
            leader: 2053262249999359528,
            raft_index: 20,
            raft_term: 2,
            raft_applied_index: 20,
            errors: vec![],
            db_size_in_use: 16384,
            is_learner: false,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!(
                r#"{{"header":{},"version":"3.4.23","dbSize":"20480","leader":"2053262249999359528","raftIndex":"20","raftTerm":"2","raftAppliedIndex":"20","dbSizeInUse":"16384"}}"#,
                h(8)
            )
        );
        let w = pb::WatchResponse {
            header: header(12),
            events: vec![mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue {
                    key: Bytes::from_static(b"pa"),
                    mod_revision: 12,
                    ..Default::default()
                }),
                prev_kv: Some(mvccpb::KeyValue {
                    key: Bytes::from_static(b"pa"),
                    create_revision: 10,
                    mod_revision: 11,
                    version: 2,
                    value: Bytes::from_static(b"2"),
                    lease: 0,
                }),
            }],
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            format!(
                r#"{{"header":{},"events":[{{"type":"DELETE","kv":{{"key":"cGE=","mod_revision":"12"}},"prev_kv":{{"key":"cGE=","create_revision":"10","mod_revision":"11","version":"2","value":"Mg=="}}}}]}}"#,
                h(12)
            )
        );
    }

    #[test]
    fn requests_parse_in_both_spellings() {
        let t: pb::TxnRequest = serde_json::from_str(
            r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"0"}],
                "success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}],
                "failure":[{"request_range":{"key":"Zm9v","limit":5,"sort_order":1}}],
                "unknown_field":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(t.compare[0].key.as_ref(), b"foo");
        assert_eq!(
            t.compare[0].target,
            pb::compare::CompareTarget::Create as i32
        );
        match &t.success[0].request {
            Some(pb::request_op::Request::RequestPut(p)) => assert_eq!(p.value.as_ref(), b"bar"),
            other => panic!("{other:?}"),
        }
        match &t.failure[0].request {
            Some(pb::request_op::Request::RequestRange(r)) => {
                assert_eq!((r.limit, r.sort_order), (5, 1))
            }
            other => panic!("{other:?}"),
        }
    }
}
