//! The same etcdctl 3.4 session against real etcd, `lookout store`, and a
//! gateway in front of each: normalized transcripts must be identical.

use lookout_testkit::{EtcdServer, etcdctl_session};

use crate::harness::TestGateway;
use crate::support::{start_gateway, start_store};

/// Panics with both transcripts and the first differing line.
fn assert_same(want: &str, got: &str, who: &str, log: &str) {
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| want.lines().count().min(got.lines().count()));
        panic!(
            "transcripts differ at line {}:\n  etcd:    {:?}\n  {who}: {:?}\n\n=== etcd ===\n{want}\n=== {who} ===\n{got}\n=== log ===\n{log}",
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first),
        );
    }
}

/// (a) `lookout gateway` (a child process) in front of `lookout store`, and
/// (b) an in-process gateway in front of a real etcd 3.4, each against the
/// same session run directly on a real etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_session_through_the_gateway_matches_real_etcd() {
    let reference = EtcdServer::start().await;
    let upstream_etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = start_store(dir.path(), None).await;
    let gw_store = start_gateway(dir.path(), &[&store.endpoint], &[]).await;
    let gw_etcd = TestGateway::start(&[&upstream_etcd.endpoint]).await;

    let run = |ep: String| tokio::task::spawn_blocking(move || etcdctl_session(&ep));
    let want = run(reference.endpoint.clone());
    let via_store = run(gw_store.endpoint.clone());
    let via_etcd = run(gw_etcd.endpoint.clone());
    let want = want.await.unwrap();
    let via_store = via_store.await.unwrap();
    let via_etcd = via_etcd.await.unwrap();
    assert_same(&want, &via_etcd, "gateway+etcd", "");
    let log = format!(
        "{}\n=== store log ===\n{}",
        gw_store.child.log_text(),
        store.child.log_text()
    );
    assert_same(&want, &via_store, "gateway+store", &log);
    assert!(want.contains("# lease expired"), "{want}");
}

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
