//! The index property, against the real cache fed by a real etcd 3.4: for
//! random histories of puts, deletes and transactions (JSON values whose
//! indexed field changes, values that are not JSON or lack the field, keys
//! in and out of the index's scope), a filtered list at revision S - 1 plus
//! a filtered watch from S equals filtering the store's own state (read
//! back from etcd at each revision) at every later revision, entries
//! moving in and out included. Checked for watchers that were live while
//! the history was written (fan-out path), that replay it from the ring
//! after the fact (catch-up path, with a tiny queue budget so live
//! watchers fall back to the ring too), and initial-state watchers.
//!
//! Bounded: `LOOKOUT_INDEX_PROP_CASES` seeds (default 3) of 90 operations.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use lookout_cache::{Cache, CacheConfig, IndexDef, IndexSet};
use lookout_proto::mvccpb::{KeyValue, event::EventType};
use lookout_proto::pb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchResponse, kv_client::KvClient, request_op,
};
use lookout_testkit::EtcdServer;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::transport::Channel;

use crate::support::*;

const SCOPE: &str = "/p/";
const NODES: [&str; 3] = ["n0", "n1", "n2"];

type State = BTreeMap<Bytes, KeyValue>;

/// What a filtered client should hold: entries under `range` whose JSON
/// `node` field is `value` (a JSON number indexes as its text).
fn expected(truth: &State, start: &[u8], end: &[u8], value: &str) -> State {
    truth
        .iter()
        .filter(|(k, _)| k.as_ref() >= start && k.as_ref() < end)
        .filter(|(_, kv)| {
            serde_json::from_slice::<serde_json::Value>(&kv.value)
                .ok()
                .and_then(|v| v.get("node").cloned())
                .is_some_and(|n| match n {
                    serde_json::Value::String(s) => s == value,
                    serde_json::Value::Number(x) => x.to_string() == value,
                    _ => false,
                })
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn random_value(rng: &mut StdRng, i: usize) -> String {
    match rng.random_range(0..10) {
        0 => "not json".into(),
        1 => format!(r#"{{"other":{i}}}"#),
        2 => format!(r#"{{"node":7,"i":{i}}}"#),
        _ => format!(
            r#"{{"node":"{}","i":{i}}}"#,
            NODES[rng.random_range(0..NODES.len())]
        ),
    }
}

fn random_key(rng: &mut StdRng) -> String {
    if rng.random_range(0..5) == 0 {
        format!("/q/k{}", rng.random_range(0..3))
    } else {
        format!("{SCOPE}k{}", rng.random_range(0..8))
    }
}

async fn random_history(kv: &mut KvClient<Channel>, rng: &mut StdRng, ops: usize) -> i64 {
    let mut rev = 0;
    for i in 0..ops {
        let r = match rng.random_range(0..10) {
            0 | 1 => {
                kv.delete_range(DeleteRangeRequest {
                    key: b(&random_key(rng)),
                    ..Default::default()
                })
                .await
                .expect("delete")
                .into_inner()
                .header
            }
            2 => {
                // Several events in one revision, one of them maybe a delete.
                let (k1, k2) = (random_key(rng), random_key(rng));
                let mut ops = vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b(&k1),
                        value: b(&random_value(rng, i)),
                        ..Default::default()
                    })),
                }];
                if k2 != k1 {
                    ops.push(RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: b(&k2),
                                ..Default::default()
                            },
                        )),
                    });
                }
                kv.txn(TxnRequest {
                    success: ops,
                    ..Default::default()
                })
                .await
                .expect("txn")
                .into_inner()
                .header
            }
            _ => {
                kv.put(PutRequest {
                    key: b(&random_key(rng)),
                    value: b(&random_value(rng, i)),
                    ..Default::default()
                })
                .await
                .expect("put")
                .into_inner()
                .header
            }
        };
        rev = rev.max(r.map_or(0, |h| h.revision));
    }
    rev
}

/// The store's state at `rev`, read from etcd itself.
async fn truth_at(kv: &mut KvClient<Channel>, rev: i64) -> State {
    kv.range(RangeRequest {
        key: Bytes::from_static(&[0]),
        range_end: Bytes::from_static(&[0]),
        revision: rev,
        ..Default::default()
    })
    .await
    .expect("range at revision")
    .into_inner()
    .kvs
    .into_iter()
    .map(|kv| (kv.key.clone(), kv))
    .collect()
}

/// One filtered client: its list (at `from - 1`) and watch from `from`.
struct Client {
    id: i64,
    start: Bytes,
    end: Bytes,
    value: &'static str,
    list: State,
    from: i64,
}

fn filtered_watch(start: &Bytes, end: &Bytes, value: &str, from: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: start.clone(),
        range_end: end.clone(),
        start_revision: from,
        prev_kv: true,
        index: "node".into(),
        value: b(value),
        ..Default::default()
    }
}

fn filtered_list(cache: &Cache, start: &Bytes, end: &Bytes, value: &str, rev: i64) -> State {
    cache
        .range(&RangeRequest {
            key: start.clone(),
            range_end: end.clone(),
            revision: rev,
            index: "node".into(),
            value: b(value),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("filtered list at {rev}: {e}"))
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect()
}

/// Replays `responses` over `c.list` and compares with the truth at every
/// revision from `c.from` to `end_rev`.
fn check_client(
    c: &Client,
    responses: &[WatchResponse],
    truths: &BTreeMap<i64, State>,
    end_rev: i64,
    what: &str,
) {
    let mut state = c.list.clone();
    let first = c.from - 1;
    assert_eq!(
        state,
        expected(&truths[&first], &c.start, &c.end, c.value),
        "{what}: filtered list at {first}"
    );
    let events: Vec<_> = responses.iter().flat_map(|r| r.events.iter()).collect();
    let mut seen = HashSet::new();
    let mut last = 0;
    let mut i = 0;
    for rev in c.from..=end_rev {
        while let Some(ev) = events.get(i) {
            let kv = ev.kv.as_ref().expect("event has kv");
            if kv.mod_revision != rev {
                break;
            }
            assert!(kv.mod_revision >= last, "{what}: revisions go forward");
            last = kv.mod_revision;
            assert!(
                seen.insert((kv.key.clone(), kv.mod_revision)),
                "{what}: duplicate event {:?}@{}",
                kv.key,
                kv.mod_revision
            );
            if ev.r#type == EventType::Delete as i32 {
                let had = state.remove(&kv.key);
                assert!(had.is_some(), "{what}: DELETE of an entry the client lacks");
                assert_eq!(
                    ev.prev_kv.as_ref(),
                    had.as_ref(),
                    "{what}: DELETE carries the entry it removes as prev_kv"
                );
            } else {
                state.insert(kv.key.clone(), kv.clone());
            }
            i += 1;
        }
        assert_eq!(
            state,
            expected(&truths[&rev], &c.start, &c.end, c.value),
            "{what}: state after revision {rev} (watch from {})",
            c.from
        );
    }
    assert_eq!(i, events.len(), "{what}: no event past {end_rev}");
}

async fn wait_progress(rec: &Recorder, rev: i64) {
    lookout_testkit::wait_for(&format!("stream progress at {rev}"), WAIT, || {
        rec.handle.request_progress();
        let done = rec.responses(-1).iter().any(|r| {
            !r.created && !r.canceled && r.header.as_ref().is_some_and(|h| h.revision >= rev)
        });
        async move { done.then_some(()) }
    })
    .await;
}

async fn run_case(seed: u64, small_ring: bool) {
    let etcd = EtcdServer::start().await;
    let mut kv = kv(&etcd.endpoint).await;
    let mut rng = StdRng::seed_from_u64(seed);
    // Something before the cache starts, so its list is not empty.
    let base = random_history(&mut kv, &mut rng, 10).await;
    let cfg = if small_ring {
        // Replays from the past start below the ring: an upstream watch
        // (asking etcd for prev_kv) feeds them until the ring takes over.
        CacheConfig {
            indexes: IndexSet::new(vec![IndexDef::parse("node@/p/=json:/node").unwrap()]).unwrap(),
            history_events: 8,
            ..config()
        }
    } else {
        CacheConfig {
            indexes: IndexSet::new(vec![IndexDef::parse("node@/p/=json:/node").unwrap()]).unwrap(),
            // Tiny: live watchers overflow and read the ring (catch-up path).
            stream_queue_bytes: 600,
            ..config()
        }
    };
    let cache = start_cache(&[&etcd.endpoint], cfg).await;
    let ranges = [
        (
            b(SCOPE),
            lookout_cache::prefix_end(SCOPE.as_bytes()).unwrap(),
        ),
        (b("/p/k2"), b("/p/k6")),
    ];
    let live = Recorder::spawn(&cache);
    let mut clients = Vec::new();
    for (start, end) in &ranges {
        for value in NODES.iter().copied().chain(["7"]) {
            let now = cache.revision();
            let list = filtered_list(&cache, start, end, value, now);
            let id = live.watch(filtered_watch(start, end, value, now + 1));
            clients.push(Client {
                id,
                start: start.clone(),
                end: end.clone(),
                value,
                list,
                from: now + 1,
            });
        }
    }
    let initial = Recorder::spawn(&cache);
    let mut initial_ids = Vec::new();
    for value in NODES.into_iter().filter(|_| !small_ring) {
        let mut req = filtered_watch(&ranges[0].0, &ranges[0].1, value, 0);
        req.initial_state = true;
        initial_ids.push((initial.watch(req), value));
    }
    let end_rev = random_history(&mut kv, &mut rng, 80).await;
    cache
        .wait_for_revision(end_rev, WAIT)
        .await
        .expect("cache reaches the end");

    let mut truths = BTreeMap::new();
    for rev in base..=end_rev {
        truths.insert(rev, truth_at(&mut kv, rev).await);
    }

    // Replays from random past revisions: list at S - 1 from the ring,
    // watch from S through the ring.
    let replay = Recorder::spawn(&cache);
    for _ in 0..6 {
        let (start, end) = &ranges[rng.random_range(0..ranges.len())];
        let value = NODES[rng.random_range(0..NODES.len())];
        let from = rng.random_range(base + 1..=end_rev);
        let list = if small_ring {
            // The cache cannot rebuild a filtered list that old (checked
            // below): the client's list comes from the store.
            expected(&truths[&(from - 1)], start, end, value)
        } else {
            filtered_list(&cache, start, end, value, from - 1)
        };
        let id = replay.watch(filtered_watch(start, end, value, from));
        clients.push(Client {
            id: -100 - id,
            start: start.clone(),
            end: end.clone(),
            value,
            list,
            from,
        });
    }
    if small_ring {
        let e = cache
            .range(&RangeRequest {
                key: ranges[0].0.clone(),
                range_end: ranges[0].1.clone(),
                revision: base,
                index: "node".into(),
                value: b("n0"),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(e, lookout_cache::CacheError::IndexRevisionNotCached { .. }),
            "{e}"
        );
    }
    wait_progress(&live, end_rev).await;
    wait_progress(&replay, end_rev).await;
    if small_ring {
        assert!(
            cache
                .metrics()
                .splices
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "replays went through the upstream splice"
        );
    }
    wait_progress(&initial, end_rev).await;

    for c in &clients {
        let (rec, id, what) = if c.id <= -100 {
            (&replay, -100 - c.id, "replayed")
        } else {
            (&live, c.id, "live")
        };
        let responses = rec.responses(id);
        assert!(
            !responses.iter().any(|r| r.canceled),
            "seed {seed}: {what} watcher {id} cancelled"
        );
        check_client(
            c,
            &responses,
            &truths,
            end_rev,
            &format!("seed {seed} {what} {}", c.value),
        );
    }

    // Initial-state watchers: created, PUT pages at R, the marker (no
    // events, revision R), then live events from R + 1.
    for (id, value) in initial_ids {
        let responses = initial.responses(id);
        assert!(responses[0].created, "created first");
        let r = responses[0].header.as_ref().unwrap().revision;
        let marker = responses
            .iter()
            .position(|x| x.events.is_empty() && !x.created && !x.canceled)
            .expect("the initial-state marker");
        assert_eq!(responses[marker].header.as_ref().unwrap().revision, r);
        let mut list = State::new();
        for x in &responses[1..marker] {
            assert_eq!(x.header.as_ref().unwrap().revision, r, "pages say R");
            for ev in &x.events {
                assert_eq!(ev.r#type, EventType::Put as i32);
                let kv = ev.kv.clone().unwrap();
                assert!(list.insert(kv.key.clone(), kv).is_none(), "no duplicate");
            }
        }
        let c = Client {
            id,
            start: ranges[0].0.clone(),
            end: ranges[0].1.clone(),
            value,
            list,
            from: r + 1,
        };
        check_client(
            &c,
            &responses[marker + 1..],
            &truths,
            end_rev,
            &format!("seed {seed} initial {value}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_list_plus_watch_equals_filtered_state() {
    let cases: u64 = std::env::var("LOOKOUT_INDEX_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for seed in 0..cases {
        run_case(0x1de5 + seed, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_watch_from_below_the_ring_is_spliced_from_the_store() {
    let cases: u64 = std::env::var("LOOKOUT_INDEX_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for seed in 0..cases {
        run_case(0x5e1f + seed, true).await;
    }
}
