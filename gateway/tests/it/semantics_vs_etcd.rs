//! The same requests to a real etcd 3.4, to `lookout store`, and to a
//! gateway in front of each, in one test; every answer is compared with
//! etcd's field by field (only the cluster, member and term ids of the
//! outer header differ by nature):
//!
//! - Range over keys with many ties under every sort target and order
//!   (current and historic revisions, limits, revision filters, keys/count
//!   only), answered by the cache, the store's memory and its redb history;
//! - txn semantics: nested compares read the state before the txn, a
//!   nested txn's header is empty, a txn put is checked for its previous
//!   pair before its lease, compares with unknown targets and results;
//! - watch answers: a duplicate watch id and an empty range (with etcd's
//!   `cancel_reason`), and the responses replaying history (header
//!   revision, batching past 1,000 revisions);
//! - the Cluster API's member list.
//!
//! ```text
//!   etcd 3.4 ─────────────┬── gateway (cache) ── test client
//!   lookout store ────────┴── gateway (cache) ── test client
//!   identical writes to both stores, so revisions line up
//! ```

use bytes::Bytes;
use lookout_proto::pb::{
    CompactionRequest, Compare, DeleteRangeRequest, MemberListRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, WatchCancelRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
    cluster_client::ClusterClient,
    compare,
    kv_client::KvClient,
    range_request::{SortOrder, SortTarget},
    request_op, response_op,
    watch_client::WatchClient,
    watch_request,
};
use lookout_testkit::{EtcdServer, LookoutProcess};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::harness::*;
use crate::support::start_store;

/// A real etcd, a `lookout store`, and two gateways in front of each: one
/// whose history ring holds every write of the test, and one whose ring
/// holds 8 events (history older than that comes from its store).
struct Rig {
    etcd: EtcdServer,
    store: LookoutProcess,
    gw_etcd: TestGateway,
    gw_store: TestGateway,
    small_ring: [TestGateway; 2],
    _dir: tempfile::TempDir,
}

/// Gateway settings with a ring of 8 events.
fn small_ring(endpoint: &str) -> lookout_gateway::GatewayConfig {
    let mut c = config(&[endpoint]);
    c.cache.history_events = 8;
    c
}

impl Rig {
    /// Starts all six; the gateways list the (empty) stores first, so the
    /// large rings hold every later write.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (etcd, store) = tokio::join!(EtcdServer::start(), start_store(dir.path(), None));
        let (e, s) = ([etcd.endpoint.as_str()], [store.endpoint.as_str()]);
        let (gw_etcd, gw_store, small_etcd, small_store) = tokio::join!(
            TestGateway::start(&e),
            TestGateway::start(&s),
            TestGateway::start_with(small_ring(&etcd.endpoint)),
            TestGateway::start_with(small_ring(&store.endpoint)),
        );
        Self {
            etcd,
            store,
            gw_etcd,
            gw_store,
            small_ring: [small_etcd, small_store],
            _dir: dir,
        }
    }

    /// (name, endpoint), etcd first: the reference every other answer is
    /// compared with.
    fn targets(&self) -> Vec<(&'static str, String)> {
        vec![
            ("etcd", self.etcd.endpoint.clone()),
            ("store", self.store.endpoint.clone()),
            ("gateway over etcd", self.gw_etcd.endpoint.clone()),
            ("gateway over store", self.gw_store.endpoint.clone()),
            (
                "gateway over etcd, small ring",
                self.small_ring[0].endpoint.clone(),
            ),
            (
                "gateway over store, small ring",
                self.small_ring[1].endpoint.clone(),
            ),
        ]
    }

    /// KV clients of the two stores, for writing the same history to both.
    async fn stores(&self) -> [KvClient<Channel>; 2] {
        [
            kv(&self.etcd.endpoint).await,
            kv(&self.store.endpoint).await,
        ]
    }

    /// Waits until every gateway's cache has applied `rev` (a
    /// linearizable read waits for the store's current revision).
    async fn sync_gateways(&self, rev: i64) {
        for (_, ep) in self.targets().iter().skip(2) {
            let r = kv(ep)
                .await
                .range(RangeRequest {
                    key: b("\0"),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r.header.unwrap().revision >= rev, "{ep} behind {rev}");
        }
    }
}

/// The outer header's ids differ between servers by nature; the revision
/// does not.
fn strip(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>, fix: impl FnOnce(&mut T)) -> String
where
    T: std::fmt::Debug,
{
    match r {
        Ok(r) => {
            let mut r = r.into_inner();
            fix(&mut r);
            format!("{r:?}")
        }
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn range_outcome(r: Result<tonic::Response<RangeResponse>, tonic::Status>) -> String {
    outcome(r, |r| strip(&mut r.header))
}

fn txn_outcome(r: Result<tonic::Response<TxnResponse>, tonic::Status>) -> String {
    outcome(r, |r| strip(&mut r.header))
}

/// Three distinct values, so a value sort has long runs of ties.
fn val(i: usize) -> &'static str {
    ["x", "yy", "x0"][i * 7 % 3]
}

/// 44 keys under `/t/`: 16 written by one txn (equal create and mod
/// revisions), 28 one by one with versions 1 to 3, then some changes after
/// `mid` (so a read at `mid` differs from a current one). Returns (mid,
/// end) revisions.
async fn tie_workload(kv: &mut KvClient<Channel>) -> (i64, i64) {
    let ops = (0..16)
        .map(|i| put_op(&format!("/t/a{i:02}"), val(i)))
        .collect();
    txn(kv, ops).await;
    for i in 0..28 {
        put(kv, &format!("/t/b{i:02}"), val(i)).await;
    }
    for i in (0..28).step_by(3) {
        put(kv, &format!("/t/b{i:02}"), val(i + 1)).await;
    }
    let mut mid = 0;
    for i in (0..28).step_by(6) {
        mid = put(kv, &format!("/t/b{i:02}"), val(i + 2)).await;
    }
    for i in (0..16).step_by(4) {
        put(kv, &format!("/t/a{i:02}"), val(i + 1)).await;
    }
    kv.delete_range(DeleteRangeRequest {
        key: b("/t/b05"),
        ..Default::default()
    })
    .await
    .unwrap();
    let end = put(kv, "/t/b05", val(0)).await;
    (mid, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorted_ranges_with_ties_match_etcd() {
    let rig = Rig::start().await;
    let [mut e, mut s] = rig.stores().await;
    let (mid, end) = tie_workload(&mut e).await;
    assert_eq!(tie_workload(&mut s).await, (mid, end), "same history");
    rig.sync_gateways(end).await;

    let base = RangeRequest {
        key: b("/t/"),
        range_end: b("/t0"),
        ..Default::default()
    };
    let mut cases = Vec::new();
    for target in [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ] {
        // 7: an order etcd 3.4 does not know (it then sorts nothing).
        for order in [
            SortOrder::None as i32,
            SortOrder::Ascend as i32,
            SortOrder::Descend as i32,
            7,
        ] {
            let r = RangeRequest {
                sort_target: target as i32,
                sort_order: order,
                ..base.clone()
            };
            let name = format!("{target:?}/{order}");
            cases.push((format!("{name} all"), r.clone()));
            cases.push((
                format!("{name} limit 10"),
                RangeRequest {
                    limit: 10,
                    ..r.clone()
                },
            ));
            cases.push((
                format!("{name} serializable"),
                RangeRequest {
                    serializable: true,
                    ..r.clone()
                },
            ));
            cases.push((
                format!("{name} keys only, limit 5"),
                RangeRequest {
                    keys_only: true,
                    limit: 5,
                    ..r.clone()
                },
            ));
            cases.push((
                format!("{name} revision filters"),
                RangeRequest {
                    min_mod_revision: 10,
                    max_create_revision: mid,
                    limit: 12,
                    ..r.clone()
                },
            ));
            cases.push((
                format!("{name} at {mid}"),
                RangeRequest {
                    revision: mid,
                    ..r.clone()
                },
            ));
            cases.push((
                format!("{name} at {mid}, limit 7"),
                RangeRequest {
                    revision: mid,
                    limit: 7,
                    ..r.clone()
                },
            ));
            cases.push((
                format!("{name} count only"),
                RangeRequest {
                    count_only: true,
                    limit: 3,
                    ..r.clone()
                },
            ));
        }
    }
    cases.push((
        "whole keyspace by value, descending".into(),
        RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            ..Default::default()
        },
    ));

    let mut clients = Vec::new();
    for (name, ep) in rig.targets() {
        clients.push((name, kv(&ep).await));
    }
    let mut checked = 0;
    for (case, req) in &cases {
        let mut want = None;
        for (name, c) in clients.iter_mut() {
            let got = range_outcome(c.range(req.clone()).await);
            match &want {
                None => {
                    assert!(got.contains("kvs"), "{case}: etcd answered {got}");
                    want = Some(got);
                }
                Some(w) => assert_eq!(&got, w, "{case}: {name} differs from etcd"),
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 5 * 4 * 8 + 1);
    assert_eq!(clients.len(), 6);

    // An unknown sort target crashes etcd 3.4; everything of ours answers
    // as etcd 3.5 does, the store included.
    for (name, c) in clients.iter_mut().skip(1) {
        let e = c
            .range(RangeRequest {
                sort_target: 9,
                ..base.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: invalid sort option"
            ),
            "{name}"
        );
    }
}

fn range_op(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: b(key),
            range_end: b(end),
            ..Default::default()
        })),
    }
}

fn txn_op(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(t)),
    }
}

fn version_is(key: &str, v: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Version as i32,
        key: b(key),
        target_union: Some(compare::TargetUnion::Version(v)),
        range_end: Bytes::new(),
    }
}

/// Txns probing what etcd decides inside a txn, under `p` (a prefix of
/// its own per pair of targets, so both pairs write the same history).
fn txn_probes(p: &str, now: i64) -> Vec<(&'static str, TxnRequest)> {
    let k = |s: &str| format!("{p}{s}");
    vec![
        (
            "a nested compare reads the state before the txn",
            TxnRequest {
                success: vec![
                    put_op(&k("n"), "x"),
                    txn_op(TxnRequest {
                        compare: vec![version_is(&k("n"), 0)],
                        success: vec![range_op(&k("n"), "")],
                        failure: vec![range_op(&k("k"), "")],
                    }),
                    range_op(&k(""), &k("\u{7f}")),
                ],
                ..Default::default()
            },
        ),
        (
            "nested read-only txns have empty headers",
            TxnRequest {
                compare: vec![version_is(&k("k"), 1)],
                success: vec![txn_op(TxnRequest {
                    success: vec![
                        range_op(&k("k"), ""),
                        txn_op(TxnRequest {
                            success: vec![range_op(&k("n"), "")],
                            ..Default::default()
                        }),
                    ],
                    ..Default::default()
                })],
                failure: vec![],
            },
        ),
        (
            "a txn put is checked for its previous pair before its lease",
            TxnRequest {
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b(&k("missing")),
                        ignore_value: true,
                        lease: 0x1234_5678,
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            },
        ),
        (
            "only the branches that run are checked",
            TxnRequest {
                success: vec![txn_op(TxnRequest {
                    compare: vec![version_is(&k("k"), 1)],
                    success: vec![put_op(&k("y"), "1")],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: b(&k("k")),
                            revision: now + 1000,
                            ..Default::default()
                        })),
                    }],
                })],
                ..Default::default()
            },
        ),
        (
            "a branch that runs is checked",
            TxnRequest {
                compare: vec![version_is(&k("k"), 7)],
                failure: vec![
                    put_op(&k("never"), "1"),
                    RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: b(&k("k")),
                            revision: now + 1000,
                            ..Default::default()
                        })),
                    },
                ],
                ..Default::default()
            },
        ),
        (
            "unknown compare target and result",
            TxnRequest {
                compare: vec![
                    Compare {
                        target: 9,
                        ..version_is(&k("k"), 5)
                    },
                    Compare {
                        result: 9,
                        ..version_is(&k("k"), 5)
                    },
                ],
                success: vec![put_op(&k("u"), "1")],
                failure: vec![put_op(&k("u"), "0")],
            },
        ),
        (
            "a nested txn deletes what the outer one wrote",
            TxnRequest {
                success: vec![
                    put_op(&k("d1"), "1"),
                    txn_op(TxnRequest {
                        compare: vec![version_is(&k("d1"), 0)],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestDeleteRange(
                                DeleteRangeRequest {
                                    key: b(&k("d")),
                                    range_end: b(&k("e")),
                                    prev_kv: true,
                                },
                            )),
                        }],
                        failure: vec![],
                    }),
                ],
                ..Default::default()
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_semantics_match_etcd() {
    let rig = Rig::start().await;
    let t = rig.targets();
    // Two pairs, each (etcd, ours), each writing under its own prefix; all
    // four writes go to both stores, so revisions stay equal.
    for (pair, p) in [((0, 1), "/x/"), ((2, 3), "/y/")] {
        let mut e = kv(&t[pair.0].1).await;
        let mut o = kv(&t[pair.1].1).await;
        let now = put(&mut e, &format!("{p}k"), "1").await;
        assert_eq!(put(&mut o, &format!("{p}k"), "1").await, now);
        for (what, req) in txn_probes(p, now) {
            let want = txn_outcome(e.txn(req.clone()).await);
            let got = txn_outcome(o.txn(req).await);
            assert_eq!(
                got, want,
                "{what}: {} differs from {}",
                t[pair.1].0, t[pair.0].0
            );
        }
        // The nested answers carry an empty header, as etcd's.
        let r = o
            .txn(txn_probes(p, now).swap_remove(1).1)
            .await
            .unwrap()
            .into_inner();
        let Some(response_op::Response::ResponseTxn(nested)) = &r.responses[0].response else {
            panic!("nested response expected: {r:?}");
        };
        assert_eq!(nested.header, Some(ResponseHeader::default()));
    }
}

/// A raw Watch stream: requests in, responses out, bounded waits.
struct RawWatch {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl RawWatch {
    /// Opens the stream with its first create already sent: etcd answers
    /// the call (sends its headers) only with its first response.
    async fn open(endpoint: &str, first: WatchCreateRequest) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(first)),
        })
        .await
        .unwrap();
        let rx = WatchClient::new(channel(endpoint).await)
            .max_decoding_message_size(64 << 20)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn create(&self, c: WatchCreateRequest) {
        self.send(watch_request::RequestUnion::CreateRequest(c))
            .await;
    }

    async fn send(&self, r: watch_request::RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a watch response in time")
            .expect("stream open")
            .expect("stream not ended")
    }

    /// Responses until they carried `n` events in all (or a cancel).
    async fn until_events(&mut self, n: usize) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < n {
            let r = self.next().await;
            seen += r.events.len();
            let canceled = r.canceled;
            out.push(r);
            if canceled {
                break;
            }
        }
        out
    }

    /// Responses until one carries an event at `rev` (or a cancel).
    async fn until(&mut self, rev: i64) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        loop {
            let r = self.next().await;
            let done = r.canceled
                || r.events
                    .last()
                    .and_then(|e| e.kv.as_ref())
                    .is_some_and(|kv| kv.mod_revision >= rev);
            out.push(r);
            if done {
                return out;
            }
        }
    }
}

/// What a client can tell apart in a watch response.
fn describe(mut r: WatchResponse) -> String {
    strip(&mut r.header);
    format!(
        "id {} created {} canceled {} reason {:?} compact {} rev {} events {:?}",
        r.watch_id,
        r.created,
        r.canceled,
        r.cancel_reason,
        r.compact_revision,
        r.header.map_or(0, |h| h.revision),
        r.events
            .iter()
            .map(|e| {
                let kv = e.kv.clone().unwrap_or_default();
                format!(
                    "{}:{}@{}={}{}",
                    e.r#type,
                    String::from_utf8_lossy(&kv.key),
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.value),
                    e.prev_kv.as_ref().map_or(String::new(), |p| format!(
                        " (was {}@{})",
                        String::from_utf8_lossy(&p.value),
                        p.mod_revision
                    ))
                )
            })
            .collect::<Vec<_>>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_answers_match_etcd() {
    let rig = Rig::start().await;
    let [mut e, mut s] = rig.stores().await;
    let (_, end) = tie_workload(&mut e).await;
    assert_eq!(tie_workload(&mut s).await.1, end);
    rig.sync_gateways(end).await;

    // Per target: every response as it came, and the same with each
    // replay merged into one response (the events in order, the last
    // header), which is what a gateway with a small ring must match: it
    // hands a replay over from an upstream watch to its ring, which cuts
    // the replay into two responses where etcd sends one.
    let mut want: Option<(Vec<String>, Vec<String>)> = None;
    for (name, ep) in rig.targets() {
        // A client-chosen id, the same id again, an empty range.
        let mut w = RawWatch::open(
            &ep,
            WatchCreateRequest {
                watch_id: 7,
                ..prefix_watch("/t/", 0)
            },
        )
        .await;
        let mut exact = Vec::new();
        let mut merged = Vec::new();
        w.create(WatchCreateRequest {
            watch_id: 7,
            ..prefix_watch("/t/a", 0)
        })
        .await;
        w.create(WatchCreateRequest {
            key: b("b"),
            range_end: b("a"),
            ..Default::default()
        })
        .await;
        for _ in 0..3 {
            exact.push(describe(w.next().await));
        }
        w.send(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id: 7 },
        ))
        .await;
        exact.push(describe(w.next().await));
        merged.extend(exact.iter().cloned());
        // History from revision 2 with previous values, then from the
        // middle of the history for the b keys only: the created answer,
        // then the replay (its header is the store's revision, as etcd's).
        for (id, p, start, prev_kv) in [(1, "/t/", 2, true), (2, "/t/b", end - 6, false)] {
            w.create(WatchCreateRequest {
                prev_kv,
                watch_id: id,
                ..prefix_watch(p, start)
            })
            .await;
            let created = describe(w.next().await);
            exact.push(created.clone());
            merged.push(created);
            let replay = w.until(end).await;
            exact.extend(replay.iter().cloned().map(describe));
            merged.push(describe(merge(replay)));
        }
        match &want {
            None => want = Some((exact, merged)),
            Some((want_exact, want_merged)) => {
                let (got, want) = if name.contains("small ring") {
                    (&merged, want_merged)
                } else {
                    (&exact, want_exact)
                };
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert_eq!(g, w, "{name}: response {i} differs from etcd's");
                }
                assert_eq!(got.len(), want.len(), "{name}: {got:#?}");
            }
        }
    }
    let (want, _) = want.unwrap();
    assert!(
        want[1].contains("duplicate watch ID") && want[2].contains("watcher range is empty"),
        "{want:#?}"
    );
}

/// Responses of one watcher as one: every event in order, the last header.
fn merge(rs: Vec<WatchResponse>) -> WatchResponse {
    let mut out = rs.last().cloned().unwrap_or_default();
    out.events = rs.into_iter().flat_map(|r| r.events).collect();
    out
}

/// Past 1,000 revisions etcd replays history in batches: the events of at
/// most 1,000 revisions that touch the watcher's range per response, each
/// with the store's revision in its header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_history_replays_in_etcds_batches() {
    // Every other write under /h/: a watch on /h/ sees 1,150 revisions of
    // the 2,300, a watch on everything all of them.
    const REVS: usize = 2_300;
    const WRITERS: usize = 8;
    let rig = Rig::start().await;
    let mut end = 0;
    for ep in [&rig.etcd.endpoint, &rig.store.endpoint] {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = kv(ep).await;
            tasks.push(tokio::spawn(async move {
                for i in (w..REVS).step_by(WRITERS) {
                    let dir = if i % 2 == 0 { "h" } else { "g" };
                    put(&mut c, &format!("/{dir}/{i:05}"), "v").await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rev = kv(ep)
            .await
            .range(RangeRequest {
                key: b("/"),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        assert!(end == 0 || end == rev, "both stores hold {REVS} revisions");
        end = rev;
    }
    assert_eq!(end, REVS as i64 + 1);
    rig.sync_gateways(end).await;

    // Concurrent writers: which key a revision holds differs between the
    // stores, so compare the shape: per response its header revision, its
    // number of events, and (watching everything) their revisions.
    let shape = |r: &WatchResponse, all: bool| {
        let revs: Vec<i64> = r
            .events
            .iter()
            .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
            .collect();
        let mut s = format!(
            "created {} rev {} events {}",
            r.created,
            r.header.as_ref().map_or(0, |h| h.revision),
            revs.len(),
        );
        if all {
            s += &format!(
                " first {:?} last {:?} consecutive {}",
                revs.first(),
                revs.last(),
                revs.windows(2).all(|w| w[1] == w[0] + 1)
            );
        }
        s
    };
    // A gateway whose ring is too small hands the replay over from an
    // upstream watch on its whole cached range, whose batches are cut by
    // the revisions of that range: it is left out here.
    let mut want: Option<Vec<String>> = None;
    for (name, ep) in rig.targets().into_iter().take(4) {
        let mut seen = Vec::new();
        for (p, all, n) in [("/", true, REVS), ("/h/", false, REVS / 2)] {
            let mut w = RawWatch::open(&ep, prefix_watch(p, 2)).await;
            seen.push(shape(&w.next().await, all));
            seen.extend(w.until_events(n).await.iter().map(|r| shape(r, all)));
        }
        match &want {
            None => want = Some(seen),
            Some(want) => assert_eq!(&seen, want, "{name} replays differently from etcd"),
        }
    }
    let want = want.unwrap();
    assert_eq!(
        want.len(),
        4 + 3,
        "created + three batches, created + two: {want:#?}"
    );

    // Below a compaction: created, then canceled with compact_revision.
    for ep in [&rig.etcd.endpoint, &rig.store.endpoint] {
        kv(ep)
            .await
            .compact(CompactionRequest {
                revision: 500,
                physical: true,
            })
            .await
            .unwrap();
    }
    let mut want = None;
    for (name, ep) in rig.targets() {
        let mut w = RawWatch::open(&ep, prefix_watch("/h/", 100)).await;
        let got = [describe(w.next().await), describe(w.next().await)];
        match &want {
            None => want = Some(got),
            Some(want) => assert_eq!(&got, want, "{name}: compacted watch"),
        }
    }
}

/// etcd's Cluster API header carries no revision; a member lists its
/// peer and client URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, store) = tokio::join!(EtcdServer::start(), start_store(dir.path(), None));
    let mut shapes = Vec::new();
    for ep in [&etcd.endpoint, &store.endpoint] {
        let mut r = ClusterClient::new(channel(ep).await)
            .member_list(MemberListRequest::default())
            .await
            .unwrap()
            .into_inner();
        let h = r.header.take().unwrap();
        assert!(
            h.cluster_id != 0 && h.member_id != 0 && h.raft_term != 0,
            "{h:?}"
        );
        assert_eq!(r.members.len(), 1);
        let m = &r.members[0];
        assert_eq!(m.id, h.member_id);
        assert!(
            !m.name.is_empty() && !m.peer_ur_ls.is_empty() && !m.client_ur_ls.is_empty(),
            "{m:?}"
        );
        shapes.push((
            h.revision,
            m.is_learner,
            m.peer_ur_ls.len(),
            m.client_ur_ls.len(),
        ));
    }
    assert_eq!(shapes[1], shapes[0], "store vs etcd");
}
