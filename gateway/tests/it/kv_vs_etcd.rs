//! Every KV answer through the gateway equals real etcd's answer to the
//! same request at the same state: ranges with every option, read-only
//! txns (served from the cache), forwarded writes, and etcd's error codes
//! and messages for bad requests.

use bytes::Bytes;
use lookout_proto::pb::{
    Compare, DeleteRangeRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse, compare,
    lease_client::LeaseClient,
    range_request::{SortOrder, SortTarget},
    request_op,
};
use lookout_testkit::EtcdServer;

use crate::harness::*;

fn strip(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

/// Same outcome: equal responses (ids stripped) or equal code and message.
fn same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    direct: Result<T, tonic::Status>,
    via: Result<T, tonic::Status>,
) {
    match (direct, via) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}: responses differ"),
        (Err(a), Err(b)) => {
            assert_eq!(
                (a.code(), a.message()),
                (b.code(), b.message()),
                "{what}: statuses differ"
            );
        }
        (a, b) => panic!("{what}: etcd {a:?}\n gateway {b:?}"),
    }
}

fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

fn range_op(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

fn cmp(
    key: &str,
    target: compare::CompareTarget,
    result: compare::CompareResult,
    u: compare::TargetUnion,
) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: b(key),
        target_union: Some(u),
        range_end: Bytes::new(),
    }
}

fn strip_txn(mut t: TxnResponse) -> TxnResponse {
    strip(&mut t.header);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_txns_and_errors_match_etcd() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    // Ties under non-key sorts, several versions, a deleted key.
    for (k, v) in [
        ("a", "3"),
        ("b", "1"),
        ("c", "2"),
        ("b", "9"),
        ("d", "1"),
        ("e", "x"),
        ("a1", "z"),
    ] {
        put(&mut direct, k, v).await;
    }
    direct
        .delete_range(DeleteRangeRequest {
            key: b("e"),
            ..Default::default()
        })
        .await
        .unwrap();
    let old_rev = put(&mut direct, "f", "old").await;
    put(&mut direct, "f", "new").await;

    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let mut via = kv(&gw.endpoint).await;
    let now = put(&mut via, "g", "last").await;

    let mut ranges = vec![
        ("single", range("a", "")),
        ("missing", range("zz", "")),
        ("interval", range("a", "d")),
        ("from key", range("b", "\0")),
        ("all", range("\0", "\0")),
        ("empty interval", range("d", "a")),
    ];
    for (name, order, target) in [
        ("key desc", SortOrder::Descend, SortTarget::Key),
        ("value asc", SortOrder::Ascend, SortTarget::Value),
        ("version none", SortOrder::None, SortTarget::Version),
        ("create desc", SortOrder::Descend, SortTarget::Create),
        ("mod asc", SortOrder::Ascend, SortTarget::Mod),
    ] {
        let mut r = range("\0", "\0");
        r.sort_order = order as i32;
        r.sort_target = target as i32;
        r.limit = 3;
        ranges.push((name, r));
    }
    let mut r = range("\0", "\0");
    r.limit = 2;
    ranges.push(("limit", r));
    let mut r = range("\0", "\0");
    r.keys_only = true;
    r.serializable = true;
    ranges.push(("keys only, serializable", r));
    let mut r = range("\0", "\0");
    r.count_only = true;
    ranges.push(("count only", r));
    let mut r = range("\0", "\0");
    r.min_mod_revision = 4;
    r.max_create_revision = 8;
    ranges.push(("revision filters", r));
    let mut r = range("f", "");
    r.revision = old_rev;
    ranges.push(("old revision (forwarded)", r));
    let mut r = range("\0", "\0");
    r.revision = now;
    ranges.push(("current revision", r));
    let mut r = range("a", "");
    r.revision = now + 100;
    ranges.push(("future revision", r));
    ranges.push(("empty key", range("", "")));
    let mut r = range("a", "");
    r.sort_order = 7;
    ranges.push(("bad sort order", r));
    let mut r = range("\0", "\0");
    r.sort_target = SortTarget::Value as i32;
    r.limit = 2;
    r.sort_order = 7;
    ranges.push(("unknown sort order (etcd 3.4 sorts nothing)", r));

    for (name, r) in &ranges {
        let d = direct.range(r.clone()).await.map(|x| x.into_inner());
        let v = via.range(r.clone()).await.map(|x| x.into_inner());
        let (d, v) = (
            d.map(|mut x| {
                strip(&mut x.header);
                x
            }),
            v.map(|mut x| {
                strip(&mut x.header);
                x
            }),
        );
        same(name, d, v);
    }

    // An unknown sort target crashes etcd 3.4 (nil sorter); the gateway
    // answers as etcd 3.5 does and never forwards it.
    let mut r = range("a", "");
    r.sort_target = 9;
    let e = via.range(r).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: invalid sort option"
        )
    );

    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let txns = vec![
        (
            "read-only, success",
            TxnRequest {
                compare: vec![cmp("a", T::Value, R::Equal, U::Value(b("3")))],
                success: vec![range_op(range("a", "c")), range_op(range("d", ""))],
                failure: vec![range_op(range("zz", ""))],
            },
        ),
        (
            "read-only, failure, compares on missing keys and ranges",
            TxnRequest {
                compare: vec![
                    cmp("nope", T::Version, R::Equal, U::Version(0)),
                    Compare {
                        range_end: b("c"),
                        ..cmp("a", T::Mod, R::Greater, U::ModRevision(1))
                    },
                    cmp("nope", T::Value, R::NotEqual, U::Value(b("x"))),
                ],
                success: vec![range_op(range("a", ""))],
                failure: vec![range_op(RangeRequest {
                    sort_order: SortOrder::Descend as i32,
                    sort_target: SortTarget::Value as i32,
                    ..range("\0", "\0")
                })],
            },
        ),
        ("empty", TxnRequest::default()),
        (
            "serializable ranges only",
            TxnRequest {
                success: vec![range_op(RangeRequest {
                    serializable: true,
                    count_only: true,
                    ..range("\0", "\0")
                })],
                ..Default::default()
            },
        ),
        (
            "too many ops",
            TxnRequest {
                success: (0..129).map(|_| range_op(range("a", ""))).collect(),
                ..Default::default()
            },
        ),
        (
            "empty compare key",
            TxnRequest {
                compare: vec![cmp("", T::Version, R::Equal, U::Version(0))],
                ..Default::default()
            },
        ),
        (
            "range at a future revision",
            TxnRequest {
                success: vec![range_op(RangeRequest {
                    revision: now + 5,
                    ..range("a", "")
                })],
                ..Default::default()
            },
        ),
    ];
    for (name, t) in &txns {
        let d = direct
            .txn(t.clone())
            .await
            .map(|x| strip_txn(x.into_inner()));
        let v = via.txn(t.clone()).await.map(|x| strip_txn(x.into_inner()));
        same(name, d, v);
    }

    // The read-only ones were answered by the cache, not forwarded.
    let (_, metrics) = http_get(&gw.endpoint, "/metrics").await.expect("metrics");
    let cached: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lookout_gateway_cached_txns_total "))
        .expect("txn counter")
        .parse()
        .unwrap();
    assert!(
        cached >= 4.0,
        "read-only txns served from the cache: {cached}"
    );

    // Bad writes: the store's statuses come back unchanged, nothing changes.
    let mut lease_d = LeaseClient::new(channel(&etcd.endpoint).await);
    let mut lease_v = LeaseClient::new(channel(&gw.endpoint).await);
    let bad_puts = vec![
        ("put empty key", PutRequest::default()),
        (
            "put with unknown lease",
            PutRequest {
                key: b("k"),
                value: b("v"),
                lease: 0x1234abcd,
                ..Default::default()
            },
        ),
        (
            "put too large",
            PutRequest {
                key: b("big"),
                value: Bytes::from(vec![b'x'; 1600 * 1024]),
                ..Default::default()
            },
        ),
        (
            "put over the message limit",
            PutRequest {
                key: b("bigger"),
                value: Bytes::from(vec![b'x'; 2100 * 1024]),
                ..Default::default()
            },
        ),
        (
            "put ignore_value on a missing key",
            PutRequest {
                key: b("absent"),
                ignore_value: true,
                ..Default::default()
            },
        ),
    ];
    for (name, p) in bad_puts {
        let d = direct.put(p.clone()).await.map(|x| x.into_inner());
        let v = via.put(p).await.map(|x| x.into_inner());
        assert!(d.is_err(), "{name}: etcd accepted it");
        same(name, d, v);
    }
    let d = direct
        .delete_range(DeleteRangeRequest::default())
        .await
        .map(|x| x.into_inner());
    let v = via
        .delete_range(DeleteRangeRequest::default())
        .await
        .map(|x| x.into_inner());
    same("delete empty key", d, v);
    let d = lease_d
        .lease_revoke(LeaseRevokeRequest { id: 77 })
        .await
        .map(|x| x.into_inner());
    let v = lease_v
        .lease_revoke(LeaseRevokeRequest { id: 77 })
        .await
        .map(|x| x.into_inner());
    same("revoke unknown lease", d, v);

    // Compaction: future, then real, then the same again and reads below it.
    let head = via
        .range(range("a", ""))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    for (name, rev) in [("compact future", head + 10)] {
        let req = lookout_proto::pb::CompactionRequest {
            revision: rev,
            physical: false,
        };
        let d = direct.compact(req).await.map(|x| x.into_inner());
        let v = via.compact(req).await.map(|x| x.into_inner());
        same(name, d, v);
    }
    compact(&mut via, old_rev + 1).await;
    let req = lookout_proto::pb::CompactionRequest {
        revision: old_rev,
        physical: false,
    };
    let d = direct.compact(req).await.map(|x| x.into_inner());
    let v = via.compact(req).await.map(|x| x.into_inner());
    same("compact below the compaction", d, v);
    let mut r = range("f", "");
    r.revision = old_rev;
    let d = direct.range(r.clone()).await.map(|x| x.into_inner());
    let v = via.range(r).await.map(|x| x.into_inner());
    assert!(d.is_err());
    same("range at a compacted revision", d, v);
}

/// A write's response comes back only once this gateway's cache holds it:
/// a serializable read right after it, through the same gateway, sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes() {
    let etcd = EtcdServer::start().await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let mut via = kv(&gw.endpoint).await;
    for i in 0..100 {
        let value = format!("v{i}");
        let rev = match i % 3 {
            0 => put(&mut via, "ryw", &value).await,
            1 => {
                let t = TxnRequest {
                    success: vec![put_op("ryw", &value), put_op("ryw2", &value)],
                    ..Default::default()
                };
                via.txn(t)
                    .await
                    .unwrap()
                    .into_inner()
                    .header
                    .unwrap()
                    .revision
            }
            _ => {
                put(&mut via, "ryw", &value).await;
                via.delete_range(DeleteRangeRequest {
                    key: b("ryw2"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .revision
            }
        };
        let got = via
            .range(RangeRequest {
                serializable: true,
                ..range("ryw", "")
            })
            .await
            .unwrap()
            .into_inner();
        assert!(got.header.unwrap().revision >= rev, "read below the write");
        assert_eq!(got.kvs[0].value, b(&value), "write {i} not visible");
    }
}

/// A burst of concurrent linearizable reads shares revision probes: the
/// store sees far fewer requests than there are reads, and every read
/// still sees every write acknowledged before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_revision_probes() {
    let etcd = EtcdServer::start().await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let mut direct = kv(&etcd.endpoint).await;
    let before = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("lookout_gateway_read_index_probes_total "))
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    let (_, t) = http_get(&gw.endpoint, "/metrics").await.unwrap();
    let probes0 = before(&t);
    let mut tasks = Vec::new();
    for i in 0..200 {
        // A write straight to the store, acknowledged before the read starts:
        // the gateway has not seen it yet, the read must.
        let rev = put(&mut direct, "lin", &format!("{i}")).await;
        let ch = channel(&gw.endpoint).await;
        tasks.push(tokio::spawn(async move {
            let r = kv_client_from(ch)
                .range(range("lin", ""))
                .await
                .unwrap()
                .into_inner();
            assert!(r.header.unwrap().revision >= rev);
            assert!(r.kvs[0].mod_revision >= rev);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Now a real burst: 300 reads over 10 ready connections at once.
    let (_, t) = http_get(&gw.endpoint, "/metrics").await.unwrap();
    let probes1 = before(&t);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(kv_client_from(channel(&gw.endpoint).await));
    }
    let last = put(&mut direct, "lin", "last").await;
    let burst: Vec<_> = (0..300)
        .map(|i| {
            let mut c = clients[i % 10].clone();
            tokio::spawn(async move { c.range(range("lin", "")).await.unwrap().into_inner() })
        })
        .collect();
    for t in burst {
        let r = t.await.unwrap();
        assert!(r.kvs[0].mod_revision >= last);
    }
    let (_, t) = http_get(&gw.endpoint, "/metrics").await.unwrap();
    let one_by_one = probes1 - probes0;
    let shared = before(&t) - probes1;
    eprintln!("200 sequential reads: {one_by_one} probes; 300 concurrent reads: {shared} probes");
    assert!(one_by_one >= 1.0);
    assert!(
        shared < 100.0,
        "300 concurrent linearizable reads cost {shared} probes"
    );
}

fn kv_client_from(
    ch: tonic::transport::Channel,
) -> lookout_proto::pb::kv_client::KvClient<tonic::transport::Channel> {
    lookout_proto::pb::kv_client::KvClient::new(ch)
}
