//! Revisions, ranges, txn compares, compaction and index rebuild.

use lookout_proto::pb::{
    CompactionRequest, Compare, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op,
};

use crate::support::{TestServer, connect, get, prefix_end, put};

#[tokio::test]
async fn revisions_versions_and_tombstones_follow_etcd() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    let r = c.kv.range(get("a")).await.unwrap().into_inner();
    assert_eq!(
        r.header.unwrap().revision,
        1,
        "a fresh store is at revision 1"
    );
    assert_eq!(
        c.kv.put(put("a", "1"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision,
        2
    );
    assert_eq!(
        c.kv.put(put("a", "2"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision,
        3
    );
    let kv = &c.kv.range(get("a")).await.unwrap().into_inner().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // A delete of nothing costs no revision; a delete of a key does.
    let d = |k: &str| DeleteRangeRequest {
        key: k.to_string().into(),
        ..Default::default()
    };
    assert_eq!(
        c.kv.delete_range(d("nope"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision,
        3
    );
    assert_eq!(
        c.kv.delete_range(d("a"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision,
        4
    );
    // Re-created key: a new generation, version restarts.
    c.kv.put(put("a", "3")).await.unwrap();
    let kv = &c.kv.range(get("a")).await.unwrap().into_inner().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // Time travel: at 3 the old generation, at 4 nothing.
    let at = |rev| RangeRequest {
        key: "a".into(),
        revision: rev,
        ..Default::default()
    };
    assert_eq!(
        c.kv.range(at(3)).await.unwrap().into_inner().kvs[0].value,
        "2".as_bytes()
    );
    assert!(c.kv.range(at(4)).await.unwrap().into_inner().kvs.is_empty());
}

#[tokio::test]
async fn range_options_count_limit_and_revision_filters() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    for i in 0..10 {
        c.kv.put(put(&format!("k{i}"), &format!("v{i}")))
            .await
            .unwrap(); // revs 2..=11
    }
    let base = RangeRequest {
        key: "k".into(),
        range_end: prefix_end("k"),
        ..Default::default()
    };
    let r =
        c.kv.range(RangeRequest {
            count_only: true,
            ..base.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.count, r.kvs.len()), (10, 0));
    let r =
        c.kv.range(RangeRequest {
            limit: 3,
            ..base.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.count, r.kvs.len(), r.more), (10, 3, true));
    let r =
        c.kv.range(RangeRequest {
            min_mod_revision: 4,
            max_mod_revision: 6,
            ..base.clone()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = r
        .kvs
        .iter()
        .map(|k| String::from_utf8_lossy(&k.key).into_owned())
        .collect();
    assert_eq!(keys, ["k2", "k3", "k4"]);
    // From-key with "\0".
    let r =
        c.kv.range(RangeRequest {
            key: "k8".into(),
            range_end: vec![0].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 2);
}

fn cmp(
    key: &str,
    end: &str,
    target: CompareTarget,
    result: CompareResult,
    v: TargetUnion,
) -> Compare {
    Compare {
        key: key.to_string().into(),
        range_end: end.to_string().into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(v),
    }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(k, v))),
    }
}

#[tokio::test]
async fn txn_compares_including_ranges() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    c.kv.put(put("r/a", "1")).await.unwrap(); // 2
    c.kv.put(put("r/b", "2")).await.unwrap(); // 3
    let txn = |compare: Vec<Compare>| TxnRequest {
        compare,
        success: vec![op_put("out", "yes")],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(get("r/a"))),
        }],
    };
    use CompareResult::*;
    use CompareTarget::*;
    let cases = vec![
        (
            cmp("r/a", "", Value, Equal, TargetUnion::Value("1".into())),
            true,
        ),
        (
            cmp("r/a", "", Value, Greater, TargetUnion::Value("0".into())),
            true,
        ),
        (
            cmp(
                "r/missing",
                "",
                Value,
                NotEqual,
                TargetUnion::Value("x".into()),
            ),
            false,
        ),
        (
            cmp("r/missing", "", Version, Equal, TargetUnion::Version(0)),
            true,
        ),
        (
            cmp("r/a", "", Create, Equal, TargetUnion::CreateRevision(2)),
            true,
        ),
        (
            cmp("r/b", "", Mod, Less, TargetUnion::ModRevision(3)),
            false,
        ),
        (cmp("r/a", "", Lease, Equal, TargetUnion::Lease(0)), true),
        // Range compares: every key in the range must satisfy it.
        (
            cmp("r/", "r0", Mod, Less, TargetUnion::ModRevision(4)),
            true,
        ),
        (
            cmp("r/", "r0", Mod, Less, TargetUnion::ModRevision(3)),
            false,
        ),
        (
            cmp("r/", "r0", Version, Equal, TargetUnion::Version(1)),
            true,
        ),
        (
            cmp("r/", "\0", Value, Greater, TargetUnion::Value("0".into())),
            true,
        ),
    ];
    for (i, (compare, want)) in cases.into_iter().enumerate() {
        let before =
            c.kv.range(get("x"))
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .revision;
        let r =
            c.kv.txn(txn(vec![compare.clone()]))
                .await
                .unwrap()
                .into_inner();
        assert_eq!(r.succeeded, want, "case {i}: {compare:?}");
        let rev = r.header.unwrap().revision;
        if want {
            assert_eq!(rev, before + 1, "a writing txn takes one revision");
        } else {
            assert_eq!(rev, before, "a read-only txn takes none");
            match &r.responses[0].response {
                Some(response_op::Response::ResponseRange(rr)) => assert_eq!(rr.kvs.len(), 1),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn compaction_keeps_latest_live_versions_and_the_index_rebuilds() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    c.kv.put(put("a", "1")).await.unwrap(); // 2
    c.kv.put(put("a", "2")).await.unwrap(); // 3
    c.kv.put(put("b", "1")).await.unwrap(); // 4
    c.kv.delete_range(DeleteRangeRequest {
        key: "b".into(),
        ..Default::default()
    })
    .await
    .unwrap(); // 5
    c.kv.put(put("c", "1")).await.unwrap(); // 6
    c.kv.put(put("a", "3")).await.unwrap(); // 7
    c.kv.compact(CompactionRequest {
        revision: 6,
        physical: true,
    })
    .await
    .unwrap();
    let at = |k: &str, rev| RangeRequest {
        key: k.to_string().into(),
        revision: rev,
        ..Default::default()
    };
    let err = c.kv.range(at("a", 5)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    // At the compaction revision: the live versions then.
    let all = |rev| RangeRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        revision: rev,
        ..Default::default()
    };
    let r6 = c.kv.range(all(6)).await.unwrap().into_inner();
    let got: Vec<_> = r6
        .kvs
        .iter()
        .map(|k| (k.key.clone(), k.mod_revision))
        .collect();
    assert_eq!(got, vec![("a".into(), 3), ("c".into(), 6)]);
    let r7 = c.kv.range(all(7)).await.unwrap().into_inner();

    // Superseded records are physically gone: the hash over history only
    // covers what remains, and a restart rebuilds the same index.
    let dir = srv.stop().await;
    let srv = TestServer::start_in(dir, |_| {}).await;
    let mut c = connect(&srv.endpoint).await;
    assert_eq!(c.kv.range(all(6)).await.unwrap().into_inner().kvs, r6.kvs);
    assert_eq!(c.kv.range(all(7)).await.unwrap().into_inner().kvs, r7.kvs);
    assert!(
        c.kv.range(at("a", 5)).await.is_err(),
        "compaction survives restart"
    );
    let snap = srv.store.snapshot();
    assert_eq!((snap.rev, snap.compact_rev), (7, 6));
    let a = snap.keys.get("a".as_bytes()).unwrap();
    let revs: Vec<i64> = a
        .generations
        .iter()
        .flat_map(|g| g.revs.iter().map(|r| r.main))
        .collect();
    assert_eq!(revs, vec![3, 7]);
    assert!(
        snap.keys.get("b".as_bytes()).is_none(),
        "dead generation dropped"
    );
    // Next write continues the counter.
    assert_eq!(
        c.kv.put(put("d", "1"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision,
        8
    );
}

#[tokio::test]
async fn put_options_and_request_errors() {
    let srv = TestServer::start_with(|c| {
        c.max_request_bytes = 1024;
        c.max_txn_ops = 2;
    })
    .await;
    let mut c = connect(&srv.endpoint).await;
    c.kv.put(put("a", "1")).await.unwrap();
    // ignore_value keeps the value; prev_kv returns the old pair.
    let r =
        c.kv.put(lookout_proto::pb::PutRequest {
            key: "a".into(),
            ignore_value: true,
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.prev_kv.unwrap().value, "1".as_bytes());
    let kv = &c.kv.range(get("a")).await.unwrap().into_inner().kvs[0];
    assert_eq!((kv.value.as_ref(), kv.version), ("1".as_bytes(), 2));

    let e =
        c.kv.put(lookout_proto::pb::PutRequest {
            key: "missing".into(),
            ignore_value: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::InvalidArgument, "etcdserver: key not found")
    );
    let e = c.kv.put(put("big", &"x".repeat(2000))).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large"
        )
    );
    let e =
        c.kv.txn(TxnRequest {
            success: vec![op_put("1", ""), op_put("2", ""), op_put("3", "")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: too many operations in txn request"
    );
    let e =
        c.kv.txn(TxnRequest {
            success: vec![op_put("1", ""), op_put("1", "")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: duplicate key given in txn request"
    );
    let e = c.kv.range(get("")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided"
        )
    );
    let e =
        c.kv.range(RangeRequest {
            key: "a".into(),
            revision: 100,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
}

#[tokio::test]
async fn status_and_hash_describe_this_member() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    c.kv.put(put("a", "1")).await.unwrap();
    let s = c
        .maint
        .status(lookout_proto::pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.version.starts_with("3.4."), "{}", s.version);
    assert_eq!(s.leader, srv.store.member_id());
    assert_eq!(s.header.unwrap().member_id, srv.store.member_id());
    assert!(s.db_size > 0 && s.db_size_in_use > 0);
    // Raft's own entries (the initial membership, the leader's first
    // blank entry) come before the put, as in etcd.
    assert!(s.raft_applied_index >= 1, "{s:?}");
    assert!(
        s.raft_index >= s.raft_applied_index && s.raft_term >= 1,
        "{s:?}"
    );
    let h1 = c
        .maint
        .hash_kv(lookout_proto::pb::HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    c.kv.put(put("b", "1")).await.unwrap();
    let h2 = c
        .maint
        .hash_kv(lookout_proto::pb::HashKvRequest { revision: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h1.hash, h2.hash, "hash at a revision ignores later writes");
    let m = srv.store.member_list().await;
    assert_eq!(m.members.len(), 1);
    assert_eq!(m.members[0].name, "default");
}

#[tokio::test]
async fn pre_encoded_ranges_equal_the_general_path() {
    use prost::Message;
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    for i in 0..20 {
        c.kv.put(put(&format!("e/{i:02}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    c.kv.delete_range(DeleteRangeRequest {
        key: "e/05".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let base = RangeRequest {
        key: "e/".into(),
        range_end: prefix_end("e/"),
        ..Default::default()
    };
    let reqs = vec![
        base.clone(),
        RangeRequest {
            limit: 3,
            ..base.clone()
        },
        RangeRequest {
            limit: 30,
            ..base.clone()
        },
        RangeRequest {
            count_only: true,
            ..base.clone()
        },
        RangeRequest {
            count_only: true,
            limit: 2,
            ..base.clone()
        },
        RangeRequest {
            sort_order: 1,
            ..base.clone()
        },
        RangeRequest {
            key: "e/05".into(),
            range_end: Default::default(),
            ..base.clone()
        },
        RangeRequest {
            key: "e/07".into(),
            range_end: Default::default(),
            ..base.clone()
        },
        RangeRequest {
            key: "e/10".into(),
            range_end: vec![0].into(),
            ..base.clone()
        },
        RangeRequest {
            key: "zz".into(),
            range_end: Default::default(),
            ..base.clone()
        },
        // Sorted, filtered and keys-only reads: the fast path copies the
        // stored encodings of the shared evaluation's selection.
        RangeRequest {
            sort_target: 4, // VALUE
            sort_order: 2,  // DESCEND
            limit: 4,
            ..base.clone()
        },
        RangeRequest {
            sort_target: 3, // MOD
            min_mod_revision: 8,
            max_create_revision: 18,
            ..base.clone()
        },
        RangeRequest {
            sort_target: 1, // VERSION
            sort_order: 7,  // unknown: read everything, sort nothing
            limit: 5,
            ..base.clone()
        },
        RangeRequest {
            keys_only: true,
            sort_order: 2,
            ..base.clone()
        },
    ];
    for req in reqs {
        let general = srv.store.range(req.clone()).await.unwrap();
        let fast = srv.store.range_encoded(req.clone()).await.unwrap();
        let decoded = lookout_proto::pb::RangeResponse::decode(fast.clone()).unwrap();
        assert_eq!(decoded, general, "{req:?}");
        assert_eq!(fast.as_ref(), general.encode_to_vec().as_slice(), "{req:?}");
        // And over gRPC.
        assert_eq!(c.kv.range(req.clone()).await.unwrap().into_inner(), general);
    }
}
