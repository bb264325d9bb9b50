//! Memory and apply cost of a secondary index, measured beside the same
//! cache without it in the same run: N JSON entries over M node values
//! applied through the real applier ([`BenchHarness`]), live heap bytes
//! counted by a counting allocator.
//!
//! `cargo bench -p lookout-cache --bench index_memory` prints bytes per
//! indexed entry (with vs without `--index node=json:/node`) and the
//! applier's time per event in both.

use std::alloc::System;
use std::time::Instant;

use bytes::Bytes;
use lookout_cache::{BenchHarness, CacheConfig, IndexDef, IndexSet};
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ENTRIES: u64 = 100_000;
const NODES: u64 = 1000;
const BATCH: u64 = 1000;

fn events(from: u64, rev0: i64) -> Vec<Event> {
    (from..from + BATCH)
        .map(|i| {
            let rev = rev0 + (i - from) as i64 + 1;
            Event {
                r#type: EventType::Put as i32,
                kv: Some(KeyValue {
                    key: Bytes::from(format!("/registry/pods/ns/e{i:07}")),
                    create_revision: rev,
                    mod_revision: rev,
                    version: 1,
                    value: Bytes::from(format!(
                        r#"{{"spec":{{"nodeName":"n{}"}},"pad":"{}"}}"#,
                        i % NODES,
                        "x".repeat(200)
                    )),
                    lease: 0,
                }),
                prev_kv: None,
            }
        })
        .collect()
}

fn live(r: &Region<'_, System>) -> i64 {
    let c = r.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64
}

/// (live bytes after loading, seconds per applied event)
fn load(indexed: bool) -> (i64, f64) {
    let r = Region::new(GLOBAL);
    let indexes = if indexed {
        IndexSet::new(vec![IndexDef::parse("node=json:/spec/nodeName").unwrap()]).unwrap()
    } else {
        IndexSet::default()
    };
    // A tiny ring: what stays is the snapshot (and its index).
    let mut h = BenchHarness::new(CacheConfig {
        history_events: 16,
        indexes,
        ..Default::default()
    });
    let t = Instant::now();
    let mut i = 0;
    while i < ENTRIES {
        let rev = h.revision();
        h.apply(events(i, rev));
        i += BATCH;
    }
    let per_event = t.elapsed().as_secs_f64() / ENTRIES as f64;
    let bytes = live(&r);
    drop(h);
    (bytes, per_event)
}

fn main() {
    // Warm-up (allocator, lazily built tables), then three rounds each.
    let _ = load(false);
    let mut rows = Vec::new();
    for _ in 0..3 {
        let (plain, t_plain) = load(false);
        let (idx, t_idx) = load(true);
        rows.push((plain, idx, t_plain, t_idx));
    }
    rows.sort_by_key(|r| r.1 - r.0);
    let (plain, idx, t_plain, t_idx) = rows[1];
    println!(
        "\n=== secondary index memory: {ENTRIES} entries, {NODES} values, ~250 B JSON values (median of 3) ==="
    );
    println!(
        "cache without index: {:.0} B per entry; with index: {:.0} B per entry; the index costs {:.0} B per indexed entry ({:.2}x the cache's own)",
        plain as f64 / ENTRIES as f64,
        idx as f64 / ENTRIES as f64,
        (idx - plain) as f64 / ENTRIES as f64,
        (idx - plain) as f64 / plain as f64
    );
    println!(
        "applier: {:.2} µs per event without index, {:.2} µs with ({:.2}x; JSON parsed for the old and new value)",
        t_plain * 1e6,
        t_idx * 1e6,
        t_idx / t_plain
    );
}
