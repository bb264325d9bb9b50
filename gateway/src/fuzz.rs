//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay
//! tests: untrusted bytes through the decoders a client reaches. Not an
//! API (the HTTP decoders are private to [`crate::http`]); each function
//! returns nothing but "did not panic", and asserts the properties a
//! decoder must keep (what it writes, it reads back the same).
//!
//! ```text
//!  bytes ─> grpc_request  first byte picks one of the request messages every
//!                         service accepts ─> prost decode ─> the store's checks
//!                         ─> re-encode ─> decode again: the same message
//!        ─> json_body     first byte picks a /v3 request type ─> the HTTP body
//!                         parser (one value; a stream of objects cut at
//!                         input-chosen chunk boundaries) ─> etcd's JSON back
//!                         ─> parsed again: the same message
//!        ─> v1_url        a path and query ─> /v1 key and parameter decoding
//! ```

use bytes::Bytes;
use lookout_proto::{pb, v3electionpb as epb, v3lockpb as lpb};
use prost::Message;

use crate::http::body::{JsonStream, parse_json};

/// Decodes `data` as `T`; when it decodes, re-encoding and decoding must
/// give the same message (unknown fields are dropped on the first decode).
fn proto_roundtrip<T: Message + Default + PartialEq>(data: &[u8]) -> Option<T> {
    let m = T::decode(data).ok()?;
    let again = T::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert!(again == m, "protobuf round trip changed the message");
    Some(m)
}

/// Runs `$f::<T>(data)` for the `$sel`-th type of the list.
macro_rules! pick {
    ($sel:expr, $f:ident, $data:expr, [$($t:ty),+ $(,)?]) => {{
        let types: &[fn(&[u8])] = &[$(|d| { let _ = $f::<$t>(d); }),+];
        types[$sel as usize % types.len()]($data)
    }};
}

/// Every request message of KV, Watch, Lease, Cluster, Maintenance, Auth,
/// Lock and Election, decoded as the gRPC services decode it. The KV
/// messages then pass the store's own request checks.
pub fn grpc_request(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            if let Some(r) = proto_roundtrip::<pb::RangeRequest>(rest) {
                let _ = lookout_consensus::validate::check_range(&r);
            }
        }
        1 => {
            if let Some(r) = proto_roundtrip::<pb::PutRequest>(rest) {
                let _ = lookout_consensus::validate::check_put(&r);
            }
        }
        2 => {
            if let Some(r) = proto_roundtrip::<pb::TxnRequest>(rest) {
                let _ = lookout_consensus::validate::check_txn(&r, 128);
                let _ = lookout_consensus::validate::check_txn(&r, usize::MAX);
            }
        }
        _ => pick!(
            sel / 4,
            proto_roundtrip,
            rest,
            [
                pb::DeleteRangeRequest,
                pb::CompactionRequest,
                pb::WatchRequest,
                pb::LeaseGrantRequest,
                pb::LeaseRevokeRequest,
                pb::LeaseKeepAliveRequest,
                pb::LeaseTimeToLiveRequest,
                pb::LeaseLeasesRequest,
                pb::MemberAddRequest,
                pb::MemberRemoveRequest,
                pb::MemberUpdateRequest,
                pb::MemberListRequest,
                pb::MemberPromoteRequest,
                pb::AlarmRequest,
                pb::StatusRequest,
                pb::DefragmentRequest,
                pb::HashRequest,
                pb::HashKvRequest,
                pb::SnapshotRequest,
                pb::MoveLeaderRequest,
                pb::AuthEnableRequest,
                pb::AuthDisableRequest,
                pb::AuthStatusRequest,
                pb::AuthenticateRequest,
                pb::AuthUserAddRequest,
                pb::AuthUserGetRequest,
                pb::AuthUserDeleteRequest,
                pb::AuthUserChangePasswordRequest,
                pb::AuthUserGrantRoleRequest,
                pb::AuthUserRevokeRoleRequest,
                pb::AuthRoleAddRequest,
                pb::AuthRoleGetRequest,
                pb::AuthUserListRequest,
                pb::AuthRoleListRequest,
                pb::AuthRoleDeleteRequest,
                pb::AuthRoleGrantPermissionRequest,
                pb::AuthRoleRevokePermissionRequest,
                lpb::LockRequest,
                lpb::UnlockRequest,
                epb::CampaignRequest,
                epb::ProclaimRequest,
                epb::LeaderRequest,
                epb::ResignRequest,
            ]
        ),
    }
}

/// Parses `data` as the JSON body of `T`; when it parses, etcd's JSON
/// for the message must parse back to the same message.
fn json_roundtrip<T>(data: &[u8]) -> Option<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default + PartialEq + std::fmt::Debug,
{
    let m: T = parse_json(data).ok()?;
    let text = serde_json::to_vec(&m).expect("messages serialize");
    let again: T = parse_json(&text).unwrap_or_else(|e| {
        panic!(
            "our own JSON does not parse back: {e}: {}",
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(again, m, "JSON round trip changed the message");
    Some(m)
}

/// A `/v3` JSON body: the first byte picks the request type (and whether
/// the body is read as one value or, as `/v3/watch` and
/// `/v3/lease/keepalive` read theirs, as a stream of objects cut into
/// chunks at the lengths the second byte seeds).
pub fn json_body(data: &[u8]) {
    let [sel, cut, rest @ ..] = data else {
        return;
    };
    if sel & 0x80 != 0 {
        json_stream(*cut, rest, sel & 1 == 1);
        return;
    }
    pick!(
        *sel,
        json_roundtrip,
        rest,
        [
            pb::RangeRequest,
            pb::PutRequest,
            pb::DeleteRangeRequest,
            pb::TxnRequest,
            pb::CompactionRequest,
            pb::WatchRequest,
            pb::LeaseGrantRequest,
            pb::LeaseRevokeRequest,
            pb::LeaseKeepAliveRequest,
            pb::LeaseTimeToLiveRequest,
            pb::MemberAddRequest,
            pb::MemberRemoveRequest,
            pb::MemberUpdateRequest,
            pb::MemberPromoteRequest,
            pb::AlarmRequest,
            pb::HashKvRequest,
            pb::MoveLeaderRequest,
            pb::AuthenticateRequest,
            pb::AuthUserAddRequest,
            pb::AuthUserChangePasswordRequest,
            pb::AuthUserGrantRoleRequest,
            pb::AuthRoleGrantPermissionRequest,
            pb::AuthRoleRevokePermissionRequest,
            lpb::LockRequest,
            lpb::UnlockRequest,
            epb::CampaignRequest,
            epb::ProclaimRequest,
            epb::LeaderRequest,
            epb::ResignRequest,
        ]
    );
}

/// The streaming body reader: the same bytes cut into chunks (lengths
/// 1..=16 from a small generator seeded by `cut`) must give the same
/// objects, or the same failure, as one chunk does.
fn json_stream(cut: u8, data: &[u8], keepalive: bool) {
    let chunked = split(data, cut);
    if keepalive {
        let a = read_stream::<pb::LeaseKeepAliveRequest>(vec![Bytes::copy_from_slice(data)]);
        let b = read_stream::<pb::LeaseKeepAliveRequest>(chunked);
        assert_eq!(a, b, "chunk boundaries changed what the stream read");
    } else {
        let a = read_stream::<pb::WatchRequest>(vec![Bytes::copy_from_slice(data)]);
        let b = read_stream::<pb::WatchRequest>(chunked);
        assert_eq!(a, b, "chunk boundaries changed what the stream read");
    }
}

fn split(data: &[u8], seed: u8) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut x = u32::from(seed) | 1;
    let mut rest = data;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x % 16 + 1) as usize;
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(Bytes::copy_from_slice(a));
        rest = b;
    }
    out
}

/// Every object the stream yields, with errors as their text; stops at
/// the first error (as the endpoints do).
fn read_stream<T>(chunks: Vec<Bytes>) -> Vec<Result<T, String>>
where
    T: serde::de::DeserializeOwned + Default,
{
    let body = axum::body::Body::from_stream(futures::stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ));
    // A limit small enough that inputs reach it.
    let mut s = JsonStream::new(body, 4096);
    futures::executor::block_on(async {
        let mut out = Vec::new();
        // Bounded: every object consumes input, so this ends well before.
        for _ in 0..100_000 {
            match s.next::<T>().await {
                None => break,
                Some(Ok(m)) => out.push(Ok(m)),
                Some(Err(e)) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    })
}

/// A `/v1` URL (`path?query`, lossy UTF-8 as a URI would carry it):
/// the key of both APIs and every parameter decoder the endpoints use.
pub fn v1_url(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text.as_ref(), None),
    };
    for api in ["/v1/kv", "/v1/watch"] {
        let key = crate::http::request::path_key(path, api);
        let end = crate::http::request::prefix_end(&key);
        if !key.is_empty() && end != [0] {
            assert!(
                end.as_slice() > key.as_slice(),
                "prefix end sorts after its prefix"
            );
        }
    }
    const NAMES: &[&str] = &[
        "prefix",
        "rev",
        "limit",
        "keys_only",
        "count_only",
        "serializable",
        "index",
        "value",
        "lease",
        "prev_kv",
        "initial",
        "progress",
    ];
    if let Ok(p) = crate::http::request::Params::parse(query, NAMES) {
        for n in NAMES {
            let _ = p.flag(n);
            let _ = p.int(n);
            let _ = p.text(n);
        }
    }
    // Percent-decoding never grows the input and leaves plain text alone.
    let decoded = crate::http::text::percent_decode(path, false);
    assert!(decoded.len() <= path.len());
    if !path.contains('%') {
        assert_eq!(decoded, path.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    //! The committed corpus (`fuzz/corpus/<target>/`) replayed in the
    //! ordinary test run, and the writer of the seed inputs (run by hand
    //! with `--ignored`).

    use super::*;
    use std::path::Path;

    fn dir(target: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    fn replay(target: &str, f: fn(&[u8])) {
        let mut n = 0;
        let d = dir(target);
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| f(&b));
            assert!(r.is_ok(), "{target}: {} panicked", p.display());
            n += 1;
        }
        assert!(n > 0, "no corpus in {}", d.display());
    }

    #[test]
    fn grpc_corpus_replays() {
        replay("grpc_request", grpc_request);
    }

    #[test]
    fn json_corpus_replays() {
        replay("json_body", json_body);
    }

    #[test]
    fn v1_url_corpus_replays() {
        replay("v1_url", v1_url);
    }

    fn seed(target: &str, name: &str, bytes: &[u8]) {
        let d = dir(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
    }

    fn with(sel: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![sel];
        v.extend_from_slice(body);
        v
    }

    /// `cargo test -p lookout-gateway --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files into fuzz/corpus"]
    fn write_fuzz_seeds() {
        let range = pb::RangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"b"),
            limit: 10,
            revision: 3,
            sort_order: 1,
            sort_target: 2,
            min_mod_revision: 1,
            ..Default::default()
        };
        let put = pb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            lease: 7,
            prev_kv: true,
            ..Default::default()
        };
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: 0,
                target: 3,
                key: Bytes::from_static(b"k"),
                target_union: Some(pb::compare::TargetUnion::Value(Bytes::from_static(b"v"))),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put.clone())),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(range.clone())),
            }],
        };
        let watch = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: Bytes::from_static(b"a"),
                    range_end: Bytes::from_static(b"\0"),
                    start_revision: 5,
                    progress_notify: true,
                    filters: vec![1],
                    prev_kv: true,
                    watch_id: 3,
                    fragment: true,
                    ..Default::default()
                },
            )),
        };
        seed("grpc_request", "range", &with(0, &range.encode_to_vec()));
        seed("grpc_request", "put", &with(1, &put.encode_to_vec()));
        seed("grpc_request", "txn", &with(2, &txn.encode_to_vec()));
        // sel % 4 == 3 picks from the list by sel / 4: 2 is WatchRequest.
        seed(
            "grpc_request",
            "watch",
            &with(3 + 4 * 2, &watch.encode_to_vec()),
        );

        for (sel, name, body) in [
            (0u8, "range", &br#"{"key":"YQ==","range_end":"Yg==","limit":"10","sort_order":"DESCEND","sort_target":"MOD"}"#[..]),
            (1, "put", br#"{"key":"Zm9v","value":"YmFy","lease":"7","prev_kv":true}"#),
            (3, "txn", br#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#),
            (5, "watch", br#"{"create_request":{"key":"Zm9v","start_revision":"2","filters":["NOPUT"],"prev_kv":true}}"#),
            (6, "lease-grant", br#"{"TTL":"30","ID":"0"}"#),
            (25, "campaign", br#"{"name":"ZWxlY3Rpb24=","lease":"1","value":"dg=="}"#),
        ] {
            let mut v = vec![sel, 0];
            v.extend_from_slice(body);
            seed("json_body", name, &v);
        }
        let mut stream = vec![0x80u8, 7];
        stream.extend_from_slice(
            br#"{"create_request":{"key":"YQ=="}} {"progress_request":{}}
{"cancel_request":{"watch_id":"1"}}"#,
        );
        seed("json_body", "watch-stream", &stream);
        let mut ka = vec![0x81u8, 3];
        ka.extend_from_slice(br#"{"ID":"7"}{"ID":"8"} {"ID":"#);
        seed("json_body", "keepalive-stream", &ka);

        for (name, url) in [
            ("get", "/v1/kv/app/config?rev=5&serializable=true"),
            (
                "list",
                "/v1/kv/app/?prefix=true&limit=10&keys_only&count_only=0",
            ),
            ("escaped", "/v1/kv/a%2Fb%00%ff%zz?value=n%31&index=node"),
            ("watch", "/v1/watch/app?prefix=true&rev=12&progress"),
            ("put", "/v1/kv/k?lease=12345&prev_kv=1"),
        ] {
            seed("v1_url", name, url.as_bytes());
        }
    }
}
