//! Watch semantics over gRPC: history then live with no gap and no
//! duplicate, slow consumers, filters, progress, fragments, cancel.

use std::time::Duration;

use lookout_proto::mvccpb::event::EventType;
use lookout_proto::pb::{
    CompactionRequest, DeleteRangeRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request::RequestUnion,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::support::{Clients, TestServer, connect, prefix_end, put};

pub struct WatchStream {
    pub tx: mpsc::Sender<WatchRequest>,
    pub rx: Streaming<WatchResponse>,
}

impl WatchStream {
    /// Opens a stream with its first watch. The first request goes out
    /// before we wait for the response headers: etcd (grpc-go) sends its
    /// headers only with the first response.
    pub async fn open(c: &mut Clients, first: WatchCreateRequest) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(first)),
        })
        .await
        .unwrap();
        let rx = c
            .watch
            .watch(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    pub async fn create(&self, req: WatchCreateRequest) {
        self.tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(req)),
            })
            .await
            .unwrap();
    }

    pub async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("watch response within 20s")
            .unwrap()
            .expect("stream open")
    }
}

pub fn prefix_watch(prefix: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: prefix.to_string().into(),
        range_end: prefix_end(prefix),
        start_revision: start,
        ..Default::default()
    }
}

/// Reads events until `n` arrived; returns their mod revisions.
async fn collect_revs(w: &mut WatchStream, n: usize) -> Vec<i64> {
    let mut revs = Vec::new();
    while revs.len() < n {
        let r = w.next().await;
        assert!(!r.canceled, "unexpected cancel: {r:?}");
        revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    revs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_live_without_gap_or_duplicate() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    for i in 0..300 {
        c.kv.put(put(&format!("w/{i}"), "v")).await.unwrap(); // revs 2..=301
    }
    // More writes race with the watch's switch from history to live.
    let mut cw = c.clone();
    let writer = tokio::spawn(async move {
        for i in 0..300 {
            cw.kv.put(put(&format!("w/{i}"), "v2")).await.unwrap(); // 302..=601
        }
    });
    let mut w = WatchStream::open(&mut c, prefix_watch("w/", 2)).await;
    assert!(w.next().await.created);
    let revs = collect_revs(&mut w, 600).await;
    writer.await.unwrap();
    assert_eq!(revs, (2..=601).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_catches_up_from_history_and_loses_nothing() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    let mut w = WatchStream::open(&mut c, prefix_watch("s/", 0)).await;
    assert!(w.next().await.created);
    // 16 concurrent writers, 3000 revisions, while nobody reads the watch:
    // the hub's buffer (1024 revisions) overflows.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut cw = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..3000 / 16 + 1 {
                cw.kv
                    .put(put(&format!("s/{t}/{i}"), &"x".repeat(100)))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 16 * (3000 / 16 + 1);
    let revs = collect_revs(&mut w, total).await;
    assert_eq!(revs, (2..2 + total as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn compacted_start_is_created_then_cancelled() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    for i in 0..5 {
        c.kv.put(put("c", &i.to_string())).await.unwrap(); // 2..=6
    }
    c.kv.compact(CompactionRequest {
        revision: 5,
        physical: true,
    })
    .await
    .unwrap();
    let mut w = WatchStream::open(&mut c, prefix_watch("c", 3)).await;
    let created = w.next().await;
    assert!(created.created && !created.canceled);
    let cancel = w.next().await;
    assert!(cancel.canceled);
    assert_eq!(
        (cancel.watch_id, cancel.compact_revision),
        (created.watch_id, 5)
    );
    // At the compaction revision itself the watch works.
    w.create(prefix_watch("c", 5)).await;
    assert!(w.next().await.created);
    assert_eq!(collect_revs(&mut w, 2).await, vec![5, 6]);
}

#[tokio::test]
async fn filters_prev_kv_ids_cancel_and_progress() {
    let srv =
        TestServer::start_with(|c| c.progress_notify_interval = Duration::from_millis(200)).await;
    let mut c = connect(&srv.endpoint).await;
    c.kv.put(put("f/a", "1")).await.unwrap(); // 2
    let mut w = WatchStream::open(
        &mut c,
        WatchCreateRequest {
            watch_id: 7,
            prev_kv: true,
            filters: vec![FilterType::Noput as i32],
            ..prefix_watch("f/", 0)
        },
    )
    .await;
    let r = w.next().await;
    assert!(r.created);
    assert_eq!(r.watch_id, 7);
    // Same ID again: refused as etcd does.
    w.create(WatchCreateRequest {
        watch_id: 7,
        ..prefix_watch("f/", 0)
    })
    .await;
    let dup = w.next().await;
    assert!(dup.created && dup.canceled);
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // Server-assigned IDs start at 0.
    w.create(WatchCreateRequest {
        progress_notify: true,
        ..prefix_watch("p/", 0)
    })
    .await;
    let auto = w.next().await;
    assert_eq!((auto.created, auto.watch_id), (true, 0));

    c.kv.put(put("f/a", "2")).await.unwrap(); // 3: filtered out (NOPUT)
    c.kv.delete_range(DeleteRangeRequest {
        key: "f/a".into(),
        ..Default::default()
    })
    .await
    .unwrap(); // 4
    // Progress notifications for the idle watcher 0 may interleave.
    let del = loop {
        let r = w.next().await;
        if r.watch_id == 7 {
            break r;
        }
        assert!(r.events.is_empty() && r.watch_id == 0, "{r:?}");
    };
    assert_eq!(del.events.len(), 1);
    let ev = &del.events[0];
    assert_eq!(ev.r#type, EventType::Delete as i32);
    assert_eq!(ev.kv.as_ref().unwrap().mod_revision, 4);
    assert_eq!(ev.prev_kv.as_ref().unwrap().value, "2".as_bytes());

    // An idle progress_notify watcher hears the current revision.
    let p = loop {
        let r = w.next().await;
        if r.watch_id == 0 && r.header.as_ref().unwrap().revision == 4 {
            break r;
        }
    };
    assert!(p.events.is_empty());

    // RequestProgress: watch_id -1 and the current revision (etcd 3.4).
    w.tx.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    })
    .await
    .unwrap();
    let p = loop {
        let r = w.next().await;
        if r.watch_id == -1 {
            break r;
        }
    };
    assert_eq!(p.header.unwrap().revision, 4);

    w.tx.send(WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 7,
        })),
    })
    .await
    .unwrap();
    loop {
        let r = w.next().await;
        if r.watch_id == 7 {
            assert!(r.canceled);
            break;
        }
    }
}

#[tokio::test]
async fn large_revisions_are_fragmented_on_request() {
    let srv = TestServer::start_with(|c| c.max_request_bytes = 2048).await;
    let mut c = connect(&srv.endpoint).await;
    for i in 0..40 {
        c.kv.put(put(&format!("g/{i:02}"), &"x".repeat(100)))
            .await
            .unwrap();
    }
    let mut w = WatchStream::open(
        &mut c,
        WatchCreateRequest {
            fragment: true,
            prev_kv: true,
            ..prefix_watch("g/", 0)
        },
    )
    .await;
    assert!(w.next().await.created);
    let r =
        c.kv.delete_range(DeleteRangeRequest {
            key: "g/".into(),
            range_end: prefix_end("g/"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 40);
    let mut parts = 0;
    let mut events = 0;
    loop {
        let r = w.next().await;
        parts += 1;
        events += r.events.len();
        if !r.fragment {
            break;
        }
    }
    assert_eq!(events, 40);
    assert!(
        parts > 1,
        "40 deletes with prev_kv exceed 2 KiB and must be split"
    );
}
