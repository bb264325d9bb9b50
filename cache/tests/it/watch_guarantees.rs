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

/// A watcher created while the applier is fanning a batch out must not
/// start after that batch: the create waits on the registry lock the
/// fan-out holds, and if it then reads a fan-out revision the applier has
/// not stored yet, it goes live one batch too late and never sees it (CI
/// caught this as a watcher missing its first event). Writes are applied
/// back to back on another thread while watchers are created "now" in
/// batches; each must see the event right after its `created` revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_created_during_a_fan_out_sees_the_next_event() {
    use lookout_cache::{BenchHarness, WatchFrames};
    use lookout_proto::mvccpb::{Event, KeyValue};
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    const BATCHES: usize = 100;
    const BATCH: usize = 100;
    // The ring holds every event, so a stream that falls behind reads it
    // from the ring instead of an upstream this harness does not have.
    const MAX_EVENTS: i64 = 1_500_000;
    let mut h = BenchHarness::new(CacheConfig {
        progress_notify_interval: std::time::Duration::ZERO,
        history_events: MAX_EVENTS as usize + 10,
        history_bytes: usize::MAX,
        stream_queue_bytes: 64 << 20,
        ..config()
    });

    /// Per watch id: the `created` revision and the first event's revision.
    type Firsts = Arc<Mutex<HashMap<i64, (Option<i64>, Option<i64>)>>>;
    fn drain(mut frames: WatchFrames, firsts: Option<Firsts>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut out = Vec::new();
            while frames.next(&mut out).await.is_ok() {
                let Some(firsts) = &firsts else {
                    out.clear();
                    continue;
                };
                let mut m = firsts.lock();
                for f in out.drain(..) {
                    let e = m.entry(f.watch_id()).or_default();
                    if e.1.is_some() {
                        continue;
                    }
                    let resp = f.decode();
                    if resp.created {
                        e.0 = Some(resp.header.unwrap().revision);
                    }
                    if let Some(ev) = resp.events.first() {
                        e.1 = Some(ev.kv.as_ref().unwrap().mod_revision);
                    }
                }
            }
        })
    }

    let firsts: Firsts = Default::default();
    let (handle, frames) = h.open_stream();
    let mut tasks = vec![drain(frames, Some(firsts.clone()))];
    // Other streams watching the key make each fan-out (the lock hold)
    // longer.
    let mut others = Vec::new();
    for _ in 0..64 {
        let (hd, fr) = h.open_stream();
        hd.create(&prefix_watch("k", 0)).expect("create");
        tasks.push(drain(fr, None));
        others.push(hd);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let applier = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rev = h.revision();
            while !stop.load(Relaxed) && rev < MAX_EVENTS {
                rev += 1;
                h.apply(vec![Event {
                    r#type: 0,
                    kv: Some(KeyValue {
                        key: b("k"),
                        create_revision: 2,
                        mod_revision: rev,
                        version: rev - 1,
                        value: b("v"),
                        lease: 0,
                    }),
                    prev_kv: None,
                }]);
            }
            rev
        })
    };

    let mut checked = 0;
    for _ in 0..BATCHES {
        // Creates back to back: they are what races the applier.
        let ids: Vec<i64> = (0..BATCH)
            .map(|_| handle.create(&prefix_watch("k", 0)).expect("create"))
            .collect();
        for &id in &ids {
            let (created, first) =
                lookout_testkit::wait_for(&format!("watcher {id}'s first event"), WAIT, || {
                    let e = firsts.lock().get(&id).copied();
                    async move {
                        match e {
                            Some((Some(c), Some(f))) => Some((c, f)),
                            _ => None,
                        }
                    }
                })
                .await;
            assert_eq!(
                first,
                created + 1,
                "watcher {id} created at {created} missed the events up to {first}"
            );
            assert!(handle.cancel(id), "watcher {id} still exists");
            checked += 1;
        }
        if applier.is_finished() {
            break;
        }
    }
    stop.store(true, Relaxed);
    let last = applier.join().unwrap();
    assert!(
        checked >= BATCH * BATCHES / 2,
        "only {checked} watchers checked before the applier's {last} events ran out"
    );
    drop(others);
    for t in tasks {
        t.abort();
    }
}
