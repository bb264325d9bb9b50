//! `/metrics` scraped during a fan-out run moves with the driver's own
//! counts: watchers, events delivered, events taken from the store, and
//! gRPC requests by method and code. Also `/readyz` and the store's
//! `/metrics` with etcd's names.

use lookout_testkit::EtcdServer;

use crate::harness::*;
use crate::support::start_store;

/// The value of the sample `name` (with its labels, exactly as rendered).
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(endpoint: &str) -> String {
    let (code, body) = http_get(endpoint, "/metrics").await.expect("scrape");
    assert_eq!(code, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_fan_out_run() {
    const WATCHERS: usize = 12;
    const PUTS: usize = 60;
    let etcd = EtcdServer::start().await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let before = scrape(&gw.endpoint).await;
    let out0 = sample(&before, "lookout_events_out_total").unwrap();
    let in0 = sample(&before, "lookout_events_in_total").unwrap();
    assert_eq!(sample(&before, "lookout_watchers"), Some(0.0));

    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let s = WatchStream::open(&gw.endpoint).await;
        s.watch(1, prefix_watch("fan/", 0)).await;
        s.wait_created(1).await;
        streams.push(s);
    }
    // Mid-run: the watcher gauge equals the driver's watcher count.
    let mid = scrape(&gw.endpoint).await;
    assert_eq!(sample(&mid, "lookout_watchers"), Some(WATCHERS as f64));
    assert_eq!(sample(&mid, "lookout_watch_rpcs"), Some(WATCHERS as f64));

    let mut c = kv(&gw.endpoint).await;
    let mut last = 0;
    for i in 0..PUTS {
        last = put(&mut c, &format!("fan/{}", i % 7), "v").await;
    }
    // The driver's own count of delivered events.
    let mut delivered = 0;
    for s in &streams {
        s.wait_until(1, last).await;
        delivered += s.log(1).events.len();
    }
    assert_eq!(delivered, WATCHERS * PUTS);
    let body = lookout_testkit::wait_for("counters catch up", WAIT, || {
        let ep = gw.endpoint.clone();
        async move {
            let b = scrape(&ep).await;
            (sample(&b, "lookout_events_out_total")? - out0 >= delivered as f64).then_some(b)
        }
    })
    .await;
    assert_eq!(
        sample(&body, "lookout_events_out_total").unwrap() - out0,
        delivered as f64,
        "one per watcher per event, exactly"
    );
    assert_eq!(
        sample(&body, "lookout_events_in_total").unwrap() - in0,
        PUTS as f64,
        "each store event taken once, whatever the fan-out"
    );
    assert_eq!(
        sample(
            &body,
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
        ),
        Some(PUTS as f64)
    );
    assert_eq!(
        sample(
            &body,
            "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}"
        ),
        Some(WATCHERS as f64)
    );
    assert_eq!(sample(&body, "lookout_cache_revision"), Some(last as f64));
    let (code, ready) = http_get(&gw.endpoint, "/readyz").await.unwrap();
    assert_eq!((code, ready.as_str()), (200, "ok\n"));

    // Streams closed by their clients: gauges return to zero, and each
    // Watch call is counted as handled once.
    drop(streams);
    let body = lookout_testkit::wait_for("watch gauges drop", WAIT, || {
        let ep = gw.endpoint.clone();
        async move {
            let b = scrape(&ep).await;
            (sample(&b, "lookout_watchers") == Some(0.0)).then_some(b)
        }
    })
    .await;
    let handled: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{") && l.contains("grpc_method=\"Watch\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(handled <= WATCHERS as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_serves_etcd_metric_names_health_and_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let store = start_store(dir.path(), None).await;
    let mut c = kv(&store.endpoint).await;
    for i in 0..10 {
        put(&mut c, &format!("s/{i}"), "v").await;
    }
    let body = scrape(&store.endpoint).await;
    assert_eq!(sample(&body, "etcd_server_has_leader"), Some(1.0));
    assert_eq!(sample(&body, "etcd_server_is_leader"), Some(1.0));
    assert!(sample(&body, "etcd_server_leader_changes_seen_total").unwrap() >= 1.0);
    assert!(sample(&body, "etcd_mvcc_db_total_size_in_bytes").unwrap() > 0.0);
    assert_eq!(sample(&body, "etcd_debugging_mvcc_keys_total"), Some(10.0));
    assert_eq!(
        sample(&body, "etcd_debugging_mvcc_current_revision"),
        Some(11.0)
    );
    assert_eq!(
        sample(
            &body,
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
        ),
        Some(10.0)
    );
    let (code, h) = http_get(&store.endpoint, "/health").await.unwrap();
    assert_eq!((code, h.as_str()), (200, r#"{"health":"true"}"#));
    let (code, r) = http_get(&store.endpoint, "/readyz").await.unwrap();
    assert_eq!((code, r.as_str()), (200, "ok\n"));
}
