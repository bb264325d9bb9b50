//! The harness itself must work before anything is compared against etcd.

use lookout_testkit::{EtcdServer, etcdctl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_real_etcd_and_etcdctl_round_trips() {
    let etcd = EtcdServer::start().await;
    let put = etcdctl(&etcd.endpoint, &["put", "harness", "ok"]);
    assert!(put.status.success(), "{put:?}");
    let get = etcdctl(&etcd.endpoint, &["get", "harness", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "ok");
    let pid = etcd.pid();
    drop(etcd);
    // The process we started is gone once the guard drops.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
