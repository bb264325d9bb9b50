//! `kill -9` in the middle of acknowledged writes loses none of them, and
//! the revision counter carries on after a restart.

use std::sync::Arc;
use std::time::Duration;

use lookout_proto::pb::{PutRequest, RangeRequest, kv_client::KvClient};
use lookout_testkit::kv::put;
use lookout_testkit::wait_for;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::support::start_store;

async fn client(endpoint: &str) -> KvClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    KvClient::new(ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = start_store(dir.path(), None).await;
    let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();

    // Four concurrent writers, so the kill lands with writes in flight.
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut kv = client(&store.endpoint).await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100_000u32 {
                let key = format!("crash/{w}/{i:06}");
                let value = format!("value-{w}-{i}");
                let put = PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..Default::default()
                };
                match kv.put(put).await {
                    Ok(r) => {
                        let rev = r.into_inner().header.unwrap().revision;
                        acked.lock().await.push((key, value, rev));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for("400 acknowledged writes", Duration::from_secs(60), || {
        let acked = acked.clone();
        async move { (acked.lock().await.len() >= 400).then_some(()) }
    })
    .await;
    store.child.kill9();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("writers stop once the server is gone")
            .unwrap();
    }
    let acked = acked.lock().await.clone();
    let max_rev = acked.iter().map(|a| a.2).max().unwrap();
    // Every acknowledged write had its own revision.
    let mut revs: Vec<i64> = acked.iter().map(|a| a.2).collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), acked.len());

    let store = start_store(dir.path(), None).await;
    let mut kv = client(&store.endpoint).await;
    for (key, value, rev) in &acked {
        let r = kv
            .range(RangeRequest {
                key: key.clone().into(),
                revision: *rev,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.kvs.len(), 1, "acknowledged write {key}@{rev} lost");
        assert_eq!(r.kvs[0].value, value.as_bytes(), "{key}@{rev}");
        assert_eq!(r.kvs[0].mod_revision, *rev, "{key}");
        assert!(r.header.unwrap().revision >= max_rev);
    }
    let next = put(&mut kv, "after-restart", "x").await;
    assert!(next > max_rev, "revision went back: {next} <= {max_rev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = start_store(dir.path(), None).await;
    let mut kv = client(&store.endpoint).await;
    let rev = put(&mut kv, "k", "v").await;
    assert_eq!(rev, 2, "a fresh store's first write is revision 2, as etcd");
    let status = store.child.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        store.child.log_text()
    );

    let store = start_store(dir.path(), None).await;
    let mut kv = client(&store.endpoint).await;
    let r = kv
        .range(RangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kvs[0].value, "v".as_bytes());
    assert_eq!(r.header.unwrap().revision, 2);
}
