//! Fan-out cost: 10,000 prefix watchers in 100 groups on 100 streams, every
//! event matching one group (100 watchers). Each iteration applies events
//! through the real applier (snapshot, ring, group index, stream queues),
//! drains every stream and writes every frame into a buffer as a gRPC codec
//! would.
//!
//! Two ways to write a frame are compared in the same run:
//! - `encode_once`: the head + shared pre-encoded event bytes (what the cache does);
//! - `reencode_per_watcher` (baseline): build a `WatchResponse` per watcher
//!   from stored `Event`s and protobuf-encode it, as a naive cache would.
//!
//! A counting global allocator reports bytes allocated per delivery and the
//! live heap per idle watcher (shared group vs one group per watcher).
//! Figures are printed as ratios against those baselines.

use std::alloc::System;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use lookout_cache::{BenchHarness, CacheConfig, WatchFrame, WatchFrames, WatchHandle};
use lookout_proto::mvccpb::{Event, KeyValue};
use lookout_proto::pb::{ResponseHeader, WatchCreateRequest, WatchResponse};
use prost::Message;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const GROUPS: usize = 100;
const PER_GROUP: usize = 100;
const STREAMS: usize = 100;
const EVENTS_PER_ITER: usize = 100;
const VALUE: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    EncodeOnce,
    Reencode,
}

struct World {
    h: BenchHarness,
    _handles: Vec<WatchHandle>,
    frames: Vec<WatchFrames>,
    /// The baseline's store of decoded events, by revision.
    events: Vec<Event>,
    value: Bytes,
    out: Vec<WatchFrame>,
    buf: BytesMut,
}

fn prefix(g: usize) -> WatchCreateRequest {
    let key = format!("/g{g:03}/");
    let end = format!("/g{g:03}0");
    WatchCreateRequest {
        key: Bytes::from(key),
        range_end: Bytes::from(end),
        ..Default::default()
    }
}

fn world(groups: usize, per_group: usize, distinct: bool) -> World {
    let h = BenchHarness::new(CacheConfig {
        stream_queue_bytes: 256 << 20,
        progress_notify_interval: std::time::Duration::ZERO,
        ..Default::default()
    });
    let (handles, frames): (Vec<_>, Vec<_>) = (0..STREAMS).map(|_| h.open_stream()).unzip();
    let mut w = World {
        h,
        _handles: handles,
        frames,
        events: vec![Event::default(); 2],
        value: Bytes::from(vec![b'v'; VALUE]),
        out: Vec::new(),
        buf: BytesMut::with_capacity(1 << 20),
    };
    add_watchers(&mut w, groups, per_group, distinct);
    w
}

fn add_watchers(w: &mut World, groups: usize, per_group: usize, distinct: bool) {
    for g in 0..groups {
        for i in 0..per_group {
            let n = g * per_group + i;
            let req = if distinct {
                WatchCreateRequest {
                    key: Bytes::from(format!("/w/{n:06}")),
                    ..Default::default()
                }
            } else {
                prefix(g)
            };
            w._handles[n % STREAMS].create(&req).expect("create");
        }
    }
    drain(w, Mode::EncodeOnce);
}

fn event(w: &World, rev: i64) -> Event {
    let g = rev as usize % GROUPS;
    Event {
        r#type: 0,
        kv: Some(KeyValue {
            key: Bytes::from(format!("/g{g:03}/k{:02}", rev % 50)),
            create_revision: 2,
            mod_revision: rev,
            version: rev,
            value: w.value.clone(),
            lease: 0,
        }),
        prev_kv: None,
    }
}

/// Drains every stream; returns frames written.
fn drain(w: &mut World, mode: Mode) -> usize {
    let mut n = 0;
    for f in &mut w.frames {
        f.try_next(&mut w.out).expect("open");
        for frame in w.out.drain(..) {
            match mode {
                Mode::EncodeOnce => frame.write_to(&mut w.buf),
                Mode::Reencode => {
                    let resp = WatchResponse {
                        header: Some(ResponseHeader {
                            revision: frame.revision(),
                            ..Default::default()
                        }),
                        watch_id: frame.watch_id(),
                        events: frame
                            .events()
                            .iter()
                            .map(|e| w.events[e.revision() as usize].clone())
                            .collect(),
                        ..Default::default()
                    };
                    resp.encode(&mut w.buf).expect("buffer grows");
                }
            }
            n += 1;
            if w.buf.len() > 512 << 10 {
                w.buf.clear();
            }
        }
    }
    w.buf.clear();
    n
}

/// Applies `EVENTS_PER_ITER` events (one upstream response each) and
/// delivers them; returns deliveries.
fn step(w: &mut World, mode: Mode) -> usize {
    apply(w, mode);
    drain(w, mode)
}

fn apply(w: &mut World, mode: Mode) {
    for _ in 0..EVENTS_PER_ITER {
        let rev = w.h.revision() + 1;
        let ev = event(w, rev);
        if mode == Mode::Reencode {
            w.events.push(ev.clone());
        } else {
            w.events.push(Event::default());
        }
        w.h.apply(vec![ev]);
    }
}

fn live(r: &Region<'_, System>) -> i64 {
    let c = r.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64
}

fn report() {
    // Memory per idle watcher: 10k watchers sharing 100 groups, against 10k
    // watchers each alone in its group (distinct keys).
    let base = world(0, 0, false);
    let before = Region::new(GLOBAL);
    let mut shared = base;
    add_watchers(&mut shared, GROUPS, PER_GROUP, false);
    let shared_bytes = live(&before) as f64 / (GROUPS * PER_GROUP) as f64;
    drop(shared);
    let base = world(0, 0, false);
    let before = Region::new(GLOBAL);
    let mut alone = base;
    add_watchers(&mut alone, GROUPS, PER_GROUP, true);
    let alone_bytes = live(&before) as f64 / (GROUPS * PER_GROUP) as f64;
    drop(alone);
    let h = BenchHarness::new(CacheConfig::default());
    let before = Region::new(GLOBAL);
    let streams: Vec<_> = (0..1000).map(|_| h.open_stream()).collect();
    let per_stream = live(&before) as f64 / 1000.0;
    drop(streams);

    // The applier alone (snapshot, ring, index lookup; no watcher matches).
    let mut idle = world(0, 0, false);
    apply(&mut idle, Mode::EncodeOnce);
    let r = Region::new(GLOBAL);
    apply(&mut idle, Mode::EncodeOnce);
    let apply_alone = r.change().bytes_allocated as f64 / EVENTS_PER_ITER as f64;
    drop(idle);

    // Allocation and time per delivery, both modes, same run.
    let mut rows = Vec::new();
    for mode in [Mode::Reencode, Mode::EncodeOnce] {
        let mut w = world(GROUPS, PER_GROUP, false);
        step(&mut w, mode); // warm up buffers
        let mut r = Region::new(GLOBAL);
        let t = Instant::now();
        let (mut deliveries, mut apply_bytes, mut deliver_bytes, mut deliver_allocs) = (0, 0, 0, 0);
        let iters = 30;
        for _ in 0..iters {
            r.change_and_reset();
            apply(&mut w, mode);
            apply_bytes += r.change_and_reset().bytes_allocated;
            deliveries += drain(&mut w, mode);
            let c = r.change_and_reset();
            deliver_bytes += c.bytes_allocated;
            deliver_allocs += c.allocations;
        }
        let secs = t.elapsed().as_secs_f64();
        rows.push((
            mode,
            (iters * EVENTS_PER_ITER) as f64 / secs,
            deliveries as f64 / secs,
            deliver_bytes as f64 / deliveries as f64,
            deliver_allocs as f64 / deliveries as f64,
            apply_bytes as f64 / (iters * EVENTS_PER_ITER) as f64,
        ));
    }
    let (b, e) = (rows[0], rows[1]);
    println!(
        "\n=== fan-out: {} watchers, {GROUPS} groups, {STREAMS} streams, {VALUE} B values ===",
        GROUPS * PER_GROUP
    );
    for (mode, eps, dps, bytes, allocs, apply) in &rows {
        println!(
            "{mode:?}: {eps:.0} events/s applied+delivered, {dps:.0} deliveries/s; delivery allocates {bytes:.1} B in {allocs:.2} allocations; apply allocates {apply:.0} B per event"
        );
    }
    println!(
        "encode-once vs re-encode per watcher: {:.2}x events/s, {:.3}x bytes allocated per delivery",
        e.1 / b.1,
        e.3 / b.3
    );
    println!("apply with no watcher allocates {apply_alone:.0} B per event");
    println!(
        "memory per idle watcher: {shared_bytes:.0} B in a shared group, {alone_bytes:.0} B alone in its group ({:.2}x); per stream {per_stream:.0} B",
        shared_bytes / alone_bytes
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_10k_watchers");
    g.throughput(Throughput::Elements(EVENTS_PER_ITER as u64));
    g.sample_size(20);
    for (name, mode) in [
        ("reencode_per_watcher", Mode::Reencode),
        ("encode_once", Mode::EncodeOnce),
    ] {
        let mut w = world(GROUPS, PER_GROUP, false);
        g.bench_function(name, |b| b.iter(|| step(&mut w, mode)));
    }
    g.finish();
}

fn main() {
    report();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
