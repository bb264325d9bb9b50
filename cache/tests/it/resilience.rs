//! The upstream dies, comes back, compacts while the cache is away, or one
//! of several endpoints is dead: the cache resumes without inventing,
//! dropping or repeating an event, or tells watchers the truth.

use std::sync::atomic::Ordering::Relaxed;

use lookout_proto::pb::RangeRequest;
use lookout_testkit::checker::{StoreHistory, check_watcher};
use lookout_testkit::etcd::EtcdOptions;
use lookout_testkit::{EtcdServer, TcpProxy, free_port};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_on_its_data_dir() {
    let mut etcd = EtcdServer::start().await;
    let mut kv1 = kv(&etcd.endpoint).await;
    churn(&mut kv1, "r/", 40, 10, 11).await;
    let cache = start_cache(&[&etcd.endpoint], config()).await;
    let rec = Recorder::spawn(&cache);
    let all = rec.watch(all_keys_watch(0));
    let mut prev = prefix_watch("r/", 0);
    prev.prev_kv = true;
    let prev = rec.watch(prev);
    let base = rec.wait_created(all).await;
    rec.wait_created(prev).await;

    let before = churn(&mut kv1, "r/", 50, 10, 12).await;
    cache.wait_for_revision(before, WAIT).await.unwrap();
    etcd.kill();
    lookout_testkit::wait_for("the cache to notice", WAIT, || {
        let n = cache.metrics().upstream_errors.load(Relaxed);
        async move { (n > 0).then_some(()) }
    })
    .await;
    // While the upstream is gone the cache still serves reads and new
    // watchers from what it holds.
    let during = rec.watch(all_keys_watch(before - 5));
    assert_eq!(cache.snapshot().revision(), before);

    etcd.restart(&EtcdOptions::default()).await;
    let mut kv2 = kv(&etcd.endpoint).await;
    let after = churn(&mut kv2, "r/", 50, 10, 13).await;
    cache.wait_for_revision(after, WAIT).await.unwrap();
    let history = StoreHistory::fetch(&etcd.endpoint, base, after, WAIT).await;
    for id in [all, prev, during] {
        lookout_testkit::wait_for("watchers complete after restart", WAIT, || {
            let ok = check_watcher(&history, &rec.log(id), after).is_ok();
            async move { ok.then_some(()) }
        })
        .await;
    }
    assert_eq!(
        cache.metrics().lists.load(Relaxed),
        1,
        "resumed, not relisted"
    );
    assert!(cache.metrics().upstream_watches.load(Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_disconnected_relists_and_cancels_with_compact_revision() {
    let etcd = EtcdServer::start().await;
    let proxy = TcpProxy::start(&etcd.endpoint).await;
    let mut kv = kv(&etcd.endpoint).await;
    churn(&mut kv, "c/", 30, 10, 21).await;
    let cache = start_cache(&[proxy.endpoint()], config()).await;
    let rec = Recorder::spawn(&cache);
    let now = rec.watch(all_keys_watch(0));
    let pre = rec.watch(prefix_watch("c/", 0));
    let base = rec.wait_created(now).await;
    rec.wait_created(pre).await;
    let first = churn(&mut kv, "c/", 20, 10, 22).await;
    rec.wait_until(now, first).await;

    proxy.cut();
    lookout_testkit::wait_for("the cache to lose the upstream", WAIT, || {
        let n = cache.metrics().upstream_errors.load(Relaxed);
        async move { (n > 0).then_some(()) }
    })
    .await;
    let gone = churn(&mut kv, "c/", 30, 10, 23).await;
    compact(&mut kv, gone).await;
    let history = StoreHistory::fetch(&etcd.endpoint, gone, gone, WAIT).await;
    proxy.resume();

    lookout_testkit::wait_for("a relist", WAIT, || {
        let n = cache.metrics().relists.load(Relaxed);
        async move { (n == 1).then_some(()) }
    })
    .await;
    for id in [now, pre] {
        rec.wait_until(id, i64::MAX).await;
        let log = rec.log(id);
        assert_eq!(
            log.compacted,
            Some(gone),
            "cancelled with the store's compaction revision"
        );
        assert_eq!(
            log.last_revision(),
            Some(first),
            "nothing invented after the gap"
        );
    }
    // The snapshot is the store's state after the relist.
    let snap = cache.wait_for_revision(gone, WAIT).await.unwrap();
    let all = RangeRequest {
        key: b("c/"),
        range_end: lookout_cache::prefix_end(b"c/").unwrap(),
        ..Default::default()
    };
    let ours: Vec<_> = cache.range_at(&snap, &all).unwrap().kvs;
    let want: Vec<_> = history
        .state_at(snap.revision(), b"c/", b"c0")
        .into_values()
        .collect();
    assert_eq!(ours, want);
    // New watchers work, including from the compaction revision itself.
    let again = rec.watch(prefix_watch("c/", gone + 1));
    let later = churn(&mut kv, "c/", 20, 10, 24).await;
    let history = StoreHistory::fetch(&etcd.endpoint, gone, later, WAIT).await;
    lookout_testkit::wait_for("re-watch complete", WAIT, || {
        let ok = check_watcher(&history, &rec.log(again), later).is_ok();
        async move { ok.then_some(()) }
    })
    .await;
    assert!(base < gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_first_endpoint_fails_over() {
    let etcd = EtcdServer::start().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let mut kv = kv(&etcd.endpoint).await;
    let rev = churn(&mut kv, "f/", 20, 5, 31).await;
    let cache = start_cache(&[&dead, &etcd.endpoint], config()).await;
    assert_eq!(
        cache.wait_for_revision(rev, WAIT).await.unwrap().revision(),
        rev
    );
    let snap = cache.linearizable_snapshot(WAIT).await.unwrap();
    assert_eq!(snap.revision(), rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_dies_mid_stream_and_the_cache_moves_to_the_next() {
    let etcd = EtcdServer::start().await;
    let first = TcpProxy::start(&etcd.endpoint).await;
    let second = TcpProxy::start(&etcd.endpoint).await;
    let mut kv = kv(&etcd.endpoint).await;
    let cache = start_cache(&[first.endpoint(), second.endpoint()], config()).await;
    let rec = Recorder::spawn(&cache);
    let id = rec.watch(all_keys_watch(0));
    let base = rec.wait_created(id).await;
    let before = churn(&mut kv, "m/", 40, 8, 71).await;
    rec.wait_until(id, before).await;
    first.cut();
    let after = churn(&mut kv, "m/", 40, 8, 72).await;
    let history = StoreHistory::fetch(&etcd.endpoint, base, after, WAIT).await;
    lookout_testkit::wait_for("watcher complete via the second endpoint", WAIT, || {
        let ok = check_watcher(&history, &rec.log(id), after).is_ok();
        async move { ok.then_some(()) }
    })
    .await;
    assert!(cache.metrics().upstream_watches.load(Relaxed) >= 2);
    assert_eq!(
        cache.metrics().lists.load(Relaxed),
        1,
        "resumed from applied+1, no relist"
    );
    // Linearizable reads go through the surviving endpoint too.
    assert_eq!(
        cache.linearizable_snapshot(WAIT).await.unwrap().revision(),
        after
    );
}
