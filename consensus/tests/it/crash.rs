//! `kill -9` of a one-member `lookout store` child process while many
//! writers are in flight. The state machine applies an entry while the
//! leader's own log fsync may still run and publishes it only once the
//! log is synced (see `sm.rs`): a reply or a watch event must therefore
//! never describe a write the restarted store lacks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lookout_proto::pb::{
    PutRequest, WatchCreateRequest, WatchRequest, watch_client::WatchClient, watch_request,
};
use lookout_testkit::cluster::Cluster;
use lookout_testkit::wait_for;
use tokio::sync::Mutex;

use crate::cluster::{channel, kv, program, written};

/// key -> (value, revision the put was acknowledged at).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_every_acknowledged_write_and_watched_event() {
    let mut c = Cluster::start(program(), 1, &[]).await;
    c.wait_leader(Duration::from_secs(30)).await;
    let ep = c.members[0].endpoint.clone();

    // A watcher from revision 1 on: every event it receives must be in
    // the store after the restart.
    let seen: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let watch = {
        let (seen, ep) = (seen.clone(), ep.clone());
        tokio::spawn(async move {
            let mut w = WatchClient::new(channel(&ep, Duration::from_secs(3600)).await);
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: "w".into(),
                        range_end: "x".into(),
                        start_revision: 1,
                        ..Default::default()
                    },
                )),
            })
            .await
            .unwrap();
            let Ok(resp) = w
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            else {
                return;
            };
            let mut stream = resp.into_inner();
            // Ends when the server dies (bounded by the kill below).
            while let Some(Ok(m)) = stream.next().await {
                let mut s = seen.lock().await;
                for e in m.events {
                    let kv = e.kv.unwrap();
                    s.insert(
                        String::from_utf8(kv.key.to_vec()).unwrap(),
                        (
                            String::from_utf8(kv.value.to_vec()).unwrap(),
                            kv.mod_revision,
                        ),
                    );
                }
            }
            drop(tx);
        })
    };

    // Sixteen writers, so the kill lands with batches being applied and
    // synced. Each key is written once.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut writers = Vec::new();
    for t in 0..16 {
        let (stop, acked, ep) = (stop.clone(), acked.clone(), ep.clone());
        writers.push(tokio::spawn(async move {
            let mut client = kv(&ep).await;
            // Bounded: stops when told or at the first failure (the kill).
            for n in 0..50_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{t:02}/{n:05}");
                let value = format!("v{t}-{n}");
                match client
                    .put(PutRequest {
                        key: key.clone().into(),
                        value: value.clone().into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => {
                        let rev = r.into_inner().header.unwrap().revision;
                        acked.lock().await.insert(key, (value, rev));
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    let a = acked.clone();
    wait_for("writes before the kill", Duration::from_secs(60), || {
        let a = a.clone();
        async move { (a.lock().await.len() >= 3000).then_some(()) }
    })
    .await;
    c.kill9(0);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .expect("the watch ends with the server")
        .unwrap();

    c.restart(0).await;
    c.wait_leader(Duration::from_secs(30)).await;
    let have = written(&ep).await;
    let mut client = kv(&ep).await;
    let acked = acked.lock().await.clone();
    let seen = seen.lock().await.clone();
    assert!(acked.len() >= 3000, "{} acknowledged", acked.len());
    for (k, v) in &acked {
        assert_eq!(have.get(k), Some(v), "acknowledged {k} lost or changed");
    }
    assert!(!seen.is_empty(), "the watcher saw events");
    for (k, v) in &seen {
        assert_eq!(have.get(k), Some(v), "watched event {k} not in the store");
    }
    // The revision counter continues after the highest acknowledged one.
    let top = acked.values().map(|(_, r)| *r).max().unwrap();
    let next = lookout_testkit::kv::put(&mut client, "after", "restart").await;
    assert!(next > top, "revision {next} after acknowledged {top}");
}
