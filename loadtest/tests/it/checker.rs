//! The checker itself: fed a stream with a gap, a duplicate or a
//! reordering, it reports exactly that — synthetically, and against the
//! history of a real etcd.

use std::time::Duration;

use bytes::Bytes;
use lookout_loadtest::conn;
use lookout_loadtest::payload::{self, event_tag};
use lookout_loadtest::truth;
use lookout_loadtest::watch::WatchTarget;
use lookout_loadtest::writer::{self, WriterConfig};
use lookout_proto::pb;
use lookout_proto::pb::watch_request::RequestUnion;
use lookout_testkit::EtcdServer;
use lookout_testkit::checker::{CheckTotals, Truth, WatchCheck, WatchEnd};

fn tag(rev: i64) -> u64 {
    rev as u64 * 7 + 1
}

fn truth_1_to_10() -> Truth {
    Truth::from_events((1..=10).map(|r| (r, tag(r))).collect())
}

fn feed(revs: &[i64]) -> WatchCheck {
    let mut w = WatchCheck::new(1);
    for &r in revs {
        w.observe(r, tag(r));
    }
    w
}

#[test]
fn gap_is_counted_as_missing_only() {
    let j = feed(&[1, 2, 3, 4, 6, 7, 8, 9, 10]).judge(&truth_1_to_10(), 10);
    assert_eq!(
        (j.missing, j.duplicates, j.out_of_order, j.unexpected),
        (1, 0, 0, 0)
    );
    assert!(!j.is_clean());
}

#[test]
fn duplicates_are_counted_as_duplicates_only() {
    // Right after, and long after, the first delivery.
    let j = feed(&[1, 2, 3, 4, 4, 5, 6, 7, 8, 3, 9, 10]).judge(&truth_1_to_10(), 10);
    assert_eq!(
        (j.missing, j.duplicates, j.out_of_order, j.unexpected),
        (0, 2, 0, 0)
    );
    assert_eq!(
        j.content_ok,
        Some(true),
        "duplicates do not alter the digest"
    );
}

#[test]
fn reordering_is_counted_as_out_of_order_only() {
    let j = feed(&[1, 2, 4, 3, 5, 6, 7, 8, 10, 9]).judge(&truth_1_to_10(), 10);
    assert_eq!(
        (j.missing, j.duplicates, j.out_of_order, j.unexpected),
        (0, 0, 2, 0)
    );
}

#[test]
fn everything_at_once_and_totals() {
    let truth = truth_1_to_10();
    let clean = feed(&(1..=10).collect::<Vec<_>>());
    // gap at 2, reorder 5/4, duplicate 7, phantom 12.
    let messy = feed(&[1, 3, 5, 4, 6, 7, 7, 8, 9, 10, 12]);
    let jc = clean.judge(&truth, 10);
    let jm = messy.judge(&truth, 10);
    assert!(jc.is_clean());
    assert_eq!(jc.content_ok, Some(true));
    assert_eq!(
        (jm.missing, jm.duplicates, jm.out_of_order, jm.unexpected),
        (1, 1, 1, 1)
    );
    let mut t = CheckTotals::default();
    t.add(&clean, &jc);
    t.add(&messy, &jm);
    assert_eq!((t.watchers, t.clean), (2, 1));
    assert_eq!(
        (t.missing, t.duplicates, t.out_of_order, t.unexpected),
        (1, 1, 1, 1)
    );
    assert_eq!(t.events, 10 + 11);
    assert!(!t.is_clean());
}

#[test]
fn altered_content_is_caught() {
    let mut w = WatchCheck::new(1);
    for r in 1..=10 {
        w.observe(r, if r == 6 { 0 } else { tag(r) });
    }
    let j = w.judge(&truth_1_to_10(), 10);
    assert_eq!((j.missing, j.content_ok), (0, Some(false)));
}

#[test]
fn a_timed_out_put_absent_from_history_is_not_missing() {
    // The writer gave up on a put and the store's history has no revision 6
    // (it was never applied): nothing is owed for it.
    let seen: Vec<i64> = (1..=11).filter(|r| *r != 6).collect();
    let without = Truth::from_events(seen.iter().map(|r| (*r, tag(*r))).collect());
    let j = feed(&seen).judge(&without, 11);
    assert_eq!((j.missing, j.undelivered), (0, 0));
    assert!(j.is_clean());
    // If the history does show it was applied, it is owed: a silent gap.
    let with = Truth::from_events((1..=11).map(|r| (r, tag(r))).collect());
    let j = feed(&seen).judge(&with, 11);
    assert_eq!((j.missing, j.undelivered), (1, 0));
}

/// What a watcher had not received when the run stopped waiting is late,
/// not a gap.
#[test]
fn a_late_tail_is_undelivered_not_missing() {
    let j = feed(&[1, 2, 3, 4, 5, 6]).judge(&truth_1_to_10(), 10);
    assert_eq!((j.missing, j.undelivered), (0, 4));
    assert!(!j.is_clean());
}

#[test]
fn compact_cancel_ends_what_is_owed() {
    let mut w = feed(&[1, 2, 3]);
    w.set_end(WatchEnd::CompactCancelled {
        compact_revision: 8,
    });
    let j = w.judge(&truth_1_to_10(), 10);
    assert_eq!((j.expected, j.missing), (3, 0));
}

/// The checker's truth and tags agree with what a real etcd streams: a
/// faithful copy of its events is clean, the same copy with one event
/// dropped shows exactly one missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_etcd_history_judges_real_events() {
    let etcd = EtcdServer::start().await;
    let prefix = Bytes::from_static(b"checker/");
    let ch = conn::connect(&etcd.endpoint).await.unwrap();
    let base = conn::current_revision(&ch).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let cfg = WriterConfig {
        prefix: prefix.clone(),
        keys: 5,
        value_size: 64,
        total: 20,
        rate: None,
        put_timeout: Duration::from_secs(10),
        max_inflight: 4,
        first_seq: 0,
    };
    let rep = writer::run(std::slice::from_ref(&ch), &cfg, Default::default(), stop).await;
    assert_eq!(rep.acked, 20, "{:?}", rep.errors);
    let head = rep.max_acked_rev();
    let target = WatchTarget {
        key: prefix.clone(),
        range_end: payload::prefix_range_end(&prefix),
    };
    let hist = truth::read_history(
        &etcd.endpoint,
        &target,
        base + 1,
        head,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(hist.truth.revisions().len(), 20);
    assert_eq!(hist.seq_rev.len(), 20);

    // Our own watch of the same range, independent of truth.rs.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: target.key.clone(),
            range_end: target.range_end.clone(),
            start_revision: base + 1,
            ..Default::default()
        })),
    })
    .unwrap();
    let mut stream = conn::watch(&ch)
        .watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    for _ in 0..100 {
        if events.len() >= 20 {
            break;
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events within 10s")
            .unwrap()
            .unwrap();
        for ev in resp.events {
            let kv = ev.kv.unwrap();
            events.push((kv.mod_revision, event_tag(false, &kv.key, &kv.value)));
        }
    }
    assert_eq!(events.len(), 20);

    let mut faithful = WatchCheck::new(base + 1);
    let mut gapped = WatchCheck::new(base + 1);
    for (i, (rev, t)) in events.iter().enumerate() {
        faithful.observe(*rev, *t);
        if i != 7 {
            gapped.observe(*rev, *t);
        }
    }
    let jf = faithful.judge(&hist.truth, head);
    assert!(jf.is_clean(), "{jf:?}");
    assert_eq!(jf.content_ok, Some(true));
    let jg = gapped.judge(&hist.truth, head);
    assert_eq!((jg.missing, jg.duplicates, jg.out_of_order), (1, 0, 0));
}
