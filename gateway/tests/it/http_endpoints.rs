//! `/health` and `/metrics`: on `--metrics-addr` and on the client port.

use lookout_proto::pb::WatchCreateRequest;
use lookout_testkit::{EtcdServer, TcpProxy};

use crate::harness::*;

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_waits_for_the_cache_and_metrics_follow_the_traffic() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    let base = churn(&mut direct, "m/", 30, 10, 31).await;
    let proxy = TcpProxy::start(&etcd.endpoint).await;
    proxy.cut();
    let mut cfg = config(&[proxy.endpoint()]);
    cfg.metrics_addr = Some("http://127.0.0.1:0".into());
    let gw = TestGateway::start_unready(cfg).await;
    let metrics = gw.metrics_addr.expect("metrics port").to_string();

    // The store is unreachable: not healthy yet, on both ports.
    for ep in [&metrics, &gw.endpoint] {
        let (code, body) = http_get(ep, "/health").await.expect("health answers");
        assert_eq!(code, 503, "{body}");
        assert!(body.starts_with(r#"{"health":"false""#), "{body}");
    }
    let (_, text) = http_get(&metrics, "/metrics").await.unwrap();
    assert_eq!(sample(&text, "lookout_ready"), 0.0);

    proxy.resume();
    lookout_testkit::wait_for("healthy once synced", WAIT, || {
        let m = metrics.clone();
        async move {
            matches!(http_get(&m, "/health").await, Some((200, b)) if b == r#"{"health":"true"}"#)
                .then_some(())
        }
    })
    .await;

    // Three watchers on two ranges (two share a group), events flowing.
    let stream = WatchStream::open(&gw.endpoint).await;
    stream.watch(1, prefix_watch("m/", base + 1)).await;
    stream.watch(2, prefix_watch("m/", base + 1)).await;
    stream
        .watch(
            3,
            WatchCreateRequest {
                prev_kv: true,
                ..prefix_watch("m/0", base + 1)
            },
        )
        .await;
    let through = churn(&mut direct, "m/", 40, 10, 32).await;
    stream.wait_until(1, through).await;
    stream.wait_until(2, through).await;

    let (code, text) = http_get(&metrics, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(sample(&text, "lookout_ready"), 1.0);
    assert_eq!(sample(&text, "lookout_watchers"), 3.0);
    assert_eq!(sample(&text, "lookout_watch_groups"), 2.0);
    assert_eq!(sample(&text, "lookout_watch_rpcs"), 1.0);
    assert_eq!(sample(&text, "lookout_cache_revision"), through as f64);
    assert_eq!(sample(&text, "lookout_cache_revision_lag"), 0.0);
    assert!(sample(&text, "lookout_events_in_total") >= (through - base) as f64);
    // Each of watchers 1 and 2 got every event after base.
    assert!(sample(&text, "lookout_events_out_total") >= 2.0 * (through - base) as f64);
    assert!(sample(&text, "lookout_ring_events") > 0.0);
    assert!(sample(&text, "lookout_ring_bytes") > 0.0);
    assert_eq!(sample(&text, "lookout_list_duration_seconds_count"), 1.0);
    assert!(sample(&text, "lookout_list_duration_seconds_sum") > 0.0);
    assert!(sample(&text, "lookout_upstream_watches_total") >= 1.0);
    // The client port serves the same text.
    let (code, same) = http_get(&gw.endpoint, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(sample(&same, "lookout_watchers"), 3.0);

    drop(stream);
    lookout_testkit::wait_for("watchers gone with their stream", WAIT, || {
        let m = metrics.clone();
        async move {
            let (_, t) = http_get(&m, "/metrics").await?;
            (sample(&t, "lookout_watchers") == 0.0 && sample(&t, "lookout_watch_rpcs") == 0.0)
                .then_some(())
        }
    })
    .await;
    gw.stop().await.unwrap();
}

/// `GET /version` answers etcd's shape with the same cluster version etcd
/// 3.4 reports, so clients that pick their path prefix from it (`/v3` from
/// 3.4) choose the same one for a gateway as for etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_answers_like_etcd() {
    let etcd = EtcdServer::start().await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let (code, theirs) = http_get(&etcd.endpoint, "/version").await.unwrap();
    assert_eq!(code, 200, "{theirs}");
    let (code, ours) = http_get(&gw.endpoint, "/version").await.unwrap();
    assert_eq!(code, 200, "{ours}");
    let theirs: serde_json::Value = serde_json::from_str(&theirs).unwrap();
    let ours: serde_json::Value = serde_json::from_str(&ours).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(&theirs));
    assert_eq!(ours["etcdcluster"], theirs["etcdcluster"]);
    let minor = |v: &serde_json::Value| {
        let s = v["etcdserver"].as_str().unwrap().to_string();
        s.rsplit_once('.').unwrap().0.to_string()
    };
    assert_eq!(minor(&ours), minor(&theirs));
}
