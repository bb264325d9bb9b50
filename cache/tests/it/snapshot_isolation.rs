//! The applier changes its working snapshot in place and hands readers
//! O(1) copies of it. A snapshot a reader holds must never change after it
//! was handed out, whatever the applier does next, and a snapshot taken
//! after a write must contain it. Checked against a plain model for random
//! puts and deletes (entries moving between index values included), with
//! snapshots taken at random points, some of them after long runs of
//! writes nobody read (past the applier's own periodic publish).
//!
//! Runs the real applier through `BenchHarness` (no upstream).

use std::collections::BTreeMap;

use bytes::Bytes;
use lookout_cache::{BenchHarness, CacheConfig, IndexDef, IndexSet, Snapshot, evaluate_range};
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use lookout_proto::pb::RangeRequest;
use rand::{Rng, SeedableRng, rngs::StdRng};

const KEYS: u64 = 300;
const NODES: [&str; 4] = ["n0", "n1", "n2", "n3"];

/// key -> (node, mod_revision)
type Model = BTreeMap<Bytes, (String, i64)>;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("/p/k{i:04}"))
}

fn event(put: bool, k: Bytes, node: &str, rev: i64) -> Event {
    Event {
        r#type: if put {
            EventType::Put
        } else {
            EventType::Delete
        } as i32,
        kv: Some(KeyValue {
            key: k,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: if put {
                Bytes::from(format!(r#"{{"node":"{node}"}}"#))
            } else {
                Bytes::new()
            },
            lease: 0,
        }),
        prev_kv: None,
    }
}

fn range(snap: &Snapshot, index: &str, value: &str) -> Vec<(Bytes, String, i64)> {
    let req = RangeRequest {
        key: Bytes::from_static(b"/p/"),
        range_end: Bytes::from_static(b"/p0"),
        index: index.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    };
    let res = evaluate_range(snap, &req).expect("range");
    res.kvs
        .into_iter()
        .map(|kv| {
            let v: serde_json::Value = serde_json::from_slice(&kv.value).expect("json");
            (
                kv.key,
                v["node"].as_str().unwrap().to_string(),
                kv.mod_revision,
            )
        })
        .collect()
}

/// The snapshot holds exactly `model` at `rev`, in the data and in the index.
fn check(snap: &Snapshot, model: &Model, rev: i64, at: &str) {
    assert_eq!(snap.revision(), rev, "{at}: revision");
    let all: Vec<_> = model
        .iter()
        .map(|(k, (n, r))| (k.clone(), n.clone(), *r))
        .collect();
    assert_eq!(range(snap, "", ""), all, "{at}: data");
    for node in NODES {
        let want: Vec<_> = all.iter().filter(|e| e.1 == node).cloned().collect();
        assert_eq!(range(snap, "node", node), want, "{at}: index value {node}");
    }
}

#[test]
fn handed_out_snapshots_never_change_and_fresh_ones_see_every_write() {
    let cases: u64 = std::env::var("LOOKOUT_SNAPSHOT_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let indexes = IndexSet::new(vec![IndexDef::parse("node@/p/=json:/node").unwrap()]).unwrap();
        let mut h = BenchHarness::new(CacheConfig {
            history_events: 64,
            indexes,
            ..Default::default()
        });
        let mut model = Model::new();
        let mut held: Vec<(std::sync::Arc<Snapshot>, Model, i64)> = Vec::new();
        let mut rev = h.revision();
        // Bounded: 30 rounds, each a run of writes then maybe a read.
        for round in 0..30 {
            // Mostly short runs; now and then one longer than the
            // applier's periodic publish (4096 events).
            let run = if rng.random_range(0..6) == 0 {
                rng.random_range(4100..6000)
            } else {
                rng.random_range(1..40)
            };
            for _ in 0..run {
                rev += 1;
                let k = key(rng.random_range(0..KEYS));
                // One upstream response per write, sometimes two events in
                // one response (two revisions).
                let put = rng.random_range(0..4) != 0;
                let node = NODES[rng.random_range(0..NODES.len())];
                let mut evs = vec![event(put, k.clone(), node, rev)];
                if put {
                    model.insert(k, (node.to_string(), rev));
                } else {
                    model.remove(&k);
                }
                if rng.random_range(0..5) == 0 {
                    rev += 1;
                    let k2 = key(rng.random_range(0..KEYS));
                    let node2 = NODES[rng.random_range(0..NODES.len())];
                    evs.push(event(true, k2.clone(), node2, rev));
                    model.insert(k2, (node2.to_string(), rev));
                }
                h.apply(evs);
            }
            assert_eq!(h.revision(), rev);
            if rng.random_range(0..3) != 0 {
                let snap = h.snapshot();
                check(
                    &snap,
                    &model,
                    rev,
                    &format!("seed {seed} round {round} fresh"),
                );
                held.push((snap, model.clone(), rev));
            }
            for (i, (snap, m, r)) in held.iter().enumerate() {
                check(snap, m, *r, &format!("seed {seed} round {round} held #{i}"));
            }
        }
        assert!(
            held.len() > 3,
            "the test took too few snapshots to mean much"
        );
    }
}
