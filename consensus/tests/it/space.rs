//! Space management as etcd users know it: the backend quota raises the
//! NOSPACE alarm, `etcdctl alarm list/disarm`, compaction plus `etcdctl
//! defrag` reclaiming the file, and periodic auto-compaction.

use std::time::Duration;

use lookout_consensus::config::AutoCompaction;
use lookout_proto::pb::{
    AlarmRequest, CompactionRequest, DeleteRangeRequest, PutRequest, StatusRequest,
    alarm_request::AlarmAction,
};
use lookout_testkit::{etcdctl, wait_for};

use crate::support::{TestServer, connect, get, prefix_end};

fn big(key: String) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: vec![b'x'; 64 * 1024].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_raises_nospace_and_defrag_after_compaction_reclaims_it() {
    let srv = TestServer::start_with(|c| c.quota_backend_bytes = 8 << 20).await;
    let mut c = connect(&srv.endpoint).await;
    // Bounded: 8 MiB of 64 KiB values needs ~130 puts.
    let mut refused = None;
    for i in 0..1_000 {
        if let Err(s) = c.kv.put(big(format!("big/{i:04}"))).await {
            refused = Some(s);
            break;
        }
    }
    let s = refused.expect("the quota never refused a put");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    assert_eq!(s.message(), "etcdserver: mvcc: database space exceeded");

    // The alarm is raised, listed (gRPC and etcdctl), and refuses puts.
    let alarms = c
        .maint
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].member_id, srv.store.member_id());
    let out = etcdctl(&srv.endpoint, &["alarm", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("alarm:NOSPACE"), "{text}");
    let s =
        c.kv.put(crate::support::put("small", "1"))
            .await
            .unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    let st = c.maint.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(
        st.errors.iter().any(|e| e.contains("NOSPACE")),
        "{:?}",
        st.errors
    );

    // Deletes and compaction still work; defrag gives the space back.
    let del =
        c.kv.delete_range(DeleteRangeRequest {
            key: "big/".into(),
            range_end: prefix_end("big/"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(del.deleted > 0);
    let rev = del.header.unwrap().revision;
    c.kv.compact(CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .unwrap();
    let before = srv.store.db_size();
    let out = etcdctl(&srv.endpoint, &["defrag"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Finished defragmenting"), "{text}");
    let after = srv.store.db_size();
    assert!(after * 2 < before, "defrag: {before} -> {after} bytes");

    // Disarm, and writes are accepted again.
    let out = etcdctl(&srv.endpoint, &["alarm", "disarm"]);
    assert!(out.status.success());
    let text =
        String::from_utf8_lossy(&etcdctl(&srv.endpoint, &["alarm", "list"]).stdout).into_owned();
    assert!(text.trim().is_empty(), "{text}");
    c.kv.put(crate::support::put("small", "1")).await.unwrap();
    let r = c.kv.range(get("small")).await.unwrap().into_inner();
    assert_eq!(r.count, 1);
    // History before the compaction is gone; after it, intact.
    assert_eq!(
        c.kv.range(lookout_proto::pb::RangeRequest {
            key: "small".into(),
            revision: rev - 1,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        tonic::Code::OutOfRange
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_the_retention_window() {
    let srv = TestServer::start_with(|c| {
        c.auto_compaction = Some(AutoCompaction::Periodic(Duration::from_secs(1)));
    })
    .await;
    let mut c = connect(&srv.endpoint).await;
    for i in 0..20 {
        c.kv.put(crate::support::put("ac", &i.to_string()))
            .await
            .unwrap();
    }
    let first = srv.store.revision();
    // Within a few retention periods the leader compacts to a revision
    // that was current about a second earlier.
    let compacted = wait_for("auto-compaction", Duration::from_secs(20), || {
        let store = srv.store.clone();
        async move {
            let cr = store.snapshot().compact_rev;
            (cr >= first).then_some(cr)
        }
    })
    .await;
    assert!(compacted <= srv.store.revision());
}
