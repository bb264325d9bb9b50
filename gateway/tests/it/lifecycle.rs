//! The gateway as a process: SIGTERM ends streams and exits in bounded
//! time; `kill -9` mid-stream and a new process on the same address lets
//! clients resume with no gap and no duplicate; lease keep-alives pass
//! through; `lookout dev` is a store and a gateway in one process.

use std::time::{Duration, Instant};

use lookout_proto::pb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, lease_client::LeaseClient,
};
use lookout_testkit::checker::{StoreHistory, check_watcher};
use lookout_testkit::{EtcdServer, LookoutProcess, etcdctl, free_port};

use crate::harness::*;
use crate::support::{lookout_bin, start_gateway, start_gateway_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_in_bounded_time() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_gateway(dir.path(), &[&etcd.endpoint], &["--shutdown-timeout=5s"]).await;
    let stream = WatchStream::open(&gw.endpoint).await;
    stream.watch(1, all_keys_watch(0)).await;
    stream.wait_created(1).await;
    // A keep-alive stream held open through the gateway too.
    let mut lease = LeaseClient::new(channel(&gw.endpoint).await);
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let (ka_tx, ka_rx) = tokio::sync::mpsc::channel(4);
    ka_tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let mut ka = tokio::time::timeout(
        WAIT,
        lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(ka_rx)),
    )
    .await
    .expect("keep-alive opens")
    .unwrap()
    .into_inner();
    let first = tokio::time::timeout(WAIT, ka.message())
        .await
        .expect("answer");
    assert_eq!(first.unwrap().unwrap().id, id);

    let began = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let st = gw.child.terminate(Duration::from_secs(20));
        (st, gw)
    })
    .await
    .unwrap();
    let (st, gw) = status;
    let took = began.elapsed();
    assert!(
        st.is_some_and(|s| s.success()),
        "exit {st:?}\n{}",
        gw.child.log_text()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let end = stream.wait_end().await;
    assert!(
        matches!(end, StreamEnd::Status(tonic::Code::Unavailable, _)),
        "{end:?}"
    );
    let ka_end = tokio::time::timeout(WAIT, ka.message())
        .await
        .expect("keep-alive ends");
    assert!(
        ka_end
            .as_ref()
            .is_err_and(|s| s.code() == tonic::Code::Unavailable)
            || matches!(ka_end, Ok(None)),
        "{ka_end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_process_replaced_and_clients_resume_exactly() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut direct = kv(&etcd.endpoint).await;
    let base = churn(&mut direct, "k/", 20, 20, 41).await;
    let port = free_port();
    let mut gw = start_gateway_on(dir.path(), &[&etcd.endpoint], port, &[]).await;
    let stream = WatchStream::open(&gw.endpoint).await;
    let mut prev = prefix_watch("k/", base + 1);
    prev.prev_kv = true;
    stream.watch(1, all_keys_watch(base + 1)).await;
    stream.watch(2, prev.clone()).await;
    let ep = etcd.endpoint.clone();
    let writer = tokio::spawn(async move {
        let mut c = kv(&ep).await;
        churn(&mut c, "k/", 300, 20, 42).await
    });
    stream.wait_until(1, base + 40).await;

    gw.child.kill9();
    stream.wait_end().await;
    let logs = stream.logs.clone();
    drop(stream);
    let gw2 = start_gateway_on(dir.path(), &[&etcd.endpoint], port, &[]).await;
    let resumed = WatchStream::open_with(&gw2.endpoint, logs.clone()).await;
    for (id, mut req) in [(1, all_keys_watch(base + 1)), (2, prev)] {
        let log = logs.lock()[&id].clone();
        req.start_revision = log.last_revision().map_or(base + 1, |r| r + 1);
        resumed.watch(id, req).await;
    }
    let through = writer.await.unwrap();
    resumed.wait_until(1, through).await;
    resumed.wait_until(2, through).await;
    let history = StoreHistory::fetch(&etcd.endpoint, base, through, WAIT).await;
    for id in [1, 2] {
        let log = logs.lock()[&id].clone();
        let r =
            check_watcher(&history, &log, through).unwrap_or_else(|e| panic!("watcher {id}: {e}"));
        assert!(!r.compacted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keep_alive_through_the_gateway_keeps_keys_until_it_stops() {
    let etcd = EtcdServer::start().await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let mut lease = LeaseClient::new(channel(&gw.endpoint).await);
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut via = kv(&gw.endpoint).await;
    via.put(PutRequest {
        key: b("leased"),
        value: b("v"),
        lease: id,
        ..Default::default()
    })
    .await
    .unwrap();
    // etcd answers the stream's headers with its first response: the first
    // request goes in before the call.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let mut ka_stream = tokio::time::timeout(
        WAIT,
        lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("keep-alive opens")
    .unwrap()
    .into_inner();
    // Keep it alive for three TTLs: every answer renews the full TTL.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let r = tokio::time::timeout(WAIT, ka_stream.message())
            .await
            .expect("keep-alive answer")
            .unwrap()
            .unwrap();
        assert_eq!((r.id, r.ttl), (id, 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    }
    let get = |serializable| RangeRequest {
        key: b("leased"),
        serializable,
        ..Default::default()
    };
    assert_eq!(via.range(get(false)).await.unwrap().into_inner().count, 1);
    // Stop: the lease expires and the cache sees the key go.
    drop(tx);
    lookout_testkit::wait_for("leased key expired", WAIT, || {
        let mut c = via.clone();
        async move {
            let n = c.range(get(true)).await.ok()?.into_inner().count;
            (n == 0).then_some(())
        }
    })
    .await;
    // An unknown lease answers TTL 0 through the gateway, as etcd does.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id: 0x1234abcd })
        .await
        .unwrap();
    let mut s = tokio::time::timeout(
        WAIT,
        lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("keep-alive opens")
    .unwrap()
    .into_inner();
    let r = tokio::time::timeout(WAIT, s.message())
        .await
        .expect("keep-alive answer")
        .unwrap()
        .unwrap();
    assert_eq!((r.id, r.ttl), (0x1234abcd, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookout_dev_is_a_store_behind_a_gateway_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let args = vec![
        "dev".to_string(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--listen-client-urls".into(),
        format!("http://{endpoint}"),
    ];
    let mut dev = LookoutProcess::spawn(
        &lookout_bin(),
        &args,
        &endpoint,
        &dir.path().join("dev.log"),
    )
    .await;
    lookout_testkit::wait_for("dev gateway synced", WAIT, || {
        let ep = endpoint.clone();
        async move { health_ok(&ep).await.then_some(()) }
    })
    .await;
    let ep = endpoint.clone();
    let out = tokio::task::spawn_blocking(move || {
        let put = etcdctl(&ep, &["put", "foo", "bar"]);
        let get = etcdctl(&ep, &["get", "foo"]);
        let members = etcdctl(&ep, &["member", "list"]);
        let status = etcdctl(&ep, &["endpoint", "status", "-w", "json"]);
        [put, get, members, status].map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    })
    .await
    .unwrap();
    assert_eq!(out[0], "OK\n");
    assert_eq!(out[1], "foo\nbar\n");
    // MemberList shows the gateway's URL, not the internal store's.
    assert!(out[2].contains(&format!("http://{endpoint}")), "{}", out[2]);
    assert!(out[2].contains("lookout-gateway"), "{}", out[2]);
    assert!(out[3].contains("\"revision\":2"), "{}", out[3]);
    // The gateway serves what the store has, and the data dir persists.
    let st = tokio::task::spawn_blocking(move || dev.child.terminate(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert!(dir.path().join("data").exists());
}
