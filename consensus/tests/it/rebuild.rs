//! A seeded random workload, then a restart: the rebuilt key index must
//! answer every retained revision exactly as before.

use std::time::Duration;

use lookout_consensus::{Store, StoreConfig};
use lookout_proto::pb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, compare, request_op,
};
use lookout_testkit::wait_for;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn all_at(rev: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        revision: rev,
        ..Default::default()
    }
}

async fn workload(store: &Store, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let key = |rng: &mut StdRng| format!("k{:02}", rng.random_range(0..20));
    let mut leases = Vec::new();
    for step in 0..400 {
        match rng.random_range(0..100) {
            0..=49 => {
                let lease = if !leases.is_empty() && rng.random_bool(0.2) {
                    leases[rng.random_range(0..leases.len())]
                } else {
                    0
                };
                let _ = store
                    .put(PutRequest {
                        key: key(&mut rng).into(),
                        value: format!("v{step}").into(),
                        lease,
                        ..Default::default()
                    })
                    .await;
            }
            50..=64 => {
                let k = key(&mut rng);
                let end = if rng.random_bool(0.5) {
                    format!("k{:02}", rng.random_range(0..21))
                } else {
                    String::new()
                };
                store
                    .delete_range(DeleteRangeRequest {
                        key: k.into(),
                        range_end: end.into(),
                        prev_kv: true,
                    })
                    .await
                    .unwrap();
            }
            65..=79 => {
                let k = key(&mut rng);
                let op = |k: String, v: String| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: k.into(),
                        value: v.into(),
                        ..Default::default()
                    })),
                };
                store
                    .txn(TxnRequest {
                        compare: vec![Compare {
                            key: k.clone().into(),
                            target: compare::CompareTarget::Version as i32,
                            result: compare::CompareResult::Greater as i32,
                            target_union: Some(compare::TargetUnion::Version(1)),
                            ..Default::default()
                        }],
                        success: vec![
                            op(k.clone(), format!("t{step}")),
                            op(format!("{k}x"), "y".into()),
                        ],
                        failure: vec![op(k, format!("f{step}"))],
                    })
                    .await
                    .unwrap();
            }
            80..=87 => {
                let r = store
                    .lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 })
                    .await
                    .unwrap();
                leases.push(r.id);
            }
            88..=93 if !leases.is_empty() => {
                let id = leases.swap_remove(rng.random_range(0..leases.len()));
                store.lease_revoke(id).await.unwrap();
            }
            _ => {
                let st = store.snapshot();
                if st.rev > st.compact_rev + 5 {
                    let at = rng.random_range(st.compact_rev + 1..st.rev);
                    store
                        .compact(CompactionRequest {
                            revision: at,
                            physical: true,
                        })
                        .await
                        .unwrap();
                }
            }
        }
    }
}

async fn open(dir: &std::path::Path) -> Store {
    // The previous instance's file lock goes with its last handle.
    wait_for("store to reopen", Duration::from_secs(10), || async {
        Store::open(StoreConfig::new(dir)).ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_index_answers_every_retained_revision_identically() {
    for seed in [1u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        workload(&store, seed).await;
        let st = store.snapshot();
        let (lo, hi) = (st.compact_rev.max(1), st.rev);
        let mut before = Vec::new();
        for rev in lo..=hi {
            before.push(store.range(all_at(rev)).await.unwrap().kvs);
        }
        let leases = store.lease_leases().await.leases;
        store.close();
        drop(store);
        drop(st);

        let store = open(dir.path()).await;
        let st = store.snapshot();
        assert_eq!(
            (st.compact_rev.max(1), st.rev),
            (lo, hi),
            "seed {seed}: counters"
        );
        for (i, rev) in (lo..=hi).enumerate() {
            let after = store.range(all_at(rev)).await.unwrap().kvs;
            assert_eq!(after, before[i], "seed {seed}: range at {rev}");
        }
        if lo > 1 {
            assert!(
                store.range(all_at(lo - 1)).await.is_err(),
                "seed {seed}: compacted stays compacted"
            );
        }
        assert_eq!(
            store.lease_leases().await.leases,
            leases,
            "seed {seed}: leases"
        );
        // Lease attachments are rebuilt from the live keys.
        for l in st.leases.values() {
            for k in l.keys.iter() {
                let kv = st.keys.get(k).and_then(|ki| ki.live.as_ref()).unwrap();
                assert_eq!(kv.kv.lease, l.id);
            }
        }
        store.close();
    }
}
