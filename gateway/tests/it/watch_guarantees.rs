//! The watch guarantees end to end, through the gateway's gRPC Watch and
//! its pass-through codec, checked against etcd's own history with the
//! testkit checker: no gap, no duplicate, right order and bytes, or a
//! truthful cancel with `compact_revision`.

use std::collections::HashMap;
use std::sync::Arc;

use lookout_proto::pb::{RangeRequest, WatchCreateRequest, watch_create_request::FilterType};
use lookout_testkit::checker::{StoreHistory, WatcherLog, check_watcher};
use lookout_testkit::etcd::EtcdOptions;
use lookout_testkit::{EtcdServer, TcpProxy};
use parking_lot::Mutex;

use crate::harness::*;

/// Three kinds of watcher on one stream: everything, a prefix with
/// prev_kv, a prefix without deletes.
fn watchers(start: i64) -> Vec<(i64, WatchCreateRequest)> {
    let mut prev = prefix_watch("w/", start);
    prev.prev_kv = true;
    let mut no_del = prefix_watch("w/0", start);
    no_del.filters = vec![FilterType::Nodelete as i32];
    vec![(1, all_keys_watch(start)), (2, prev), (3, no_del)]
}

/// Where a resumed watcher starts: after its last event, or where it
/// started if it has none.
fn resume_point(log: &WatcherLog) -> i64 {
    log.last_revision()
        .map_or(log.spec.start_revision, |r| r + 1)
}

async fn writer(endpoint: String, ops: usize, seed: u64) -> tokio::task::JoinHandle<i64> {
    let mut c = kv(&endpoint).await;
    tokio::spawn(async move { churn(&mut c, "w/", ops, 20, seed).await })
}

/// Waits (bounded) until every watcher passes the checker through
/// `through`; panics with the last violation otherwise.
async fn check_all(etcd: &str, logs: &Mutex<HashMap<i64, WatcherLog>>, base: i64, through: i64) {
    let history = StoreHistory::fetch(etcd, base, through, WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let verdict: Result<(), String> = logs.lock().iter().try_for_each(|(id, log)| {
            match check_watcher(&history, log, through) {
                Ok(r) if r.compacted => Err(format!("watcher {id} was compact-cancelled")),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("watcher {id}: {e}")),
            }
        });
        match verdict {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() >= deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_resumes_on_a_restarted_gateway_without_gap_or_duplicate() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    let base = churn(&mut direct, "w/", 20, 20, 1).await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let addr = gw.endpoint.clone();
    let stream = WatchStream::open(&addr).await;
    for (id, req) in watchers(base + 1) {
        stream.watch(id, req).await;
    }
    let w = writer(etcd.endpoint.clone(), 300, 2).await;
    stream.wait_until(1, base + 50).await;

    // SIGTERM's path mid-stream: the stream ends with Unavailable, the
    // client's cue to resume elsewhere.
    gw.stop().await.expect("clean stop");
    let end = stream.wait_end().await;
    assert!(
        matches!(end, StreamEnd::Status(tonic::Code::Unavailable, _)),
        "{end:?}"
    );
    let logs = stream.logs.clone();
    drop(stream);

    // A new gateway process on the same address; writes never stopped.
    let gw2 = TestGateway::start_on(config(&[&etcd.endpoint]), &addr).await;
    lookout_testkit::wait_for("second gateway ready", WAIT, || {
        let a = addr.clone();
        async move { health_ok(&a).await.then_some(()) }
    })
    .await;
    let resumed = WatchStream::open_with(&addr, logs.clone()).await;
    for (id, mut req) in watchers(base + 1) {
        req.start_revision = resume_point(&logs.lock()[&id]);
        resumed.watch(id, req).await;
    }
    let through = w.await.unwrap();
    check_all(&etcd.endpoint, &logs, base, through).await;
    drop(gw2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_under_live_watchers() {
    let mut etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    let base = churn(&mut direct, "w/", 20, 20, 3).await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let stream = WatchStream::open(&gw.endpoint).await;
    for (id, req) in watchers(base + 1) {
        stream.watch(id, req).await;
    }
    let before = churn(&mut direct, "w/", 60, 20, 4).await;
    stream.wait_until(1, before).await;

    etcd.kill();
    // The gateway keeps its watchers (and serves serializable reads) while
    // the store is gone.
    let mut via = kv(&gw.endpoint).await;
    let r = via
        .range(RangeRequest {
            key: b("w/"),
            range_end: b("w0"),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("serializable read with the store down");
    assert_eq!(r.into_inner().header.unwrap().revision, before);

    etcd.restart(&EtcdOptions::default()).await;
    let w = writer(etcd.endpoint.clone(), 80, 5).await;
    let through = w.await.unwrap();
    stream.wait_until(1, through).await;
    assert_eq!(
        stream.ended(),
        StreamEnd::Open,
        "the client stream survived"
    );
    check_all(&etcd.endpoint, &stream.logs, base, through).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_the_gateway_is_cut_off_cancels_with_compact_revision() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    let base = churn(&mut direct, "w/", 20, 20, 6).await;
    let proxy = TcpProxy::start(&etcd.endpoint).await;
    let gw = TestGateway::start(&[proxy.endpoint()]).await;
    let stream = WatchStream::open(&gw.endpoint).await;
    for (id, req) in watchers(base + 1) {
        stream.watch(id, req).await;
    }
    let seen = churn(&mut direct, "w/", 30, 20, 7).await;
    stream.wait_until(1, seen).await;

    // Everything up to here exists in the store's history; after the
    // compaction below it will not.
    let history = StoreHistory::fetch(&etcd.endpoint, base, seen, WAIT).await;

    proxy.cut();
    let lost = churn(&mut direct, "w/", 40, 20, 8).await;
    compact(&mut direct, lost).await;
    churn(&mut direct, "w/", 10, 20, 9).await;
    proxy.resume();

    for id in [1, 2, 3] {
        lookout_testkit::wait_for(&format!("watcher {id} compact-cancelled"), WAIT, || {
            let c = stream.log(id).compacted;
            async move { c }
        })
        .await;
    }
    for id in [1, 2, 3] {
        let log = stream.log(id);
        // Truthful: every event up to the cut, exactly, and a
        // compact_revision above the last one, so the client relists.
        check_watcher(&history, &log, seen).unwrap_or_else(|e| panic!("watcher {id}: {e}"));
        let mut uncut = log.clone();
        uncut.compacted = None;
        uncut.canceled = false;
        check_watcher(&history, &uncut, seen)
            .unwrap_or_else(|e| panic!("watcher {id} missed events before the cut: {e}"));
        assert!(
            log.events
                .iter()
                .all(|e| e.kv.as_ref().unwrap().mod_revision <= seen),
            "watcher {id} got events from the lost history"
        );
        assert_eq!(
            log.compacted,
            Some(lost),
            "watcher {id}: the store's compaction"
        );
    }

    // The gateway relisted: its snapshot is the store's, key for key.
    let mut via = kv(&gw.endpoint).await;
    let all = |serializable| RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        serializable,
        ..Default::default()
    };
    let got = via.range(all(false)).await.unwrap().into_inner();
    let want = direct.range(all(false)).await.unwrap().into_inner();
    assert_eq!(got.kvs, want.kvs);
    assert_eq!(got.header.unwrap().revision, want.header.unwrap().revision);

    // A client that relists and watches again is served normally.
    let relisted = want.header.unwrap().revision;
    let again = WatchStream::open(&gw.endpoint).await;
    again.watch(9, all_keys_watch(relisted + 1)).await;
    let w = writer(etcd.endpoint.clone(), 30, 10).await;
    let through = w.await.unwrap();
    again.wait_until(9, through).await;
    let history = StoreHistory::fetch(&etcd.endpoint, relisted, through, WAIT).await;
    check_watcher(&history, &again.log(9), through).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_start_inside_beyond_and_below_the_ring() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    let base = put(&mut direct, "w/seed", "0").await;
    let mut cfg = config(&[&etcd.endpoint]);
    cfg.cache.history_events = 30;
    let gw = TestGateway::start_with(cfg).await;
    let mut via = kv(&gw.endpoint).await;
    // 150 revisions through the gateway: the ring holds only the last ~30.
    let head = churn(&mut via, "w/", 150, 20, 11).await;
    let compacted_at = base + 20;
    compact(&mut direct, compacted_at).await;

    let stream = WatchStream::open(&gw.endpoint).await;
    let logs: Arc<Mutex<HashMap<i64, WatcherLog>>> = stream.logs.clone();
    // Inside the ring (replay), beyond it (an upstream watch spliced in by
    // revision), and below the store's compaction (cancelled).
    let inside = head - 10;
    let beyond = compacted_at + 5;
    let below = compacted_at - 5;
    stream.watch(1, all_keys_watch(inside)).await;
    let mut p = prefix_watch("w/", beyond);
    p.prev_kv = true;
    stream.watch(2, p).await;
    stream.watch(3, all_keys_watch(beyond)).await;
    stream.watch(4, all_keys_watch(below)).await;
    let w = writer(etcd.endpoint.clone(), 100, 12).await;
    let through = w.await.unwrap();
    for id in [1, 2, 3] {
        stream.wait_until(id, through).await;
    }
    lookout_testkit::wait_for("watcher below the compaction cancelled", WAIT, || {
        let c = stream.log(4).compacted;
        async move { c }
    })
    .await;
    let log4 = stream.log(4);
    assert_eq!(
        log4.compacted,
        Some(compacted_at),
        "etcd's compact_revision"
    );
    assert!(log4.events.is_empty());

    let history = StoreHistory::fetch(&etcd.endpoint, compacted_at, through, WAIT).await;
    for id in [1, 2, 3] {
        let log = logs.lock()[&id].clone();
        let r =
            check_watcher(&history, &log, through).unwrap_or_else(|e| panic!("watcher {id}: {e}"));
        assert!(r.events > 0);
    }
}
