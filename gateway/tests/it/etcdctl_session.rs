//! The same etcdctl 3.4 session against real etcd and `lookout store`:
//! normalized transcripts must be identical.

use lookout_testkit::{EtcdServer, etcdctl_session};

use crate::support::start_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_session_matches_real_etcd() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lookout = start_store(dir.path(), None).await;

    // Both sessions at once: they are independent and each takes seconds.
    let (e, l) = (etcd.endpoint.clone(), lookout.endpoint.clone());
    let etcd_run = tokio::task::spawn_blocking(move || etcdctl_session(&e));
    let lookout_run = tokio::task::spawn_blocking(move || etcdctl_session(&l));
    let want = etcd_run.await.unwrap();
    let got = lookout_run.await.unwrap();

    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| want.lines().count().min(got.lines().count()));
        panic!(
            "transcripts differ at line {}:\n  etcd:    {:?}\n  lookout: {:?}\n\n=== etcd ===\n{want}\n=== lookout ===\n{got}\n=== lookout log ===\n{}",
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first),
            lookout.child.log_text()
        );
    }
    assert!(want.contains("# lease expired"), "{want}");
    assert!(!want.contains("<BAD>"), "{want}");
}
