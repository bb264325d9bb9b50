//! The same gRPC probes against a real etcd 3.4 and our store; the
//! interesting fields of the answers must match exactly.

use std::time::Duration;

use lookout_proto::pb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, request_op,
    watch_request::RequestUnion,
};
use lookout_testkit::EtcdServer;

use crate::support::{Clients, TestServer, connect, get, put};
use crate::watch::{WatchStream, prefix_watch};

/// `code: message` of an error, or "ok".
fn outcome<T>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn op_put(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(k, "v"))),
    }
}

/// Runs every probe against one server and describes what it saw.
async fn probe(c: &mut Clients) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |s: String| {
        eprintln!("probe: {s}");
        out.push(s);
    };
    for i in 0..4 {
        c.kv.put(put("p/a", &i.to_string())).await.unwrap(); // 2..=5
    }
    // Errors etcd decides before proposing.
    note(outcome(c.kv.put(put("", "v")).await));
    note(outcome(
        c.kv.put(PutRequest {
            key: "p/a".into(),
            value: "x".into(),
            ignore_value: true,
            ..Default::default()
        })
        .await,
    ));
    note(outcome(
        c.kv.put(PutRequest {
            key: "p/a".into(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        })
        .await,
    ));
    note(outcome(
        c.kv.put(PutRequest {
            key: "p/none".into(),
            ignore_lease: true,
            ..Default::default()
        })
        .await,
    ));
    note(outcome(
        c.kv.put(put("p/big", &"x".repeat(1536 * 1024 + 10))).await,
    ));
    note(outcome(
        c.kv.txn(TxnRequest {
            success: (0..129).map(|i| op_put(&format!("t{i}"))).collect(),
            ..Default::default()
        })
        .await,
    ));
    note(outcome(
        c.kv.txn(TxnRequest {
            success: vec![
                op_put("d/x"),
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: "d/".into(),
                            range_end: "d0".into(),
                            ..Default::default()
                        },
                    )),
                },
            ],
            ..Default::default()
        })
        .await,
    ));
    note(outcome(
        c.kv.range(RangeRequest {
            key: "p/a".into(),
            revision: 99,
            ..Default::default()
        })
        .await,
    ));
    note(outcome(
        c.kv.compact(CompactionRequest {
            revision: 99,
            physical: false,
        })
        .await,
    ));
    note(outcome(
        c.kv.compact(CompactionRequest {
            revision: 3,
            physical: true,
        })
        .await,
    ));
    note(outcome(
        c.kv.compact(CompactionRequest {
            revision: 2,
            physical: true,
        })
        .await,
    ));
    note(outcome(
        c.kv.range(RangeRequest {
            key: "p/a".into(),
            revision: 2,
            ..Default::default()
        })
        .await,
    ));
    // A range read at an old revision answers with the current header.
    let r =
        c.kv.range(RangeRequest {
            key: "p/a".into(),
            revision: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    note(format!(
        "range@4: rev {} value {:?}",
        r.header.unwrap().revision,
        r.kvs[0].value
    ));

    // Leases.
    let g = c
        .lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    note(format!("grant ttl 1 -> {}", g.ttl));
    note(outcome(
        c.lease
            .lease_grant(LeaseGrantRequest { ttl: 5, id: g.id })
            .await,
    ));
    note(outcome(
        c.lease
            .lease_grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await,
    ));
    note(outcome(
        c.lease.lease_revoke(LeaseRevokeRequest { id: 12345 }).await,
    ));
    let t = c
        .lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 12345,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    note(format!(
        "ttl of unknown lease: {} granted {} header rev {:?}",
        t.ttl,
        t.granted_ttl,
        t.header.map(|h| h.revision)
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id: 12345 }).await.unwrap();
    let mut ka = c
        .lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let k = ka.message().await.unwrap().unwrap();
    note(format!(
        "keepalive unknown lease: id {} ttl {}",
        k.id, k.ttl
    ));
    note(outcome(
        c.kv.put(PutRequest {
            key: "p/l".into(),
            lease: 12345,
            ..Default::default()
        })
        .await,
    ));

    // Watches: compacted start, duplicate ID, empty range, progress.
    let mut w = WatchStream::open(c, prefix_watch("p/", 2)).await;
    for _ in 0..2 {
        let r = w.next().await;
        note(format!(
            "compacted watch: id {} created {} canceled {} compact {} reason {:?} events {} rev {}",
            r.watch_id,
            r.created,
            r.canceled,
            r.compact_revision,
            r.cancel_reason,
            r.events.len(),
            r.header.unwrap().revision
        ));
    }
    w.create(WatchCreateRequest {
        watch_id: 3,
        ..prefix_watch("p/", 0)
    })
    .await;
    w.create(WatchCreateRequest {
        watch_id: 3,
        ..prefix_watch("p/", 0)
    })
    .await;
    w.create(WatchCreateRequest {
        key: "b".into(),
        range_end: "a".into(),
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        let r = w.next().await;
        note(format!(
            "watch: id {} created {} canceled {} reason {:?}",
            r.watch_id, r.created, r.canceled, r.cancel_reason
        ));
    }
    w.tx.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    })
    .await
    .unwrap();
    let r = w.next().await;
    note(format!(
        "progress: id {} rev {} events {}",
        r.watch_id,
        r.header.unwrap().revision,
        r.events.len()
    ));
    // A live event after a past-start watch: header revision is the event's.
    c.kv.put(put("p/b", "1")).await.unwrap();
    let r = w.next().await;
    note(format!(
        "event: id {} rev {} events {}",
        r.watch_id,
        r.header.unwrap().revision,
        r.events.len()
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_match_real_etcd() {
    let etcd = EtcdServer::start().await;
    let ours = TestServer::start().await;
    let want = probe(&mut connect(&etcd.endpoint).await).await;
    let got = probe(&mut connect(&ours.endpoint).await).await;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(
            g, w,
            "probe line {i} differs\netcd:   {want:#?}\nlookout: {got:#?}"
        );
    }
    assert_eq!(got.len(), want.len());
    let _ = Duration::ZERO;
    let _ = get("x");
}
