//! Range evaluated from the cache's snapshot, option for option, against
//! real etcd's answer for the same data.

use lookout_proto::pb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    range_request::{SortOrder, SortTarget},
    request_op,
};
use lookout_testkit::EtcdServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_matches_etcd() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    // Versions, create and mod revisions and values with ties: a txn creates
    // two keys in one revision, some values repeat, some keys are rewritten.
    for (k, v) in [
        ("a", "m"),
        ("b", "z"),
        ("b/1", "m"),
        ("b/2", "a"),
        ("c", "q"),
        ("d", "m"),
        ("e", "e"),
    ] {
        put(&mut kv, k, v).await;
    }
    let op = |k: &str, v: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        })),
    };
    kv.txn(TxnRequest {
        success: vec![op("b/3", "m"), op("f", "m"), op("g", "zz")],
        ..Default::default()
    })
    .await
    .unwrap();
    for (k, v) in [
        ("a", "m"),
        ("b/1", "n"),
        ("a", "o"),
        ("c", "m"),
        ("h", ""),
        ("b/4", "b"),
        ("i", "q"),
    ] {
        put(&mut kv, k, v).await;
    }
    kv.delete_range(DeleteRangeRequest {
        key: b("e"),
        ..Default::default()
    })
    .await
    .unwrap();
    let rev = put(&mut kv, "j", "m").await;

    let cache = start_cache(&[&etcd.endpoint], config()).await;
    assert_eq!(cache.revision(), rev);

    let ranges: [(&str, &[u8]); 8] = [
        ("b", b""),
        ("b/", b"b0"),
        ("a", b"c"),
        ("b", b"\0"),
        ("\0", b"\0"),
        ("c", b"a"),
        ("nope", b""),
        ("b/2", b"b/4"),
    ];
    let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
    let targets = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ];
    let filters: [(i64, i64, i64, i64); 5] = [
        (0, 0, 0, 0),
        (4, 0, 0, 0),
        (0, 12, 0, 0),
        (0, 0, 9, 0),
        (0, 0, 0, 9),
    ];
    let mut compared = 0;
    for (key, end) in ranges {
        for limit in [0, 1, 3, 100] {
            for order in orders {
                for target in targets {
                    for (min_mod, max_mod, min_create, max_create) in filters {
                        for (keys_only, count_only) in
                            [(false, false), (true, false), (false, true)]
                        {
                            let req = RangeRequest {
                                key: b(key),
                                range_end: bytes::Bytes::copy_from_slice(end),
                                limit,
                                sort_order: order as i32,
                                sort_target: target as i32,
                                keys_only,
                                count_only,
                                min_mod_revision: min_mod,
                                max_mod_revision: max_mod,
                                min_create_revision: min_create,
                                max_create_revision: max_create,
                                serializable: true,
                                ..Default::default()
                            };
                            let theirs = kv.range(req.clone()).await.unwrap().into_inner();
                            let ours = cache.range(&req).unwrap();
                            assert_eq!(
                                (&ours.kvs, ours.more, ours.count),
                                (&theirs.kvs, theirs.more, theirs.count),
                                "{req:?}"
                            );
                            let (h1, h2) = (ours.header.unwrap(), theirs.header.unwrap());
                            assert_eq!(
                                (h1.revision, h1.cluster_id, h1.member_id),
                                (h2.revision, h2.cluster_id, h2.member_id)
                            );
                            compared += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(compared, 8 * 4 * 3 * 5 * 5 * 3);

    // At an explicit revision: the cached one is served, others are not.
    let mut req = RangeRequest {
        key: b("a"),
        revision: rev,
        ..Default::default()
    };
    assert_eq!(
        cache.range(&req).unwrap().kvs,
        kv.range(req.clone()).await.unwrap().into_inner().kvs
    );
    req.revision = rev - 3;
    assert!(cache.range(&req).is_err());
    // Bad input gets etcd's status.
    let bad = RangeRequest::default();
    let ours = tonic::Status::from(cache.range(&bad).unwrap_err());
    let theirs = kv.range(bad).await.unwrap_err();
    assert_eq!(
        (ours.code(), ours.message()),
        (theirs.code(), theirs.message())
    );
}

/// Hundreds of keys with few distinct sort values: Go's unstable sort
/// (ninther pivots, partial insertion sort, equal partitions) decides the
/// order of ties, and the cache must reproduce it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tie_heavy_sorts_of_many_keys_match_etcd() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let mut x = 0x9e37_79b9u64;
    for batch in 0..40 {
        let ops = (0..5)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b(&format!("t/{:03}", (batch * 5 + i) * 7 % 200)),
                        value: b(["a", "b", "c"][(x % 3) as usize]),
                        ..Default::default()
                    })),
                }
            })
            .collect();
        kv.txn(TxnRequest {
            success: ops,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for i in (0..200).step_by(3) {
        put(&mut kv, &format!("t/{i:03}"), "b").await;
    }
    let cache = start_cache(&[&etcd.endpoint], config()).await;
    for (key, end) in [("t/", "t0"), ("t/05", "t/15"), ("t/000", "t/013")] {
        for order in [SortOrder::Ascend, SortOrder::Descend] {
            for target in [
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ] {
                for limit in [0, 60] {
                    let req = RangeRequest {
                        key: b(key),
                        range_end: b(end),
                        sort_order: order as i32,
                        sort_target: target as i32,
                        limit,
                        serializable: true,
                        ..Default::default()
                    };
                    let theirs = kv.range(req.clone()).await.unwrap().into_inner();
                    let ours = cache.range(&req).unwrap();
                    let keys = |kvs: &[lookout_proto::mvccpb::KeyValue]| {
                        kvs.iter()
                            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        keys(&ours.kvs),
                        keys(&theirs.kvs),
                        "{key}..{end} {order:?} {target:?} limit {limit}"
                    );
                    assert_eq!(ours, RangeResponse_with_header(&theirs, &ours));
                }
            }
        }
    }
}

#[allow(non_snake_case)]
fn RangeResponse_with_header(
    theirs: &lookout_proto::pb::RangeResponse,
    ours: &lookout_proto::pb::RangeResponse,
) -> lookout_proto::pb::RangeResponse {
    let mut t = theirs.clone();
    t.header = ours.header;
    t
}
