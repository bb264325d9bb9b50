//! Memory and apply cost of a secondary index, measured beside the same
//! cache without it in the same run: N JSON entries over M node values
//! applied through the real applier ([`BenchHarness`]), live heap bytes
//! counted by a counting allocator.
//!
//! `cargo bench -p lookout-cache --bench index_memory` prints bytes per
//! indexed entry (with vs without `--index node=json:/node`), the
//! applier's time per event in both when loading in batches of 1,000, and
//! its time per write when writes arrive one per upstream response (as at
//! 1,000 puts/s) moving a random entry to a random node, with no reader
//! and with a reader taking a snapshot after every write.

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

/// One upstream response holding one put that moves entry `i` to `node`.
fn move_event(i: u64, node: u64, rev: i64) -> Vec<Event> {
    vec![Event {
        r#type: EventType::Put as i32,
        kv: Some(KeyValue {
            key: Bytes::from(format!("/registry/pods/ns/e{i:07}")),
            create_revision: 2,
            mod_revision: rev,
            version: 2,
            value: Bytes::from(format!(
                r#"{{"spec":{{"nodeName":"n{node}"}},"pad":"{}"}}"#,
                "x".repeat(200)
            )),
            lease: 0,
        }),
        prev_kv: None,
    }]
}

const MOVES: u64 = 20_000;

/// One round: live bytes without and with the index, then seconds per
/// loaded event, per lone write, per lone write with a reader (each
/// without and with the index).
type Row = (i64, i64, f64, f64, f64, f64, f64, f64);

/// Seconds per single-event write on a loaded cache; `read_each`: a reader
/// takes the current snapshot after every write (a serializable read per
/// write), which forces the snapshot to be shared before the next write.
fn moves(h: &mut BenchHarness, read_each: bool) -> f64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let evs: Vec<Vec<Event>> = (0..MOVES)
        .map(|k| {
            move_event(
                next() % ENTRIES,
                next() % NODES,
                h.revision() + k as i64 + 1,
            )
        })
        .collect();
    let t = Instant::now();
    for ev in evs {
        h.apply(ev);
        if read_each {
            std::hint::black_box(h.snapshot().len());
        }
    }
    t.elapsed().as_secs_f64() / MOVES as f64
}

fn live(r: &Region<'_, System>) -> i64 {
    let c = r.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64
}

/// (live bytes after loading, seconds per applied event, seconds per
/// single-event write with no reader, the same with a reader per write)
fn load(indexed: bool) -> (i64, f64, f64, f64) {
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
    let lone = moves(&mut h, false);
    let read = moves(&mut h, true);
    drop(h);
    (bytes, per_event, lone, read)
}

fn main() {
    // Warm-up (allocator, lazily built tables), then three rounds each.
    let _ = load(false);
    let mut rows: Vec<Row> = Vec::new();
    for _ in 0..3 {
        let (plain, t_plain, m_plain, r_plain) = load(false);
        let (idx, t_idx, m_idx, r_idx) = load(true);
        rows.push((plain, idx, t_plain, t_idx, m_plain, m_idx, r_plain, r_idx));
    }
    rows.sort_by_key(|r| r.1 - r.0);
    let (plain, idx, t_plain, t_idx, ..) = rows[1];
    let med = |f: fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[1]
    };
    let (m_plain, m_idx) = (med(|r| r.4), med(|r| r.5));
    let (r_plain, r_idx) = (med(|r| r.6), med(|r| r.7));
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
    println!(
        "one write per upstream response ({MOVES} moves of a random entry to a random node): \
         {:.2} µs per write without index, {:.2} µs with; with a snapshot taken after \
         every write: {:.2} µs and {:.2} µs",
        m_plain * 1e6,
        m_idx * 1e6,
        r_plain * 1e6,
        r_idx * 1e6
    );
}
