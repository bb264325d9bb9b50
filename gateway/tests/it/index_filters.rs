//! Secondary indexes through the real gateway (gRPC with a raw tonic
//! client, HTTP with a real HTTP client) in front of an in-process
//! `lookout store`: filtered Range with every option, filtered Watch with
//! entries moving in and out, watch with initial state (several pages, the
//! marker, live events with no gap and no duplicate), and the errors.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use lookout_cache::{IndexDef, IndexSet};
use lookout_proto::mvccpb::{KeyValue, event::EventType};
use lookout_proto::pb::{
    PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse, kv_client::KvClient, range_request::SortOrder,
    range_request::SortTarget, request_op, watch_client::WatchClient, watch_request,
};
use tokio::sync::mpsc;

use crate::harness::{TestGateway, b, channel, config, put};
use crate::http_client::{Lines, TestStore, b64, call, post};

const PODS: &str = "/registry/pods/";

fn node_json(node: &str, pad: usize) -> String {
    format!(
        r#"{{"spec":{{"nodeName":"{node}"}},"pad":"{}"}}"#,
        "x".repeat(pad)
    )
}

/// A store and a gateway with `node` (JSON) and `ns` (key regex) indexes.
async fn stack(max_frame: usize, history_events: usize) -> (TestStore, TestGateway) {
    let store = TestStore::start().await;
    let mut cfg = config(&[&store.addr]);
    cfg.cache.indexes = IndexSet::new(vec![
        IndexDef::parse("node@/registry/=json:/spec/nodeName").unwrap(),
        IndexDef::parse("ns=key:^/registry/pods/([^/]+)/").unwrap(),
    ])
    .unwrap();
    cfg.cache.max_frame_bytes = max_frame;
    cfg.cache.history_events = history_events;
    let gw = TestGateway::start_with(cfg).await;
    (store, gw)
}

fn pods_range() -> (Bytes, Bytes) {
    (b(PODS), lookout_cache::prefix_end(PODS.as_bytes()).unwrap())
}

fn filtered(index: &str, value: &str) -> RangeRequest {
    let (key, range_end) = pods_range();
    RangeRequest {
        key,
        range_end,
        index: index.into(),
        value: b(value),
        ..Default::default()
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_range_with_every_option_and_the_errors() {
    // A short history: revision 1 falls out of it.
    let (_store, gw) = stack(1 << 20, 8).await;
    let mut kv = KvClient::new(channel(&gw.endpoint).await);
    // 3 namespaces x 6 pods over nodes n0..n2; one value is not JSON.
    for ns in ["a", "b", "c"] {
        for i in 0..6 {
            put(
                &mut kv,
                &format!("{PODS}{ns}/p{i}"),
                &node_json(&format!("n{}", i % 3), i),
            )
            .await;
        }
    }
    let before_move = put(&mut kv, &format!("{PODS}a/junk"), "not json").await;
    // a/p0 moves from n0 to n1 after `before_move`.
    let last = put(&mut kv, &format!("{PODS}a/p0"), &node_json("n1", 0)).await;

    let r = kv.range(filtered("node", "n1")).await.unwrap().into_inner();
    assert_eq!(
        keys(&r.kvs),
        [
            "/registry/pods/a/p0",
            "/registry/pods/a/p1",
            "/registry/pods/a/p4",
            "/registry/pods/b/p1",
            "/registry/pods/b/p4",
            "/registry/pods/c/p1",
            "/registry/pods/c/p4"
        ]
    );
    assert_eq!((r.count, r.more), (7, false));
    assert_eq!(r.header.unwrap().revision, last);

    // limit / more / count, keys_only, sort, count_only.
    let mut q = filtered("node", "n1");
    q.limit = 2;
    q.keys_only = true;
    let r = kv.range(q).await.unwrap().into_inner();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 7));
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let mut q = filtered("node", "n1");
    q.sort_order = SortOrder::Descend as i32;
    q.sort_target = SortTarget::Mod as i32;
    q.limit = 1;
    let r = kv.range(q).await.unwrap().into_inner();
    assert_eq!(keys(&r.kvs), ["/registry/pods/a/p0"], "newest mod first");
    let mut q = filtered("node", "n0");
    q.count_only = true;
    assert_eq!(kv.range(q).await.unwrap().into_inner().count, 5);

    // The key regex index, serializable.
    let mut q = filtered("ns", "b");
    q.serializable = true;
    assert_eq!(kv.range(q).await.unwrap().into_inner().count, 6);

    // A past revision the cache holds: rebuilt from its history (a/p0 was
    // still on n0 then).
    let mut q = filtered("node", "n0");
    q.revision = before_move;
    let r = kv.range(q).await.unwrap().into_inner();
    assert_eq!(r.count, 6);
    assert!(keys(&r.kvs).contains(&"/registry/pods/a/p0".to_string()));
    assert_eq!(r.header.unwrap().revision, last, "header says now, as etcd");
    // Older than the cache's history: a clear error, never unfiltered.
    let mut q = filtered("node", "n0");
    q.revision = 1;
    let e = kv.range(q).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("history"), "{}", e.message());
    let mut q = filtered("node", "n0");
    q.revision = last + 100;
    let e = kv.range(q).await.unwrap_err();
    assert!(e.message().contains("future revision"), "{}", e.message());

    // Errors: unknown index (names the known ones), outside the scope,
    // value without index.
    let e = kv.range(filtered("nodes", "n1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("known: node, ns"), "{}", e.message());
    let mut q = filtered("ns", "a");
    q.key = b("/registry/");
    q.range_end = lookout_cache::prefix_end(b"/registry/").unwrap();
    let e = kv.range(q).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("scope"), "{}", e.message());
    let e = kv.range(filtered("", "n1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Txn: read-only filtered ranges are served; with a write, refused (the
    // store would answer unfiltered).
    let op = RequestOp {
        request: Some(request_op::Request::RequestRange(filtered("node", "n2"))),
    };
    let r = kv
        .txn(TxnRequest {
            success: vec![op.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(lookout_proto::pb::response_op::Response::ResponseRange(rr)) =
        &r.responses[0].response
    else {
        panic!("range response");
    };
    assert_eq!(rr.count, 6);
    let put_op = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b("/x"),
            value: b("1"),
            ..Default::default()
        })),
    };
    let e = kv
        .txn(TxnRequest {
            success: vec![op, put_op.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("in a Txn"), "{}", e.message());
    // A filter that could never be served gets the plain Range's error,
    // even nested and beside a write.
    let unknown = RequestOp {
        request: Some(request_op::Request::RequestRange(filtered("nodes", "n1"))),
    };
    let nested = RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            failure: vec![unknown],
            ..Default::default()
        })),
    };
    let e = kv
        .txn(TxnRequest {
            success: vec![put_op, nested],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("known: node, ns"), "{}", e.message());
}

/// A raw gRPC watch stream (etcd's clients cannot set extension fields).
struct RawWatch {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl RawWatch {
    async fn open(endpoint: &str, create: WatchCreateRequest) -> Self {
        let (tx, rx) = mpsc::channel(8);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .unwrap();
        let mut client =
            WatchClient::new(channel(endpoint).await).max_decoding_message_size(usize::MAX);
        let rx = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        Self { tx, rx }
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    /// Responses until a stream-wide progress answer at `rev` or above.
    async fn until_progress(&mut self, rev: i64) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            self.tx
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(
                        WatchProgressRequest {},
                    )),
                })
                .await
                .unwrap();
            loop {
                let r = self.next().await;
                if r.watch_id == -1 && r.events.is_empty() && !r.created {
                    if r.header.as_ref().unwrap().revision >= rev {
                        return out;
                    }
                    break;
                }
                out.push(r);
            }
        }
        panic!("no progress at {rev}");
    }
}

fn brief(resps: &[WatchResponse]) -> Vec<(String, String, i64, Option<String>)> {
    resps
        .iter()
        .flat_map(|r| r.events.iter())
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                if e.r#type == EventType::Delete as i32 {
                    "DELETE".to_string()
                } else {
                    "PUT".to_string()
                },
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_watch_sees_entries_move_in_and_out() {
    let (_store, gw) = stack(1 << 20, 100_000).await;
    let mut kv = KvClient::new(channel(&gw.endpoint).await);
    let (key, range_end) = pods_range();
    let create = WatchCreateRequest {
        key,
        range_end,
        prev_kv: true,
        index: "node".into(),
        value: b("n1"),
        ..Default::default()
    };
    let mut w = RawWatch::open(&gw.endpoint, create.clone()).await;
    assert!(w.next().await.created);
    let k = format!("{PODS}a/web");
    let (n1, n2) = (node_json("n1", 0), node_json("n2", 0));
    let r1 = put(&mut kv, &k, &n1).await; // starts matching: PUT
    let r2 = put(&mut kv, &k, &n2).await; // stops matching: DELETE, prev n1
    put(&mut kv, &k, &node_json("n2", 1)).await; // elsewhere: nothing
    let r4 = put(&mut kv, &k, &n1).await; // back: PUT
    put(&mut kv, &format!("{PODS}b/other"), &n2).await; // nothing
    put(&mut kv, "/elsewhere/x", &n1).await; // out of range: nothing
    let r7 = kv
        .delete_range(lookout_proto::pb::DeleteRangeRequest {
            key: b(&k),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision; // deleted while matching: DELETE, prev n1
    let got = w.until_progress(r7).await;
    let want = vec![
        ("PUT".to_string(), k.clone(), r1, None),
        ("DELETE".to_string(), k.clone(), r2, Some(n1.clone())),
        ("PUT".to_string(), k.clone(), r4, Some(node_json("n2", 1))),
        ("DELETE".to_string(), k.clone(), r7, Some(n1.clone())),
    ];
    assert_eq!(brief(&got), want);

    // Resume from a past revision replays the same filtered history.
    let mut again = create.clone();
    again.start_revision = r1;
    let mut w2 = RawWatch::open(&gw.endpoint, again).await;
    assert!(w2.next().await.created);
    assert_eq!(brief(&w2.until_progress(r7).await), want);

    // Errors arrive as etcd answers a create it cannot serve.
    let mut bad = create.clone();
    bad.index = "nope".into();
    let mut w3 = RawWatch::open(&gw.endpoint, bad).await;
    let r = w3.next().await;
    assert!(r.created && r.canceled, "{r:?}");
    assert!(r.cancel_reason.contains("known: node, ns"), "{r:?}");

    // An initial state with a start revision the gateway has passed: the
    // current state (never older than start - 1), then the marker.
    let mut since = create;
    since.initial_state = true;
    since.start_revision = r1 + 1;
    let mut w4 = RawWatch::open(&gw.endpoint, since).await;
    let c = w4.next().await;
    assert!(c.created && !c.canceled, "{c:?}");
    let r = c.header.unwrap().revision;
    assert!(r >= r7, "state at {r}, not older than the client's {r1}");
    let mut held = Vec::new();
    loop {
        let resp = w4.next().await;
        assert!(!resp.canceled, "{resp:?}");
        if resp.events.is_empty() {
            assert_eq!(resp.header.unwrap().revision, r, "the marker at R");
            break;
        }
        held.extend(resp.events.into_iter().map(|e| e.kv.unwrap().key));
    }
    let mut at_r = filtered("node", "n1");
    at_r.revision = r;
    let listed = kv.range(at_r).await.unwrap().into_inner();
    let want: Vec<Bytes> = listed.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(held, want, "the initial state is the filtered list at R");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_state_pages_then_marker_then_live_without_gap() {
    // Small frames: the initial state takes many responses and passes.
    let (_store, gw) = stack(2048, 100_000).await;
    let mut kv = KvClient::new(channel(&gw.endpoint).await);
    for i in 0..300 {
        let node = if i % 2 == 0 { "n1" } else { "n0" };
        put(&mut kv, &format!("{PODS}ns/p{i:03}"), &node_json(node, 150)).await;
    }
    let (key, range_end) = pods_range();
    let create = WatchCreateRequest {
        key,
        range_end,
        index: "node".into(),
        value: b("n1"),
        initial_state: true,
        ..Default::default()
    };
    // Writes keep going while the initial state streams.
    let writer_ep = gw.endpoint.clone();
    let writer = tokio::spawn(async move {
        let mut kv = KvClient::new(channel(&writer_ep).await);
        let mut last = 0;
        for i in 0..60 {
            let node = ["n0", "n1"][i % 2];
            last = put(
                &mut kv,
                &format!("{PODS}ns/p{:03}", i * 7 % 300),
                &node_json(node, 9),
            )
            .await;
        }
        last
    });
    let mut w = RawWatch::open(&gw.endpoint, create).await;
    let created = w.next().await;
    assert!(created.created);
    let r = created.header.unwrap().revision;
    let mut state: BTreeMap<Bytes, KeyValue> = BTreeMap::new();
    let mut pages = 0;
    loop {
        let resp = w.next().await;
        assert!(!resp.canceled, "{resp:?}");
        assert_eq!(resp.header.as_ref().unwrap().revision, r, "pages at R");
        if resp.events.is_empty() {
            break; // the marker
        }
        pages += 1;
        for e in resp.events {
            assert_eq!(e.r#type, EventType::Put as i32);
            let kv = e.kv.unwrap();
            assert!(kv.mod_revision <= r);
            assert!(state.insert(kv.key.clone(), kv).is_none(), "no duplicate");
        }
    }
    assert!(pages > 1, "the initial state came in {pages} page(s)");
    // The initial state is exactly the filtered list at R.
    let mut at_r = filtered("node", "n1");
    at_r.revision = r;
    let listed = kv.range(at_r).await.unwrap().into_inner();
    assert_eq!(
        state.values().cloned().collect::<Vec<_>>(),
        listed.kvs,
        "initial state = filtered list at R"
    );
    let last = writer.await.unwrap();
    let live = w.until_progress(last).await;
    for resp in &live {
        for e in &resp.events {
            let kv = e.kv.clone().unwrap();
            assert!(kv.mod_revision > r, "live events start after R");
            if e.r#type == EventType::Delete as i32 {
                assert!(state.remove(&kv.key).is_some(), "delete of a held entry");
            } else {
                state.insert(kv.key.clone(), kv);
            }
        }
    }
    let now = kv.range(filtered("node", "n1")).await.unwrap().into_inner();
    assert_eq!(
        state.into_values().collect::<Vec<_>>(),
        now.kvs,
        "initial state + live events = the filtered list now (no gap)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_filters_initial_state_and_errors() {
    let (_store, gw) = stack(1 << 20, 100_000).await;
    let a = gw.endpoint.as_str();
    for i in 0..6 {
        let node = format!("n{}", i % 2);
        let r = call(
            a,
            "PUT",
            &format!("/v1/kv//registry/pods/ns/p{i}"),
            &[],
            node_json(&node, 0),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let r = call(
        a,
        "GET",
        "/v1/kv//registry/pods/?prefix=true&index=node&value=n1",
        &[],
        "",
    )
    .await;
    let j = r.json();
    assert_eq!(j["count"], 3, "{j}");
    assert_eq!(j["kvs"][0]["key"], "/registry/pods/ns/p1");

    // /v3 JSON takes the extension fields by their proto names.
    let body = format!(
        r#"{{"key":"{}","range_end":"{}","index":"node","value":"{}","count_only":true}}"#,
        b64(PODS),
        b64("/registry/pods0"),
        b64("n0")
    );
    let r = post(a, "/v3/kv/range", &body).await;
    assert_eq!(r.json()["count"], "3", "{}", r.text());

    // Errors: a 400 with the reason, before any stream.
    let r = call(
        a,
        "GET",
        "/v1/kv//registry/pods/?prefix=true&index=zone&value=x",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("known: node, ns")
    );
    let r = call(
        a,
        "GET",
        "/v1/watch//registry/pods/?prefix=true&value=x",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = call(
        a,
        "GET",
        "/v1/watch//registry/?prefix=true&index=ns&value=x",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("scope"), "{}", r.text());

    // NDJSON: initial PUTs, SYNCED at R, then live moves in and out.
    let mut w = Lines::open(
        a,
        "GET",
        "/v1/watch//registry/pods/?prefix=true&index=node&value=n1&initial=true",
        &[],
        "",
    )
    .await;
    assert_eq!(w.status, 200);
    assert_eq!(w.next_json().await["type"], "CREATED");
    let mut initial = Vec::new();
    let synced = loop {
        let j = w.next_json().await;
        match j["type"].as_str() {
            Some("PUT") => initial.push(j["key"].as_str().unwrap().to_string()),
            Some("SYNCED") => break j["revision"].as_i64().unwrap(),
            other => panic!("unexpected {other:?}: {j}"),
        }
    };
    assert_eq!(
        initial,
        [
            "/registry/pods/ns/p1",
            "/registry/pods/ns/p3",
            "/registry/pods/ns/p5"
        ]
    );
    let r = call(
        a,
        "PUT",
        "/v1/kv//registry/pods/ns/p1",
        &[],
        node_json("n0", 0),
    )
    .await;
    let moved = r.json()["revision"].as_i64().unwrap();
    assert!(moved > synced);
    let j = w.next_json().await;
    assert_eq!(
        (
            j["type"].as_str(),
            j["key"].as_str(),
            j["mod_revision"].as_i64()
        ),
        (Some("DELETE"), Some("/registry/pods/ns/p1"), Some(moved))
    );
    call(
        a,
        "PUT",
        "/v1/kv//registry/pods/ns/p0",
        &[],
        node_json("n1", 0),
    )
    .await;
    let j = w.next_json().await;
    assert_eq!(
        (j["type"].as_str(), j["key"].as_str()),
        (Some("PUT"), Some("/registry/pods/ns/p0"))
    );

    // SSE: initial events carry no id (resuming from one would skip
    // entries); SYNCED carries R.
    let mut s = Lines::open(
        a,
        "GET",
        "/v1/watch//registry/pods/?prefix=true&index=node&value=n1&initial=true",
        &[("accept", "text/event-stream")],
        "",
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let (id, data) = s.next_sse().await.expect("open");
        if data["type"] == "SYNCED" {
            assert_eq!(id, data["revision"].as_i64());
            assert!(ids.iter().all(Option::is_none), "{ids:?}");
            return;
        }
        if data["type"] == "PUT" {
            ids.push(id);
        }
    }
    panic!("no SYNCED line");
}
