//! fanout, slow, catchup and http against a real etcd (and grpc-proxy):
//! on a healthy server every watcher gets every event exactly once.

use std::time::Duration;

use lookout_loadtest::RunResult;
use lookout_loadtest::scenario::fanout::{self, CatchupParams, HttpParams, SlowParams};
use lookout_loadtest::watch::http::HttpApi;
use lookout_testkit::{EtcdServer, GrpcProxy};

use crate::support::{ctx, small_fanout};

fn assert_clean(r: &RunResult) {
    assert!(
        r.sustained,
        "problems: {:?}\n{}",
        r.problems,
        r.to_json_line()
    );
    for (g, w) in &r.watch {
        let c = &w.checks;
        assert_eq!(
            (
                c.missing,
                c.duplicates,
                c.out_of_order,
                c.unexpected,
                c.content_mismatch,
                c.lost
            ),
            (0, 0, 0, 0, 0, 0),
            "group {g}: {c:?}"
        );
        assert_eq!(c.clean, w.watchers, "group {g}: every watcher clean");
    }
    assert!(r.truth.starts_with("store history"), "{}", r.truth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_on_etcd_delivers_everything_once() {
    let etcd = EtcdServer::start().await;
    let (c, _stop) = ctx(
        &etcd.endpoint,
        &etcd.endpoint,
        "fanout/",
        vec![("etcd".into(), etcd.pid())],
    );
    let p = small_fanout(30, 3);
    let r = fanout::run(&c, &p).await.unwrap();
    assert_clean(&r);
    let w = r.normal().unwrap();
    let puts = r.writer.as_ref().unwrap().acked;
    assert_eq!(puts, 100, "50 puts/s for 2 s");
    // Every watcher saw every put: the checker's count is the real count.
    assert_eq!(w.checks.events, 30 * puts);
    assert_eq!(w.checks.expected, 30 * puts);
    assert_eq!(w.latency.count, 30 * puts, "one latency per delivery");
    assert!(w.latency.p50_ms > 0.0 && w.latency.p50_ms <= w.latency.max_ms);
    assert_eq!((w.connections, w.streams, w.created), (3, 3, 30));
    // The server was measured.
    let s = r.server("etcd").unwrap();
    assert!(
        s.error.is_none() && s.cpu_s > 0.0 && s.peak_rss_bytes > 0,
        "{s:?}"
    );
    assert!(r.client.cpu_s > 0.0);
    // The JSON line parses back into the same verdicts.
    let back: RunResult = serde_json::from_str(&r.to_json_line()).unwrap();
    assert_eq!(back.watch["normal"].checks, w.checks);
    assert_eq!(
        (back.sustained, back.latency.count),
        (true, r.latency.count)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_grpc_proxy_is_judged_against_etcd() {
    let etcd = EtcdServer::start().await;
    let proxy = GrpcProxy::start(&etcd.endpoint).await;
    let (c, _stop) = ctx(
        &proxy.endpoint,
        &etcd.endpoint,
        "proxy/",
        vec![
            ("grpc-proxy".into(), proxy.pid()),
            ("etcd".into(), etcd.pid()),
        ],
    );
    let mut p = small_fanout(20, 2);
    p.streams_per_connection = 2;
    let r = fanout::run(&c, &p).await.unwrap();
    assert_clean(&r);
    assert_eq!(r.normal().unwrap().streams, 4);
    assert!(
        r.truth.contains(&etcd.endpoint),
        "truth read from etcd, not the proxy"
    );
    assert_eq!(r.servers.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watchers_stall_and_still_get_everything() {
    let etcd = EtcdServer::start().await;
    let (c, _stop) = ctx(&etcd.endpoint, &etcd.endpoint, "slow/", vec![]);
    let mut p = small_fanout(20, 4);
    p.slow = Some(SlowParams {
        fraction: 0.25,
        after: Duration::from_millis(300),
        for_: Duration::from_secs(2),
    });
    let r = fanout::run(&c, &p).await.unwrap();
    assert_clean(&r);
    assert_eq!(r.scenario, "slow");
    let slow = &r.watch["slow"];
    assert_eq!((slow.watchers, slow.connections), (5, 1));
    assert_eq!(r.watch["normal"].watchers, 15);
    // The stall shows up in the stalled watchers' latency, not the others'.
    assert!(
        slow.latency.max_ms >= 1000.0,
        "stalled max {} ms",
        slow.latency.max_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_watchers_replay_history_then_live() {
    let etcd = EtcdServer::start().await;
    let (c, _stop) = ctx(&etcd.endpoint, &etcd.endpoint, "catchup/", vec![]);
    let mut p = small_fanout(10, 2);
    p.catchup = Some(CatchupParams { behind: 300 });
    p.duration = Duration::from_secs(1);
    let r = fanout::run(&c, &p).await.unwrap();
    assert_clean(&r);
    let cu = r.catchup.as_ref().unwrap();
    assert_eq!((cu.behind, cu.caught_up), (300, 10));
    let w = r.normal().unwrap();
    assert_eq!(w.checks.expected, 10 * (300 + 50));
    // Only live events are timed.
    assert_eq!(w.latency.count, 10 * 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_watchers_on_etcd_json_gateway() {
    let etcd = EtcdServer::start().await;
    let (c, _stop) = ctx(&etcd.endpoint, &etcd.endpoint, "http/", vec![]);
    let mut p = small_fanout(8, 1);
    p.http = Some(HttpParams {
        fraction: 0.5,
        api: HttpApi::Etcd,
        addr: etcd.endpoint.clone(),
    });
    let r = fanout::run(&c, &p).await.unwrap();
    assert_clean(&r);
    assert_eq!(r.watch["http"].watchers, 4);
    assert_eq!(r.watch["normal"].watchers, 4);
    assert_eq!(
        r.watch["http"].checks.events,
        r.watch["normal"].checks.events
    );
}

/// A server that is not there is an error at start, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_fails_fast() {
    let port = lookout_testkit::free_port();
    let ep = format!("127.0.0.1:{port}");
    let (c, _stop) = ctx(&ep, &ep, "none/", vec![]);
    let t = std::time::Instant::now();
    assert!(fanout::run(&c, &small_fanout(2, 1)).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_second_proxy_resumes_every_watcher_exactly() {
    let etcd = EtcdServer::start().await;
    let a = GrpcProxy::try_start(&etcd.endpoint).await.unwrap();
    let b = GrpcProxy::try_start(&etcd.endpoint).await.unwrap();
    let (c, _stop) = ctx(&a.endpoint, &etcd.endpoint, "failover/", Vec::new());
    let mut p = small_fanout(6, 2);
    p.failover = Some(fanout::FailoverParams {
        after: Duration::from_millis(700),
        endpoint: b.endpoint.clone(),
    });
    let r = fanout::run(&c, &p).await.unwrap();
    assert_eq!(r.scenario, "failover");
    assert_clean(&r);
    let w = r.normal().unwrap();
    // Every stream was killed once and resumed on the other proxy.
    assert_eq!(w.resumes, w.streams);
    assert_eq!(w.checks.events, 6 * r.writer.as_ref().unwrap().acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_steps_measure_the_server_rss() {
    use lookout_loadtest::scenario::memory::{self, MemoryParams};
    let etcd = EtcdServer::start().await;
    let (c, _stop) = ctx(
        &etcd.endpoint,
        &etcd.endpoint,
        "memory/",
        vec![("etcd".into(), etcd.pid())],
    );
    let p = MemoryParams {
        watchers: 300,
        streams: 20,
        connections: 10,
        settle: Duration::from_millis(100),
        ..MemoryParams::default()
    };
    let r = memory::run(&c, &p).await.unwrap();
    assert!(r.sustained, "{:?}", r.problems);
    let m = r.memory.unwrap();
    assert!(m.rss_start_bytes > 0);
    assert!(m.rss_connections_bytes >= m.rss_start_bytes / 2);
    assert!(m.per_watcher_bytes.is_finite() && m.per_connection_bytes.is_finite());
    // Without a process to measure the scenario refuses to run.
    let (bare, _s) = ctx(&etcd.endpoint, &etcd.endpoint, "memory2/", Vec::new());
    assert!(memory::run(&bare, &p).await.is_err());
}
