//! A stalled client never slows the others; a slow one catches up from the
//! ring with every event; one that falls off the ring is cancelled with
//! `compact_revision` so it relists.

use std::sync::atomic::Ordering::Relaxed;

use lookout_cache::CacheConfig;
use lookout_testkit::EtcdServer;
use lookout_testkit::checker::{StoreHistory, check_watcher};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_falls_off_the_ring_slow_catches_up_others_unaffected() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let cache = start_cache(
        &[&etcd.endpoint],
        CacheConfig {
            history_events: 300,
            stream_queue_bytes: 4 << 10,
            max_frame_bytes: 2 << 10,
            catchup_scan_budget: 64,
            ..config()
        },
    )
    .await;
    let healthy = Recorder::spawn(&cache);
    let slow = Recorder::spawn_paused(&cache);
    let stalled = Recorder::spawn_paused(&cache);
    let h_all = healthy.watch(all_keys_watch(0));
    let h_prefix = healthy.watch(prefix_watch("s/00", 0));
    let s_all = slow.watch(all_keys_watch(0));
    let mut s_prev = prefix_watch("s/", 0);
    s_prev.prev_kv = true;
    let s_prev = slow.watch(s_prev);
    let x_all = stalled.watch(all_keys_watch(0));
    let base = healthy.wait_created(h_all).await;

    // Phase 1: the slow stream does not read while ~150 revisions go by:
    // far past its 4 KiB queue, well inside the 300-event ring.
    let mid = churn(&mut kv, "s/", 150, 30, 41).await;
    healthy.wait_until(h_all, mid).await;
    assert!(
        cache.metrics().slow_switches.load(Relaxed) >= 2,
        "both paused streams overflowed"
    );
    slow.resume();
    slow.wait_until(s_all, mid).await;

    // Phase 2: the stalled stream stays stalled past the ring's reach.
    let last = churn(&mut kv, "s/", 400, 30, 42).await;
    let history = StoreHistory::fetch(&etcd.endpoint, base, last, WAIT).await;
    for (rec, id) in [
        (&healthy, h_all),
        (&healthy, h_prefix),
        (&slow, s_all),
        (&slow, s_prev),
    ] {
        lookout_testkit::wait_for("watcher complete", WAIT, || {
            let ok = check_watcher(&history, &rec.log(id), last).is_ok();
            async move { ok.then_some(()) }
        })
        .await;
        let r = check_watcher(&history, &rec.log(id), last).unwrap();
        assert!(!r.compacted);
    }
    // Behind batches are delivered several events per response, within the
    // frame budget (one revision may exceed it alone).
    let batched = slow
        .responses(s_all)
        .iter()
        .filter(|r| r.events.len() > 1)
        .count();
    assert!(batched > 0, "catch-up batches events");

    stalled.resume();
    stalled.wait_until(x_all, i64::MAX).await;
    let log = stalled.log(x_all);
    let (ring_start, _) = cache.history_window();
    let c = log
        .compacted
        .expect("the stalled watcher is compact-cancelled");
    assert!(
        c > base + 1 && c <= ring_start,
        "compact_revision {c} is where the ring begins"
    );
    check_watcher(&history, &log, last).unwrap();
    assert!(cache.metrics().compact_cancels.load(Relaxed) >= 1);
    assert_eq!(cache.metrics().watchers.load(Relaxed), 4);
}
