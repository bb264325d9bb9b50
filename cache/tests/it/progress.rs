//! Progress: the cache advances on upstream progress without events (prefix
//! mode), and watchers get progress responses whose revision they have fully
//! received.

use std::time::Duration;

use lookout_cache::{CacheConfig, CacheError, KeyRange};
use lookout_testkit::EtcdServer;
use lookout_testkit::checker::{StoreHistory, check_watcher};
use lookout_testkit::etcd::EtcdOptions;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_and_request_progress_report_received_revisions() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let cache = start_cache(
        &[&etcd.endpoint],
        CacheConfig {
            progress_notify_interval: Duration::from_millis(100),
            ..config()
        },
    )
    .await;
    let rec = Recorder::spawn(&cache);
    let mut req = prefix_watch("q/", 0);
    req.progress_notify = true;
    let quiet = rec.watch(req);
    let busy = rec.watch(all_keys_watch(0));
    let base = rec.wait_created(quiet).await;
    put(&mut kv, "q/1", "a").await;
    // Writes elsewhere move the store on; the quiet watcher learns it from
    // progress responses.
    let last = churn(&mut kv, "z/", 30, 5, 51).await;
    lookout_testkit::wait_for("a progress at the latest revision", WAIT, || {
        let p = rec.log(quiet).progress.last().map(|p| p.0);
        async move { (p == Some(last)).then_some(()) }
    })
    .await;
    rec.handle.request_progress();
    lookout_testkit::wait_for("the stream-wide progress response", WAIT, || {
        let r = rec.responses(-1);
        async move {
            r.last()
                .map(|r| r.header.unwrap().revision)
                .filter(|r| *r == last)
        }
    })
    .await;
    let history = StoreHistory::fetch(&etcd.endpoint, base, last, WAIT).await;
    rec.wait_until(busy, last).await;
    for id in [quiet, busy] {
        check_watcher(&history, &rec.log(id), last).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_advances_on_upstream_progress_only() {
    let etcd = EtcdServer::start_with(EtcdOptions {
        extra_args: vec!["--experimental-watch-progress-notify-interval=200ms".into()],
    })
    .await;
    let mut kv = kv(&etcd.endpoint).await;
    put(&mut kv, "in/a", "1").await;
    put(&mut kv, "out/a", "1").await;
    let cache = start_cache(
        &[&etcd.endpoint],
        CacheConfig {
            ranges: vec![KeyRange::prefix(b("in/"))],
            ..config()
        },
    )
    .await;
    assert_eq!(
        cache.snapshot().len(),
        1,
        "only the configured prefix is held"
    );
    let rev = churn(&mut kv, "out/", 20, 3, 61).await;
    // No event of ours lies at `rev`: progress must carry the cache there.
    let snap = cache.linearizable_snapshot(WAIT).await.unwrap();
    assert!(snap.revision() >= rev);
    assert_eq!(snap.len(), 1);
    let rec = Recorder::spawn(&cache);
    let err = rec.handle.create(&prefix_watch("out/", 0)).unwrap_err();
    assert!(matches!(err, CacheError::OutOfScope));
    let id = rec.watch(prefix_watch("in/", 0));
    rec.wait_created(id).await;
    let r = put(&mut kv, "in/b", "2").await;
    rec.wait_until(id, r).await;
}
