//! Informers against a real etcd: all sync, the burst arrives exactly once.

use std::time::Duration;

use lookout_loadtest::scenario::informers::{self, InformerParams};
use lookout_testkit::{EtcdServer, GrpcProxy};

use crate::support::ctx;

fn small() -> InformerParams {
    InformerParams {
        clients: 12,
        connections: 4,
        keys: 200,
        value_size: 64,
        burst: 25,
        sync_timeout: Duration::from_secs(20),
        drain_timeout: Duration::from_secs(20),
        ..InformerParams::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informers_sync_and_see_the_burst_once() {
    let etcd = EtcdServer::start().await;
    let (c, _stop) = ctx(
        &etcd.endpoint,
        &etcd.endpoint,
        "inf/",
        vec![("etcd".into(), etcd.pid())],
    );
    let r = informers::run(&c, &small()).await.unwrap();
    assert!(r.sustained, "{:?}", r.problems);
    let i = r.informers.as_ref().unwrap();
    assert_eq!(
        (i.clients, i.synced, i.list_errors, i.list_mismatch),
        (12, 12, 0, 0)
    );
    assert_eq!(i.sync_latency.count, 12);
    let w = &r.watch["informers"];
    assert_eq!(w.checks.expected, 12 * 25);
    assert_eq!(w.checks.events, 12 * 25);
    assert_eq!(
        (w.checks.missing, w.checks.duplicates, w.checks.out_of_order),
        (0, 0, 0)
    );
    assert_eq!(w.checks.clean, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_serializable_lists_through_grpc_proxy() {
    let etcd = EtcdServer::start().await;
    let proxy = GrpcProxy::start(&etcd.endpoint).await;
    let (c, _stop) = ctx(&proxy.endpoint, &etcd.endpoint, "infp/", vec![]);
    let mut p = small();
    p.page_size = 30;
    p.serializable = true;
    let r = informers::run(&c, &p).await.unwrap();
    assert!(r.sustained, "{:?}", r.problems);
    assert_eq!(r.informers.as_ref().unwrap().list_mismatch, 0);
    assert_eq!(r.watch["informers"].checks.clean, 12);
}
