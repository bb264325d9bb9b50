//! put and range against a real etcd.

use lookout_loadtest::scenario::ops::{self, Op, OpsParams};
use lookout_testkit::EtcdServer;

use crate::support::ctx;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_range_complete_every_request() {
    let etcd = EtcdServer::start().await;
    let (c, _stop) = ctx(&etcd.endpoint, &etcd.endpoint, "ops/", vec![]);
    let put = OpsParams {
        op: Op::Put,
        clients: 4,
        connections: 2,
        total: 300,
        keys: 50,
        ..OpsParams::default()
    };
    let r = ops::run(&c, &put).await.unwrap();
    assert!(r.sustained, "{:?}", r.problems);
    let o = r.ops.as_ref().unwrap();
    assert_eq!((o.ok, o.errors, o.timeouts), (300, 0, 0));
    assert_eq!(r.latency.count, 300);

    let mut range = put.clone();
    range.op = Op::Range;
    range.serializable = true;
    let r = ops::run(&c, &range).await.unwrap();
    assert!(r.sustained, "{:?}", r.problems);
    assert_eq!(r.ops.as_ref().unwrap().ok, 300);

    range.whole_prefix = true;
    range.serializable = false;
    range.total = 20;
    let r = ops::run(&c, &range).await.unwrap();
    assert_eq!(r.ops.as_ref().unwrap().ok, 20);
}
