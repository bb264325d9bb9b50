//! The watch stream API as the gateway uses it: ids, cancel, duplicate ids,
//! empty ranges, batching within the frame budget, fragments, and cleanup.

use std::sync::atomic::Ordering::Relaxed;

use lookout_cache::{CacheConfig, CacheError};
use lookout_proto::pb::{PutRequest, RequestOp, TxnRequest, WatchCreateRequest, request_op};
use lookout_testkit::EtcdServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_cancel_errors_and_cleanup() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let cache = start_cache(&[&etcd.endpoint], config()).await;
    let rec = Recorder::spawn(&cache);
    // etcd numbers watchers 0, 1, ... and honours client-chosen ids.
    assert_eq!(rec.watch(prefix_watch("a/", 0)), 0);
    let mut chosen = prefix_watch("b/", 0);
    chosen.watch_id = 7;
    assert_eq!(rec.watch(chosen.clone()), 7);
    assert_eq!(rec.watch(prefix_watch("a/", 0)), 1);
    assert!(matches!(
        rec.handle.create(&chosen),
        Err(CacheError::DuplicateWatchId)
    ));
    let empty = WatchCreateRequest {
        key: b("b"),
        range_end: b("a"),
        ..Default::default()
    };
    assert!(matches!(
        rec.handle.create(&empty),
        Err(CacheError::EmptyWatchRange)
    ));
    lookout_testkit::wait_for("etcd's created+canceled answers with id -1", WAIT, || {
        let n = rec
            .responses(-1)
            .iter()
            .filter(|r| r.created && r.canceled)
            .count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    assert_eq!(cache.group_count(), 2, "two watchers on a/ share a group");

    rec.wait_created(0).await;
    assert!(rec.handle.cancel(0));
    assert!(!rec.handle.cancel(0), "already gone");
    let r = put(&mut kv, "a/x", "1").await;
    rec.wait_until(1, r).await;
    let zero = rec.responses(0);
    assert!(zero.last().unwrap().canceled);
    assert!(
        zero.iter().all(|r| r.events.is_empty()),
        "no event after the cancel"
    );
    assert_eq!(cache.metrics().watchers.load(Relaxed), 2);

    drop(rec);
    lookout_testkit::wait_for("stream cleanup", WAIT, || {
        let (w, g, s) = (
            cache.metrics().watchers.load(Relaxed),
            cache.group_count(),
            cache.metrics().streams.load(Relaxed),
        );
        async move { (w == 0 && g == 0 && s == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_the_frame_budget_and_fragment_when_asked() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let cache = start_cache(
        &[&etcd.endpoint],
        CacheConfig {
            max_frame_bytes: 1024,
            ..config()
        },
    )
    .await;
    let base = cache.revision();
    // 40 small revisions, then one revision of three 700-byte values.
    for i in 0..40 {
        put(&mut kv, &format!("f/{i:02}"), "small").await;
    }
    let big = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b(k),
            value: b(&"v".repeat(700)),
            ..Default::default()
        })),
    };
    let last = kv
        .txn(TxnRequest {
            success: vec![big("f/x"), big("f/y"), big("f/z")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    cache.wait_for_revision(last, WAIT).await.unwrap();

    let rec = Recorder::spawn(&cache);
    let mut frag = prefix_watch("f/", base + 1);
    frag.fragment = true;
    let frag = rec.watch(frag);
    let whole = rec.watch(prefix_watch("f/", base + 1));
    rec.wait_until(frag, last).await;
    rec.wait_until(whole, last).await;

    for id in [frag, whole] {
        let resps: Vec<_> = rec
            .responses(id)
            .into_iter()
            .filter(|r| !r.events.is_empty())
            .collect();
        let events: usize = resps.iter().map(|r| r.events.len()).sum();
        assert_eq!(events, 43);
        // Small revisions are batched several per response, each response
        // within the budget, never splitting a revision.
        let small: Vec<_> = resps
            .iter()
            .filter(|r| r.events.len() > 1 && r.events[0].kv.as_ref().unwrap().value.len() < 10)
            .collect();
        assert!(!small.is_empty());
        for r in &resps {
            use prost::Message;
            let revs: Vec<i64> = r
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision)
                .collect();
            if revs.iter().all(|x| *x != last) {
                assert!(r.encoded_len() <= 1024 + 64, "{} bytes", r.encoded_len());
            }
        }
    }
    // The 2.1 KB revision: fragments (all but the last flagged) for the
    // watcher that asked, one response otherwise.
    let tail = |id| {
        rec.responses(id)
            .into_iter()
            .filter(|r| {
                r.events
                    .iter()
                    .any(|e| e.kv.as_ref().unwrap().mod_revision == last)
            })
            .collect::<Vec<_>>()
    };
    let frags = tail(frag);
    assert!(frags.len() >= 2, "{frags:?}");
    assert!(frags[..frags.len() - 1].iter().all(|r| r.fragment));
    assert!(!frags.last().unwrap().fragment);
    let whole_tail = tail(whole);
    assert_eq!(whole_tail.len(), 1);
    assert_eq!(whole_tail[0].events.len(), 3);
    assert!(!whole_tail[0].fragment);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bytes_carry_exactly_what_frames_carry() {
    use lookout_proto::pb::watch_create_request::FilterType;
    use lookout_testkit::checker::{StoreHistory, check_watcher};
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let cache = start_cache(
        &[&etcd.endpoint],
        CacheConfig {
            max_frame_bytes: 1024,
            ..config()
        },
    )
    .await;
    let base = churn(&mut kv, "g/", 60, 10, 5).await;
    assert!(base > 30, "history to start watchers in");
    cache.wait_for_revision(base, WAIT).await.unwrap();
    let frames = Recorder::spawn(&cache);
    let grpc = Recorder::spawn_grpc(&cache);
    // From the ring (history), from now, with prev_kv, without deletes,
    // with fragments: the same watchers on both streams.
    let mut with_prev = prefix_watch("g/", base - 20);
    with_prev.prev_kv = true;
    let mut no_del = prefix_watch("g/", 0);
    no_del.filters = vec![FilterType::Nodelete as i32];
    let mut frag = all_keys_watch(base - 5);
    frag.fragment = true;
    let reqs = [prefix_watch("g/", base - 25), with_prev, no_del, frag];
    let ids: Vec<(i64, i64)> = reqs
        .iter()
        .map(|r| (frames.watch(r.clone()), grpc.watch(r.clone())))
        .collect();
    let last = churn(&mut kv, "g/", 200, 10, 6).await;
    let history = StoreHistory::fetch(&etcd.endpoint, 0, last, WAIT).await;
    for (a, b) in &ids {
        frames.wait_until(*a, last).await;
        grpc.wait_until(*b, last).await;
        let (la, lb) = (frames.log(*a), grpc.log(*b));
        // Same events in the same order (response boundaries may differ:
        // they depend on what was queued when each stream was read).
        assert_eq!(la.events, lb.events, "watcher {a}/{b}");
        check_watcher(&history, &lb, last).unwrap_or_else(|e| panic!("grpc watcher {b}: {e}"));
        for r in grpc.responses(*b).iter().filter(|r| !r.events.is_empty()) {
            use prost::Message;
            let one_rev = r.events.iter().all(|e| {
                e.kv.as_ref().map(|kv| kv.mod_revision)
                    == r.events[0].kv.as_ref().map(|kv| kv.mod_revision)
            });
            assert!(
                one_rev || r.encoded_len() <= 1024 + 64,
                "a multi-revision response within the budget: {} bytes",
                r.encoded_len()
            );
        }
    }
}

/// A watcher created behind a large backlog on its stream, starting in the
/// past: its `created` answer must come out before any of its events, even
/// though the catch-up pass runs while the backlog is still being drained
/// in small passes (clients drop events for ids they were not told of).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_precedes_catch_up_behind_a_backlog() {
    use bytes::Buf;
    use lookout_proto::pb::WatchResponse;
    use prost::Message;

    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let cfg = CacheConfig {
        // Room for the whole backlog: no overflow, only a long queue.
        stream_queue_bytes: 64 << 20,
        ..config()
    };
    let cache = start_cache(&[&etcd.endpoint], cfg).await;
    let (handle, mut frames) = cache.open_stream();
    let live = handle.create(&prefix_watch("q/", 0)).unwrap();
    let big = "v".repeat(8 << 10);
    let first = put(&mut kv, "q/0", &big).await;
    let mut last = first;
    for i in 1..100 {
        last = put(&mut kv, &format!("q/{i}"), &big).await;
    }
    cache.wait_for_revision(last, WAIT).await.unwrap();
    let behind = handle.create(&prefix_watch("q/", first)).unwrap();

    let mut buf = bytes::BytesMut::new();
    let mut seen_created = false;
    let mut behind_last = 0;
    let mut live_last = 0;
    // Bounded: 100 events for each watcher at 8 KiB, cut into ~2 KiB passes.
    for _ in 0..10_000 {
        if behind_last >= last && live_last >= last {
            break;
        }
        tokio::time::timeout(WAIT, frames.next_grpc(&mut buf, 2048))
            .await
            .expect("frames within the wait")
            .expect("stream open");
        while !buf.is_empty() {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            buf.advance(5);
            let resp = WatchResponse::decode(buf.split_to(len).freeze()).unwrap();
            let top = resp
                .events
                .last()
                .and_then(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision);
            if resp.watch_id == behind {
                if resp.created {
                    seen_created = true;
                }
                assert!(
                    seen_created || resp.events.is_empty(),
                    "events for watcher {behind} before its created response"
                );
                behind_last = top.unwrap_or(behind_last).max(behind_last);
            } else if resp.watch_id == live {
                live_last = top.unwrap_or(live_last).max(live_last);
            }
        }
    }
    assert!(seen_created, "created answer sent");
    assert_eq!(
        (behind_last, live_last),
        (last, last),
        "both watchers caught up"
    );
}
