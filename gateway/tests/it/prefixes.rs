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
