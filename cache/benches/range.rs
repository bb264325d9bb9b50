//! The cache's Range evaluation over one 10,000-key snapshot (256-byte
//! values), in process: no network, no gRPC, only [`evaluate_range`] the
//! way the gateway calls it for a serializable read.
//!
//! - `range-10k/key-order`: the whole prefix in key order (a list);
//! - `range-10k/limit-100`: the first 100 keys, count of all (paging);
//! - `range-10k/count-only`: `etcdctl get --prefix --count-only`;
//! - `range-10k/value-desc`: sorted by value, descending, 8 distinct values
//!   (many ties, Go's sort order).
//!
//! `cargo bench -p lookout-cache --bench range`. Compare a change against
//! its baseline built from the previous commit, run in the same session.

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use lookout_cache::{BenchHarness, CacheConfig, evaluate_range};
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use lookout_proto::pb::RangeRequest;
use lookout_proto::pb::range_request::{SortOrder, SortTarget};

const KEYS: u64 = 10_000;
const BATCH: u64 = 1_000;

fn harness() -> BenchHarness {
    let mut h = BenchHarness::new(CacheConfig::default());
    let mut rev = 1i64;
    for from in (0..KEYS).step_by(BATCH as usize) {
        let events = (from..from + BATCH)
            .map(|i| {
                rev += 1;
                // 8 distinct values, so a value sort has long runs of ties.
                let mut value = vec![b'a' + (i % 8) as u8; 256];
                value[255] = b'\n';
                Event {
                    r#type: EventType::Put as i32,
                    kv: Some(KeyValue {
                        key: Bytes::from(format!("r/{i:06}")),
                        create_revision: rev,
                        mod_revision: rev,
                        version: 1,
                        value: Bytes::from(value),
                        lease: 0,
                    }),
                    prev_kv: None,
                }
            })
            .collect();
        h.apply(events);
    }
    h
}

fn prefix() -> RangeRequest {
    RangeRequest {
        key: Bytes::from_static(b"r/"),
        range_end: Bytes::from_static(b"r0"),
        serializable: true,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let h = harness();
    let snap = h.snapshot();
    let cases = [
        ("key-order", prefix(), KEYS as usize),
        (
            "limit-100",
            RangeRequest {
                limit: 100,
                ..prefix()
            },
            100,
        ),
        (
            "count-only",
            RangeRequest {
                count_only: true,
                ..prefix()
            },
            0,
        ),
        (
            "value-desc",
            RangeRequest {
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Value as i32,
                ..prefix()
            },
            KEYS as usize,
        ),
    ];
    let mut g = c.benchmark_group("range-10k");
    for (name, req, want) in cases {
        let r = evaluate_range(&snap, &req).expect("range");
        assert_eq!((r.kvs.len(), r.count), (want, KEYS as i64), "{name}");
        g.bench_function(name, |b| {
            b.iter(|| evaluate_range(&snap, &req).expect("range"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
