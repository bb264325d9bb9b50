//! A gateway that caches only some prefixes (`--prefix`): reads inside them
//! come from the cache, reads outside are forwarded and still exact, a
//! watch outside is refused with a reason, and writes anywhere are still
//! read back by the writer.

use lookout_proto::pb::RangeRequest;
use lookout_testkit::EtcdServer;

use crate::harness::*;

fn range(key: &str, end: &str, serializable: bool) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(end),
        serializable,
        ..Default::default()
    }
}

fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("{line_start} missing"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_prefixes_are_cached() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    churn(&mut direct, "in/", 30, 10, 51).await;
    churn(&mut direct, "out/", 30, 10, 52).await;
    let mut cfg = config(&[&etcd.endpoint]);
    cfg.prefixes = vec![b("in/")];
    let gw = TestGateway::start_with(cfg).await;
    let mut via = kv(&gw.endpoint).await;

    // Writes outside the prefix still come back only once the cache has
    // reached their revision (it asks the store for progress), so the
    // writer's next linearizable read anywhere sees them.
    let w = put(&mut via, "out/new", "1").await;
    let w2 = put(&mut via, "in/new", "2").await;
    assert!(w2 > w);
    for (key, end) in [("in/", "in0"), ("out/", "out0"), ("\0", "\0")] {
        for serializable in [false, true] {
            let got = via
                .range(range(key, end, serializable))
                .await
                .unwrap()
                .into_inner();
            let want = direct
                .range(range(key, end, false))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                got.kvs, want.kvs,
                "{key}..{end} serializable={serializable}"
            );
            assert!(got.header.unwrap().revision >= w2);
        }
    }
    let (_, text) = http_get(&gw.endpoint, "/metrics").await.unwrap();
    assert_eq!(
        sample(&text, "lookout_gateway_ranges_total{source=\"cache\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "lookout_gateway_ranges_total{source=\"upstream\"}"),
        4.0
    );

    // Watches inside are served; outside, refused with the reason.
    let stream = WatchStream::open(&gw.endpoint).await;
    stream.watch(1, prefix_watch("in/", w2)).await;
    stream.wait_until(1, w2).await;
    stream.watch(2, prefix_watch("out/", 0)).await;
    let reason = lookout_testkit::wait_for("refusal", WAIT, || {
        let refused = stream.raw_refusals();
        async move { refused }
    })
    .await;
    assert_eq!(
        reason,
        "lookout: key range is outside the prefixes this gateway caches"
    );
    assert_eq!(stream.ended(), StreamEnd::Open, "the stream lives on");
}

/// Read-your-writes through a prefix-limited gateway for every kind of
/// write: puts and deletes inside the cached prefix (their events must be
/// applied before the answer), outside it (only progress reports carry
/// their revisions), and txns touching both. After each write, a
/// serializable read of the cached prefix through the gateway equals the
/// store's own linearizable read, at or after the write's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_inside_and_outside_the_prefixes_are_read_back_at_once() {
    use lookout_proto::pb::DeleteRangeRequest;
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    let mut cfg = config(&[&etcd.endpoint]);
    cfg.prefixes = vec![b("in/")];
    let gw = TestGateway::start_with(cfg).await;
    let mut via = kv(&gw.endpoint).await;
    let del = |k: String| DeleteRangeRequest {
        key: b(&k),
        ..Default::default()
    };
    // Bounded: 60 writes.
    for i in 0..60 {
        let rev = match i % 6 {
            0 => put(&mut via, &format!("in/{}", i % 7), &i.to_string()).await,
            1 => put(&mut via, &format!("out/{i}"), &i.to_string()).await,
            2 => {
                let r = via.delete_range(del(format!("in/{}", (i + 3) % 7))).await;
                r.unwrap().into_inner().header.unwrap().revision
            }
            3 => {
                let r = via.delete_range(del(format!("out/{}", i - 2))).await;
                r.unwrap().into_inner().header.unwrap().revision
            }
            4 => {
                let ops = vec![
                    put_op(&format!("out/t{i}"), "x"),
                    put_op(&format!("in/t{}", i % 5), &i.to_string()),
                ];
                txn(&mut via, ops).await
            }
            _ => txn(&mut via, vec![put_op(&format!("out/u{i}"), "y")]).await,
        };
        let got = via
            .range(range("in/", "in0", true))
            .await
            .unwrap()
            .into_inner();
        let want = direct
            .range(range("in/", "in0", false))
            .await
            .unwrap()
            .into_inner();
        assert!(
            got.header.unwrap().revision >= rev,
            "write {i} at {rev} not reached"
        );
        assert_eq!(got.kvs, want.kvs, "write {i} at {rev}");
    }
}
