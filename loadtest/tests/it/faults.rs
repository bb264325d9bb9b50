//! Real faults, not synthetic ones: a compacted history and a server that
//! dies mid-run are reported for what they are, and nothing hangs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lookout_loadtest::conn;
use lookout_loadtest::payload;
use lookout_loadtest::progress::Counters;
use lookout_loadtest::scenario::fanout;
use lookout_loadtest::watch::grpc::{self, StreamSpec};
use lookout_loadtest::watch::{self, Group, StreamLimits, WatchTarget};
use lookout_loadtest::writer::{self, WriterConfig};
use lookout_proto::pb;
use lookout_testkit::EtcdServer;
use lookout_testkit::checker::{Truth, WatchEnd};

use crate::support::{ctx, small_fanout};

/// etcd cancels a watch whose start revision was compacted; the checker
/// records a compact cancel (the client must relist), not missing events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_is_a_compact_cancel_not_a_gap() {
    let etcd = EtcdServer::start().await;
    let ch = conn::connect(&etcd.endpoint).await.unwrap();
    let prefix = Bytes::from_static(b"compact/");
    let base = conn::current_revision(&ch).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let cfg = WriterConfig {
        prefix: prefix.clone(),
        keys: 3,
        value_size: 32,
        total: 30,
        rate: None,
        put_timeout: Duration::from_secs(10),
        max_inflight: 8,
        first_seq: 0,
    };
    let rep = writer::run(std::slice::from_ref(&ch), &cfg, Default::default(), stop).await;
    assert_eq!(rep.acked, 30);
    let head = rep.max_acked_rev();
    conn::kv(&ch)
        .compact(pb::CompactionRequest {
            revision: head - 5,
            physical: true,
        })
        .await
        .unwrap();

    let counters = Arc::new(Counters::default());
    let (controls, sig) = watch::signals(counters);
    let spec = StreamSpec {
        channel: ch.clone(),
        target: WatchTarget {
            key: prefix.clone(),
            range_end: payload::prefix_range_end(&prefix),
        },
        watchers: 3,
        start_rev: base + 1,
        group: Group::Normal,
        stall: None,
        switch: None,
    };
    let limits = StreamLimits {
        setup_timeout: Duration::from_secs(10),
        max_resumes: 1,
        live_from_unix_ns: 0,
        reach_rev: None,
    };
    let task = tokio::spawn(grpc::run_stream(spec, limits, sig));
    let _ = controls.target.send(head);
    let out = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("a cancelled stream ends by itself")
        .unwrap();
    assert_eq!(out.created, 3);
    let truth = Truth::from_revisions(rep.acked_revisions());
    for c in &out.checks {
        assert_eq!(
            c.end(),
            &WatchEnd::CompactCancelled {
                compact_revision: head - 5
            }
        );
        let j = c.judge(&truth, head);
        assert_eq!(
            (j.missing, j.duplicates, j.out_of_order),
            (0, 0, 0),
            "{j:?}"
        );
    }
    drop(controls);
}

/// The server is killed mid-run: puts fail, watch streams cannot resume,
/// the store's history is gone. The run still ends on its own, well within
/// its bounds, and says the target fell over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_dies_is_reported_not_hung_on() {
    let mut etcd = EtcdServer::start().await;
    let (c, _stop) = ctx(
        &etcd.endpoint,
        &etcd.endpoint,
        "dies/",
        vec![("etcd".into(), etcd.pid())],
    );
    let mut p = small_fanout(10, 2);
    p.duration = Duration::from_secs(3);
    p.put_timeout = Duration::from_secs(1);
    p.drain_timeout = Duration::from_secs(3);
    p.max_resumes = 2;
    let run = tokio::spawn(async move { fanout::run(&c, &p).await });
    // Kill it once the writer has been going for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    etcd.child.kill9();
    let r = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends by itself")
        .unwrap()
        .unwrap();
    assert!(!r.sustained);
    let all = r.problems.join("\n");
    assert!(all.contains("failed (writes fell over)"), "{all}");
    assert!(all.contains("could not read the store's history"), "{all}");
    let w = r.normal().unwrap();
    assert_eq!(
        w.checks.lost, 10,
        "every watcher lost its stream: {:?}",
        w.checks
    );
    let wr = r.writer.as_ref().unwrap();
    assert!(wr.acked > 0 && wr.timed_out + wr.failed > 0, "{wr:?}");
    // Nothing was skipped silently: what is absent is the tail after the
    // kill, reported as undelivered, not as gaps.
    assert_eq!(
        w.checks.duplicates + w.checks.out_of_order + w.checks.missing,
        0,
        "{:?}",
        w.checks
    );
}
