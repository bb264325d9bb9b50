//! Several gateways in front of one store: a client resumes on another
//! gateway (one that is behind) and gets exactly the missing events;
//! `--resolver-prefix` registration and MemberList; compactions made on the
//! store directly are learned; storm control refuses a burst of lists past
//! its capacity; keep-alives of many client streams share one upstream
//! stream. All against a real etcd 3.4.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lookout_proto::pb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, MemberListRequest, RangeRequest,
    cluster_client::ClusterClient, lease_client::LeaseClient,
};
use lookout_testkit::checker::{StoreHistory, check_watcher};
use lookout_testkit::{EtcdServer, TcpProxy};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::harness::*;

/// One sample of the gateway's /metrics (`name` with its labels, exactly
/// as rendered), or None when absent.
async fn metric(endpoint: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(endpoint, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until a metric reaches `want` (at least).
async fn wait_metric(endpoint: &str, name: &str, want: f64) {
    lookout_testkit::wait_for(&format!("{name} >= {want}"), WAIT, || async move {
        metric(endpoint, name).await.filter(|v| *v >= want)
    })
    .await;
}

/// Sends a signal to a process this test started (by its PID).
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_on_one_gateway_resumes_on_another_that_is_behind() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    let base = churn(&mut direct, "w/", 10, 20, 11).await;
    let a = TestGateway::start(&[&etcd.endpoint]).await;
    // Gateway B reaches the store through a link the test can cut.
    let link = TcpProxy::start(&etcd.endpoint).await;
    let b = TestGateway::start(&[link.endpoint()]).await;

    let logs = Arc::new(Mutex::new(HashMap::new()));
    let on_a = WatchStream::open_with(&a.endpoint, logs.clone()).await;
    let mut with_prev = prefix_watch("w/", base + 1);
    with_prev.prev_kv = true;
    on_a.watch(1, prefix_watch("w/", base + 1)).await;
    on_a.watch(2, with_prev).await;
    let first = churn(&mut direct, "w/", 60, 20, 12).await;
    on_a.wait_until(1, first).await;
    on_a.wait_until(2, first).await;

    // B falls behind; A keeps going; then the client is killed on A.
    link.cut();
    let second = churn(&mut direct, "w/", 60, 20, 13).await;
    on_a.wait_until(1, second).await;
    on_a.wait_until(2, second).await;
    drop(on_a);
    let resume_from = |id: i64| logs.lock()[&id].last_revision().expect("events") + 1;
    let (r1, r2) = (resume_from(1), resume_from(2));
    assert_eq!((r1, r2), (second + 1, second + 1));

    // The client resumes on B from last seen + 1, a revision B has not
    // reached: B waits (bounded) instead of failing, visible in its metrics.
    let on_b = WatchStream::open_with(&b.endpoint, logs.clone()).await;
    let mut again = prefix_watch("w/", r2);
    again.prev_kv = true;
    on_b.watch(1, prefix_watch("w/", r1)).await;
    on_b.watch(2, again).await;
    lookout_testkit::wait_for("B to start waiting for the resume", WAIT, || {
        let ep = b.endpoint.clone();
        async move {
            let reached = metric(
                &ep,
                "lookout_gateway_resume_waits_total{result=\"reached\"}",
            )
            .await?;
            let timeout = metric(
                &ep,
                "lookout_gateway_resume_waits_total{result=\"timeout\"}",
            )
            .await?;
            // In flight: counted as started (reached is total - timeouts).
            (reached + timeout >= 1.0).then_some(())
        }
    })
    .await;
    link.resume();
    let third = churn(&mut direct, "w/", 60, 20, 14).await;
    on_b.wait_until(1, third).await;
    on_b.wait_until(2, third).await;
    // Nothing B sent was older than what the client had already seen.
    for id in [1, 2] {
        let created = logs.lock()[&id].created_rev.expect("created");
        assert!(created >= second, "watcher {id} created at {created}");
    }

    let history = StoreHistory::fetch(&etcd.endpoint, base, third, WAIT).await;
    for (id, log) in logs.lock().iter() {
        let r = check_watcher(&history, log, third).unwrap_or_else(|e| panic!("watcher {id}: {e}"));
        assert!(!r.compacted, "watcher {id} compact-cancelled");
    }
    assert_eq!(
        metric(
            &b.endpoint,
            "lookout_gateway_resume_waits_total{result=\"timeout\"}"
        )
        .await,
        Some(0.0)
    );
}

async fn member_urls(endpoint: &str) -> Vec<String> {
    let mut c = ClusterClient::new(channel(endpoint).await);
    let mut urls: Vec<String> = c
        .member_list(MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner()
        .members
        .into_iter()
        .flat_map(|m| m.client_ur_ls)
        .collect();
    urls.sort();
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_prefix_lists_every_live_gateway_and_drops_a_dead_one() {
    let etcd = EtcdServer::start().await;
    let with_prefix = || {
        let mut c = config(&[&etcd.endpoint]);
        c.resolver_prefix = Some("/lookout-gateways".into());
        c.resolver_ttl = Duration::from_secs(2);
        c
    };
    // Off by default: a plain gateway writes nothing and lists itself.
    let plain = TestGateway::start(&[&etcd.endpoint]).await;
    assert_eq!(
        member_urls(&plain.endpoint).await,
        vec![format!("http://{}", plain.endpoint)]
    );
    drop(plain);

    let a = TestGateway::start_with(with_prefix()).await;
    let gw_b = TestGateway::start_with(with_prefix()).await;
    let mut both = vec![
        format!("http://{}", a.endpoint),
        format!("http://{}", gw_b.endpoint),
    ];
    both.sort();
    for gw in [&a, &gw_b] {
        lookout_testkit::wait_for("MemberList to list both gateways", WAIT, || {
            let (ep, want) = (gw.endpoint.clone(), both.clone());
            async move { (member_urls(&ep).await == want).then_some(()) }
        })
        .await;
    }
    // The registration is etcd's grpc naming JSON, under a lease.
    let mut direct = kv(&etcd.endpoint).await;
    let reg = direct
        .range(RangeRequest {
            key: b(&format!("/lookout-gateways/http://{}", a.endpoint)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kv0 = &reg.kvs[0];
    assert!(kv0.lease != 0);
    let json: serde_json::Value = serde_json::from_slice(&kv0.value).unwrap();
    assert_eq!(json["Addr"], format!("http://{}", a.endpoint));

    // B dies without a goodbye: its lease runs out and it leaves the list.
    drop(gw_b);
    lookout_testkit::wait_for("the dead gateway to drop out", WAIT, || {
        let (ep, want) = (a.endpoint.clone(), vec![format!("http://{}", a.endpoint)]);
        async move { (member_urls(&ep).await == want).then_some(()) }
    })
    .await;

    // A clean stop revokes at once.
    let a_key = format!("/lookout-gateways/http://{}", a.endpoint);
    a.stop().await.expect("clean stop");
    let left = direct
        .range(RangeRequest {
            key: b(&a_key),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_the_store_cancels_a_ring_replay_like_etcd() {
    let etcd = EtcdServer::start().await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let mut direct = kv(&etcd.endpoint).await;
    let base = churn(&mut direct, "c/", 10, 5, 21).await;
    let mid = churn(&mut direct, "c/", 20, 5, 22).await;
    let head = churn(&mut direct, "c/", 20, 5, 23).await;
    let via_gw = kv(&gw.endpoint).await;
    // The gateway has everything in its ring; the store is compacted
    // behind its back.
    lookout_testkit::wait_for("gateway at head", WAIT, || {
        let mut c = via_gw.clone();
        async move {
            let r = c.range(RangeRequest {
                key: b("c/"),
                serializable: true,
                count_only: true,
                ..Default::default()
            });
            let rev = r.await.ok()?.into_inner().header?.revision;
            (rev >= head).then_some(())
        }
    })
    .await;
    // The truth, read before the store forgets it.
    let history = StoreHistory::fetch(&etcd.endpoint, base, head, WAIT).await;
    compact(&mut direct, mid).await;

    for (endpoint, label) in [(&etcd.endpoint, "etcd"), (&gw.endpoint, "gateway")] {
        let s = WatchStream::open(endpoint).await;
        s.watch(1, prefix_watch("c/", base + 1)).await;
        s.watch(2, prefix_watch("c/", mid)).await;
        s.wait_until(1, head).await;
        s.wait_until(2, head).await;
        let below = s.log(1);
        assert!(
            below.canceled && below.events.is_empty(),
            "{label}: a watch below the compaction is cancelled"
        );
        assert_eq!(below.compacted, Some(mid), "{label}");
        let at = s.log(2);
        assert!(!at.canceled, "{label}: a watch from the compaction replays");
        check_watcher(&history, &at, head).unwrap_or_else(|e| panic!("{label}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_lists_past_capacity_gets_resource_exhausted_with_a_retry_hint() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    churn(&mut direct, "l/", 30, 30, 31).await;
    let mut cfg = config(&[&etcd.endpoint]);
    cfg.lists.permits = 1;
    cfg.lists.queue = 2;
    cfg.lists.max_wait = Duration::from_secs(60);
    cfg.lists.retry_after = Duration::from_millis(750);
    cfg.read_timeout = Duration::from_secs(60);
    let gw = TestGateway::start_with(cfg).await;
    let list = |serializable: bool| RangeRequest {
        key: b("l/"),
        range_end: b("l0"),
        serializable,
        ..Default::default()
    };

    // A linearizable list asks the store for its revision; with the store
    // stopped it holds the only permit until the store is back.
    signal(etcd.pid(), "-STOP");
    let holder = {
        let mut c = kv(&gw.endpoint).await;
        let req = list(false);
        tokio::spawn(async move { c.range(req).await.map(|r| r.into_inner().kvs.len()) })
    };
    wait_metric(
        &gw.endpoint,
        "lookout_gateway_lists_total{result=\"admitted\"}",
        1.0,
    )
    .await;
    // A burst of ten: two wait in the queue, eight are refused at once.
    let mut burst = Vec::new();
    for _ in 0..10 {
        let mut c = kv(&gw.endpoint).await;
        let req = list(true);
        burst.push(tokio::spawn(async move { c.range(req).await }));
    }
    wait_metric(
        &gw.endpoint,
        "lookout_gateway_lists_total{result=\"rejected\"}",
        8.0,
    )
    .await;
    // Single-key reads and counts are not lists: they pass meanwhile.
    let mut c = kv(&gw.endpoint).await;
    c.range(RangeRequest {
        key: b("l/000"),
        serializable: true,
        ..Default::default()
    })
    .await
    .expect("a get is not gated");
    signal(etcd.pid(), "-CONT");

    assert!(holder.await.unwrap().expect("the holder's list") > 0);
    let (mut ok, mut refused) = (0, 0);
    for t in burst {
        match t.await.unwrap() {
            Ok(r) => {
                assert!(!r.into_inner().kvs.is_empty());
                ok += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("retry after 750ms"), "{s:?}");
                assert_eq!(
                    s.metadata()
                        .get("grpc-retry-pushback-ms")
                        .and_then(|v| v.to_str().ok()),
                    Some("750")
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (2, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_from_many_client_streams_share_one_upstream_stream() {
    let etcd = EtcdServer::start().await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let lease = LeaseClient::new(channel(&gw.endpoint).await)
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;

    const CLIENTS: usize = 20;
    const ROUNDS: usize = 3;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let ep = gw.endpoint.clone();
        tasks.push(tokio::spawn(async move {
            // Each client on its own connection, as separate processes are.
            let mut c = LeaseClient::new(channel(&ep).await);
            let (tx, rx) = mpsc::channel(4);
            tx.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
            let mut answers = c
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("keep-alive stream")
                .into_inner();
            let mut ttls = Vec::new();
            for round in 0..ROUNDS {
                if round > 0 {
                    tx.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
                }
                let r = answers.message().await.expect("answer").expect("open");
                assert_eq!(r.id, lease, "client {i}");
                ttls.push(r.ttl);
            }
            // The last client also asks about a lease that does not exist:
            // etcd's answer (TTL 0) comes back unchanged.
            if i == CLIENTS - 1 {
                tx.send(LeaseKeepAliveRequest { id: 0x7777 }).await.unwrap();
                let r = answers.message().await.unwrap().unwrap();
                assert_eq!((r.id, r.ttl), (0x7777, 0));
            }
            (ttls, tx, answers)
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        let (ttls, tx, answers) = t.await.unwrap();
        assert!(ttls.iter().all(|t| *t > 0 && *t <= 30), "{ttls:?}");
        open.push((tx, answers));
    }
    let m = |name: &'static str| {
        let ep = gw.endpoint.clone();
        async move { metric(&ep, name).await.unwrap_or(-1.0) }
    };
    assert_eq!(m("lookout_gateway_keepalive_streams").await, CLIENTS as f64);
    assert_eq!(m("lookout_gateway_keepalive_upstream_streams").await, 1.0);
    assert_eq!(
        m("lookout_gateway_keepalive_upstream_streams_opened_total").await,
        1.0
    );
    let asked = m("lookout_gateway_keepalive_requests_total{side=\"client\"}").await;
    let sent = m("lookout_gateway_keepalive_requests_total{side=\"upstream\"}").await;
    assert_eq!(asked, (CLIENTS * ROUNDS + 1) as f64);
    assert!(sent >= 1.0 && sent <= asked, "{sent} upstream for {asked}");
    drop(open);
    // The lease is still alive and renewable through the gateway.
    let mut c = LeaseClient::new(channel(&gw.endpoint).await);
    let ttl = c
        .lease_time_to_live(lookout_proto::pb::LeaseTimeToLiveRequest {
            id: lease,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner()
        .ttl;
    assert!(ttl > 0);
}
