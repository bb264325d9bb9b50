//! EtcdUpstream against real etcd: paged lists at one revision, the cheap
//! linearizable revision, writes and errors forwarded unchanged, watches
//! classified.

use std::time::Duration;

use lookout_cache::{KeyRange, Upstream, WatchMsg};
use lookout_proto::pb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, request_op,
};
use lookout_testkit::EtcdServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_pages_at_one_revision_and_forwards_unchanged() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    for i in 0..25 {
        put(&mut direct, &format!("l/{i:02}"), "v1").await;
    }
    let old = put(&mut direct, "other", "x").await;
    for i in 0..25 {
        put(&mut direct, &format!("l/{i:02}"), "v2").await;
    }
    put(&mut direct, "l/new", "v").await;
    let up = upstream(&[&etcd.endpoint]);

    let listed = up.list(&KeyRange::prefix(b("l/")), old, 4).await.unwrap();
    let want = direct
        .range(RangeRequest {
            key: b("l/"),
            range_end: b("l0"),
            revision: old,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs;
    assert_eq!(listed.revision, old);
    assert_eq!(listed.kvs, want, "7 pages, all at revision {old}");
    let now = up.list(&KeyRange::all(), 0, 7).await.unwrap();
    assert_eq!(now.kvs.len(), 27);
    assert_eq!(up.current_revision().await.unwrap(), now.revision);

    // Errors come back exactly as etcd sends them.
    let compact_future = CompactionRequest {
        revision: now.revision + 100,
        physical: false,
    };
    let ours = up.compact(compact_future).await.unwrap_err();
    let theirs = direct.compact(compact_future).await.unwrap_err();
    assert_eq!(
        (ours.code(), ours.message()),
        (theirs.code(), theirs.message())
    );
    let empty_key = PutRequest::default();
    let ours = up.put(empty_key.clone()).await.unwrap_err();
    let theirs = direct.put(empty_key).await.unwrap_err();
    assert_eq!(
        (ours.code(), ours.message()),
        (theirs.code(), theirs.message())
    );

    let resp = up
        .put(PutRequest {
            key: b("l/00"),
            value: b("v3"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.prev_kv.unwrap().value, b("v2"));
    assert_eq!(resp.header.unwrap().revision, now.revision + 1);

    let txn = up
        .txn(TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b("l/"),
                        range_end: b("l0"),
                        prev_kv: true,
                    },
                )),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(txn.succeeded);
    let gone = up
        .delete_range(DeleteRangeRequest {
            key: b("l/"),
            range_end: b("l0"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(gone.deleted, 0, "the txn deleted them all");

    // Leases, including the keep-alive stream.
    let lease = up
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // etcd sends response headers with its first answer: queue a request first.
    tx.send(LeaseKeepAliveRequest { id: lease.id })
        .await
        .unwrap();
    let mut ka = tokio::time::timeout(WAIT, up.lease_keep_alive(rx))
        .await
        .unwrap()
        .unwrap();
    let beat = tokio::time::timeout(WAIT, ka.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((beat.id, beat.ttl), (lease.id, 30));
    let ttl = up
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease.id,
            keys: true,
        })
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(
        up.lease_leases(LeaseLeasesRequest {})
            .await
            .unwrap()
            .leases
            .iter()
            .any(|l| l.id == lease.id)
    );
    up.lease_revoke(LeaseRevokeRequest { id: lease.id })
        .await
        .unwrap();
    let gone = up
        .lease_revoke(LeaseRevokeRequest { id: lease.id })
        .await
        .unwrap_err();
    assert!(
        gone.message().contains("requested lease not found"),
        "{gone:?}"
    );
}

async fn next(w: &mut lookout_cache::UpstreamWatch) -> WatchMsg {
    tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("watch message in time")
        .expect("watch stream")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_messages_are_classified() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    let r1 = put(&mut direct, "w/a", "1").await;
    let r2 = put(&mut direct, "w/a", "2").await;
    let up = upstream(&[&etcd.endpoint]);

    let mut w = up
        .watch(WatchCreateRequest {
            key: b("w/"),
            range_end: b("w0"),
            start_revision: r1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(matches!(next(&mut w).await, WatchMsg::Created { .. }));
    match next(&mut w).await {
        WatchMsg::Events { events, .. } => {
            assert_eq!(
                events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect::<Vec<_>>(),
                [r1, r2]
            );
        }
        other => panic!("expected events, got {other:?}"),
    }
    assert!(w.request_progress());
    match next(&mut w).await {
        WatchMsg::Progress { header } => assert_eq!(header.revision, r2),
        other => panic!("expected progress, got {other:?}"),
    }

    compact(&mut direct, r2).await;
    let mut old = up
        .watch(WatchCreateRequest {
            key: b("w/"),
            range_end: b("w0"),
            start_revision: r1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut compacted = None;
    for _ in 0..3 {
        if let WatchMsg::Compacted {
            compact_revision, ..
        } = next(&mut old).await
        {
            compacted = Some(compact_revision);
            break;
        }
    }
    assert_eq!(compacted, Some(r2));
}
