//! Watchers starting now, inside the ring, beyond it (spliced upstream
//! watch) and at a compacted revision, with writes going on, all checked
//! against etcd's own history.

use lookout_cache::CacheConfig;
use lookout_proto::pb::{RangeRequest, watch_create_request::FilterType};
use lookout_testkit::EtcdServer;
use lookout_testkit::checker::{StoreHistory, check_list_then_watch, check_watcher};
use std::sync::atomic::Ordering::Relaxed;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_point_gets_exactly_the_store_history() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let early = churn(&mut kv, "k/", 60, 20, 1).await;
    let compacted_at = 20;
    compact(&mut kv, compacted_at).await;

    let cache = start_cache(
        &[&etcd.endpoint],
        CacheConfig {
            history_events: 40,
            ..config()
        },
    )
    .await;
    let listed = cache.revision();
    assert_eq!(listed, early, "the cache lists at the store's revision");
    let mid = churn(&mut kv, "k/", 80, 20, 2).await;
    cache.wait_for_revision(mid, WAIT).await.unwrap();
    let (ring_start, ring_last) = cache.history_window();
    assert_eq!(ring_last, mid);
    assert!(
        ring_start > listed + 1,
        "the ring evicted: starts at {ring_start}"
    );

    let rec = Recorder::spawn(&cache);
    let now = rec.watch(all_keys_watch(0));
    let mut in_ring = prefix_watch("k/", ring_start + 3);
    in_ring.prev_kv = true;
    let in_ring = rec.watch(in_ring);
    let beyond_ring = rec.watch(all_keys_watch(listed - 10));
    let mut beyond_prev = prefix_watch("k/00", compacted_at + 1);
    beyond_prev.prev_kv = true;
    beyond_prev.filters = vec![FilterType::Nodelete as i32];
    let beyond_prev = rec.watch(beyond_prev);
    let single = rec.watch(lookout_proto::pb::WatchCreateRequest {
        key: b("k/007"),
        start_revision: ring_start - 1,
        ..Default::default()
    });
    let compacted = rec.watch(all_keys_watch(5));

    // The informer pattern through the cache: list at R, watch from R+1.
    let snap = cache.snapshot();
    let list_req = RangeRequest {
        key: b("k/"),
        range_end: lookout_cache::prefix_end(b"k/").unwrap(),
        ..Default::default()
    };
    let listed_kvs = cache.range_at(&snap, &list_req).unwrap().kvs;
    let informer = rec.watch(prefix_watch("k/", snap.revision() + 1));

    let last = churn(&mut kv, "k/", 120, 20, 3).await;
    let history = StoreHistory::fetch(&etcd.endpoint, compacted_at, last, WAIT).await;
    for id in [now, in_ring, beyond_ring, beyond_prev, single, informer] {
        let waited = tokio::time::timeout(WAIT, async {
            while check_watcher(&history, &rec.log(id), last).is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        if waited.is_err() {
            panic!(
                "watcher {id}: {}",
                check_watcher(&history, &rec.log(id), last).unwrap_err()
            );
        }
        let report = check_watcher(&history, &rec.log(id), last).unwrap();
        let log = rec.log(id);
        assert!(
            !report.compacted,
            "watcher {id} from {} compacted at {:?} after {} events (last {:?}); ring now {:?}",
            log.effective_start(),
            log.compacted,
            log.events.len(),
            log.last_revision(),
            cache.history_window()
        );
    }
    assert!(
        rec.log(beyond_ring).events.len() > 100,
        "the splice delivered history"
    );
    check_list_then_watch(
        &history,
        snap.revision(),
        &listed_kvs,
        &rec.log(informer),
        last,
    )
    .unwrap();

    rec.wait_until(compacted, 0).await;
    let log = rec.log(compacted);
    assert_eq!(
        (log.compacted, log.events.len()),
        (Some(compacted_at), 0),
        "{log:?}"
    );
    assert!(cache.metrics().splices.load(Relaxed) >= 2);
    assert_eq!(cache.metrics().compact_cancels.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_kv_comes_from_the_cache_state_and_matches_etcd() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    churn(&mut kv, "p/", 30, 5, 7).await;
    let cache = start_cache(&[&etcd.endpoint], config()).await;
    let rec = Recorder::spawn(&cache);
    let mut req = prefix_watch("p/", 0);
    req.prev_kv = true;
    let id = rec.watch(req);
    let mut plain = prefix_watch("p/", 0);
    plain.filters = vec![FilterType::Noput as i32];
    let deletes_only = rec.watch(plain);
    let start = rec.wait_created(id).await;
    rec.wait_created(deletes_only).await;
    let last = churn(&mut kv, "p/", 200, 5, 8).await;
    let history = StoreHistory::fetch(&etcd.endpoint, start, last, WAIT).await;
    for w in [id, deletes_only] {
        lookout_testkit::wait_for("prev_kv watcher complete", WAIT, || {
            let ok = check_watcher(&history, &rec.log(w), last).is_ok();
            async move { ok.then_some(()) }
        })
        .await;
    }
    assert!(
        rec.log(id)
            .events
            .iter()
            .filter(|e| e.prev_kv.is_some())
            .count()
            > 100
    );
    assert!(rec.log(deletes_only).events.iter().all(|e| e.r#type == 1));
    // Two watchers with different filters are two groups.
    assert_eq!(cache.group_count(), 2);
}
