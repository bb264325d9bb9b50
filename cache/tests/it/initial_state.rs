//! Initial-state admission: at most `max_concurrent_initial` initial states
//! stream at once, and one whose consumer stops reading stops counting, so
//! a stalled client never holds the others back.

use std::time::Duration;

use lookout_cache::CacheConfig;
use lookout_testkit::EtcdServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_initial_state_does_not_hold_the_others() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    for i in 0..200 {
        put(&mut kv, &format!("i/{i:03}"), &"v".repeat(100)).await;
    }
    let cfg = CacheConfig {
        max_concurrent_initial: 1,
        // Small frames: one pass hands out a page of about 1 KiB.
        max_frame_bytes: 256,
        ..config()
    };
    let cache = start_cache(&[&etcd.endpoint], cfg).await;
    let mut req = prefix_watch("i/", 0);
    req.initial_state = true;

    // A consumer that takes one page (and so the only permit), then stops.
    let (stalled, mut frames) = cache.open_stream();
    let id = stalled.create(&req).expect("create");
    let mut first = Vec::new();
    assert!(frames.try_next(&mut first).expect("open"));
    let events: usize = first
        .iter()
        .filter(|f| f.head().watch_id == id)
        .map(|f| f.events().len())
        .sum();
    assert!(events > 0 && events < 200, "one page, not all: {events}");

    // Another initial state still completes: the stalled permit stops
    // counting once it has handed out nothing for a while.
    let rec = Recorder::spawn(&cache);
    let other = rec.watch(req.clone());
    let marker = lookout_testkit::wait_for("the second initial state", WAIT, || {
        let r = rec.responses(other);
        let done = r
            .iter()
            .skip(1)
            .position(|x| x.events.is_empty() && !x.canceled);
        async move { done.map(|i| (i, r)) }
    })
    .await;
    let (i, responses) = marker;
    let n: usize = responses[1..=i].iter().map(|r| r.events.len()).sum();
    assert_eq!(n, 200, "the whole initial state, then the marker");

    // The stalled one resumes where it was and finishes too.
    let mut rest = Vec::new();
    let mut total = events;
    let mut done = false;
    for _ in 0..1000 {
        rest.clear();
        tokio::time::timeout(Duration::from_secs(10), frames.next(&mut rest))
            .await
            .expect("frames in time")
            .expect("open");
        for f in &rest {
            if f.head().watch_id == id {
                total += f.events().len();
                done |= f.events().is_empty() && !f.head().created;
            }
        }
        if done {
            break;
        }
    }
    assert!(done, "marker after resuming");
    assert_eq!(total, 200, "no entry lost or repeated across the stall");
}

/// `initial_state` with `start_revision` S: the state is never older than
/// S - 1. A cache that has S - 1 serves its current state; one that has not
/// refuses at once (the gateway waits, bounded, before asking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_state_is_never_older_than_the_clients_revision() {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let mut last = 0;
    for i in 0..20 {
        last = put(&mut kv, &format!("s/{i:02}"), "v").await;
    }
    let cache = start_cache(&[&etcd.endpoint], config()).await;
    cache
        .wait_for_revision(last, WAIT)
        .await
        .expect("cache reaches the last put");
    let (handle, _frames) = cache.open_stream();

    let mut req = prefix_watch("s/", 0);
    req.initial_state = true;
    req.start_revision = last + 1;
    handle.create(&req).expect("the cache has S - 1: served");

    req.start_revision = last + 2;
    match handle.create(&req) {
        Err(lookout_cache::CacheError::InitialStateBehind {
            wanted,
            needed,
            cached,
        }) => {
            assert_eq!((wanted, needed, cached), (last + 2, last + 1, last));
        }
        other => panic!("expected InitialStateBehind, got {other:?}"),
    }
}
