//! SIGTERM under watch load: a gateway process drains (ends every watch
//! stream with Unavailable, GOAWAY, exits in bounded time) and every client
//! resumes on a second, already running gateway with no gap and no
//! duplicate.

use std::time::Duration;

use lookout_testkit::EtcdServer;
use lookout_testkit::checker::{StoreHistory, check_watcher};

use crate::harness::*;
use crate::support::start_gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_watch_load_every_client_resumes_on_a_second_gateway() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut direct = kv(&etcd.endpoint).await;
    let base = churn(&mut direct, "k/", 20, 20, 7).await;
    let mut a = start_gateway(dir.path(), &[&etcd.endpoint], &["--shutdown-timeout=5s"]).await;
    let b = start_gateway(dir.path(), &[&etcd.endpoint], &[]).await;

    // Eight clients, each one stream with two watchers (all keys; a prefix
    // with prev_kv), all on gateway A.
    const CLIENTS: usize = 8;
    let mut streams = Vec::new();
    for _ in 0..CLIENTS {
        let s = WatchStream::open(&a.endpoint).await;
        let mut prev = prefix_watch("k/", base + 1);
        prev.prev_kv = true;
        s.watch(1, all_keys_watch(base + 1)).await;
        s.watch(2, prev).await;
        streams.push(s);
    }
    let ep = etcd.endpoint.clone();
    let writer = tokio::spawn(async move {
        let mut c = kv(&ep).await;
        churn(&mut c, "k/", 400, 20, 8).await
    });
    for s in &streams {
        s.wait_until(1, base + 30).await;
    }

    let st = tokio::task::spawn_blocking(move || {
        let st = a.child.terminate(Duration::from_secs(20));
        (st, a)
    })
    .await
    .unwrap();
    assert!(
        st.0.is_some_and(|s| s.success()),
        "{}",
        st.1.child.log_text()
    );
    let mut resumed = Vec::new();
    for s in streams {
        let end = s.wait_end().await;
        assert!(
            matches!(end, StreamEnd::Status(tonic::Code::Unavailable, _)),
            "a drained stream tells the client to go elsewhere: {end:?}"
        );
        let logs = s.logs.clone();
        drop(s);
        let r = WatchStream::open_with(&b.endpoint, logs.clone()).await;
        for id in [1, 2] {
            let mut req = if id == 1 {
                all_keys_watch(0)
            } else {
                let mut p = prefix_watch("k/", 0);
                p.prev_kv = true;
                p
            };
            let last = logs.lock()[&id].last_revision();
            req.start_revision = last.map_or(base + 1, |r| r + 1);
            r.watch(id, req).await;
        }
        resumed.push(r);
    }
    let through = writer.await.unwrap();
    let history = StoreHistory::fetch(&etcd.endpoint, base, through, WAIT).await;
    for (i, r) in resumed.iter().enumerate() {
        r.wait_until(1, through).await;
        r.wait_until(2, through).await;
        for id in [1, 2] {
            let log = r.logs.lock()[&id].clone();
            let rep = check_watcher(&history, &log, through)
                .unwrap_or_else(|e| panic!("client {i} watcher {id}: {e}"));
            assert!(!rep.compacted);
        }
    }
}
