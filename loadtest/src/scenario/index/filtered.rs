//! `lookout-load index`: W watchers each filtered to its node by the
//! gateway's index vs the same W on the whole prefix, beside an idle
//! gateway applying the same writes; gateway CPU per useful event, bytes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lookout_proto::pb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::transport::Channel;

use super::{
    Procs, create, entry_key, median, node_value, open_stream, preload, progress, range_end,
};
use crate::conn;
use crate::error::Result;
use crate::procstat;

/// `lookout-load index` parameters.
#[derive(Debug, Clone)]
pub struct IndexBenchParams {
    pub bin: PathBuf,
    pub entries: u64,
    pub nodes: u64,
    pub watchers: usize,
    pub connections: usize,
    pub rate: f64,
    pub duration: Duration,
    pub pad: usize,
    pub repeat: usize,
    pub drain_timeout: Duration,
}

/// What the watchers of one measurement watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No watcher: the gateway's cost of applying the writes alone.
    Idle,
    /// Each watcher filtered to its node by the gateway's index.
    Filtered,
    /// Each watcher on the whole prefix (the client would filter).
    Whole,
}

/// One mode's measurement.
#[derive(Debug, Clone, Default)]
pub struct IndexRun {
    pub mode: &'static str,
    pub gateway_cpu_s: f64,
    pub bytes: u64,
    pub events: u64,
    /// Events a watcher filtering for its node needs (both modes).
    pub useful: u64,
    pub drained: bool,
    pub wall_s: f64,
}

/// Runs `index` and returns the markdown report.
///
/// # Errors
/// When a process or connection cannot be started.
pub async fn run_index(prm: &IndexBenchParams) -> Result<String> {
    let procs = Procs::start(&prm.bin).await?;
    let prefix = "/bench/idx/";
    let store_ch = conn::connect(&procs.store_endpoint).await?;
    let nodes = prm.nodes.max(1);
    let mut node_of: Vec<u64> = (0..prm.entries).map(|i| i % nodes).collect();
    let t = Instant::now();
    preload(&store_ch, prefix, prm.entries, |i| i % nodes, prm.pad).await?;
    eprintln!("preloaded {} entries in {:?}", prm.entries, t.elapsed());
    let index = format!("node@{prefix}=json:/node");
    let mut runs: Vec<(IndexRun, IndexRun, IndexRun)> = Vec::new();
    for rep in 0..prm.repeat {
        let mut trio = Vec::new();
        for (m, mode) in [Mode::Idle, Mode::Filtered, Mode::Whole]
            .into_iter()
            .enumerate()
        {
            let (mut gw, ep) = procs.gateway(&index).await?;
            let seed = (rep * 3 + m) as u64 + 1;
            let r = index_mode(
                prm,
                &ep,
                gw.pid(),
                &store_ch,
                prefix,
                mode,
                &mut node_of,
                seed,
            )
            .await?;
            eprintln!("rep {rep} {r:?}");
            gw.terminate(Duration::from_secs(5));
            trio.push(r);
        }
        let w = trio.pop().expect("three modes");
        let f = trio.pop().expect("three modes");
        let i = trio.pop().expect("three modes");
        runs.push((i, f, w));
    }
    drop(procs);
    Ok(index_report(prm, &runs))
}

#[allow(clippy::too_many_arguments)]
async fn index_mode(
    prm: &IndexBenchParams,
    ep: &str,
    pid: u32,
    store_ch: &Channel,
    prefix: &str,
    mode: Mode,
    node_of: &mut [u64],
    seed: u64,
) -> Result<IndexRun> {
    let nodes = prm.nodes.max(1);
    let watchers = if mode == Mode::Idle { 0 } else { prm.watchers };
    let filtered = mode == Mode::Filtered;
    let chans = if watchers == 0 {
        Vec::new()
    } else {
        conn::connect_many(ep, prm.connections.max(1)).await?
    };
    let bytes = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let progress_rev: Arc<Vec<AtomicU64>> =
        Arc::new((0..chans.len()).map(|_| AtomicU64::new(0)).collect());
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    let created = Arc::new(AtomicU64::new(0));
    for (c, ch) in chans.iter().enumerate() {
        let mut reqs = Vec::new();
        for w in (c..watchers).step_by(chans.len()) {
            let mut req = pb::WatchCreateRequest {
                key: Bytes::copy_from_slice(prefix.as_bytes()),
                range_end: range_end(prefix),
                ..Default::default()
            };
            if filtered {
                req.index = "node".into();
                req.value = Bytes::from(format!("n{}", w as u64 % nodes));
            }
            reqs.push(create(req));
        }
        let (tx, mut rx) = open_stream(ch, reqs).await?;
        senders.push(tx);
        let (bytes, events, pr, created) = (
            bytes.clone(),
            events.clone(),
            progress_rev.clone(),
            created.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(s)) = rx.message().await {
                bytes.fetch_add(s.len as u64 + 5, Relaxed);
                events.fetch_add(u64::from(s.events), Relaxed);
                if s.created {
                    created.fetch_add(1, Relaxed);
                } else if s.watch_id == -1 && s.events == 0 {
                    pr[c].fetch_max(s.revision as u64, Relaxed);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while created.load(Relaxed) < watchers as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bytes.store(0, Relaxed);
    events.store(0, Relaxed);
    let cpu0 = procstat::sample(pid).map(|s| s.cpu_s).unwrap_or(0.0);
    let t0 = Instant::now();
    let (useful, last_rev) = move_entries(prm, store_ch, prefix, node_of, seed, t0).await;
    // Drain: every stream has answered a progress request at last_rev
    // (which it answers only once each of its watchers has everything).
    let deadline = Instant::now() + prm.drain_timeout;
    let mut drained = false;
    while Instant::now() < deadline {
        if progress_rev
            .iter()
            .all(|r| r.load(Relaxed) >= last_rev as u64)
        {
            drained = true;
            break;
        }
        for tx in &senders {
            let _ = tx.send(progress());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = procstat::sample(pid).map(|s| s.cpu_s).unwrap_or(0.0);
    drop(senders);
    for t in tasks {
        t.abort();
    }
    Ok(IndexRun {
        mode: match mode {
            Mode::Idle => "no watchers (applying the writes)",
            Mode::Filtered => "filtered (server-side index)",
            Mode::Whole => "whole prefix (client filters)",
        },
        gateway_cpu_s: cpu1 - cpu0,
        bytes: bytes.load(Relaxed),
        events: events.load(Relaxed),
        useful,
        drained,
        wall_s: wall,
    })
}

/// The writer: R puts/s for the duration, each moving a random entry to a
/// random node; returns the events a watcher filtering for its node needs
/// (all watchers) and the last revision written.
async fn move_entries(
    prm: &IndexBenchParams,
    store_ch: &Channel,
    prefix: &str,
    node_of: &mut [u64],
    seed: u64,
    t0: Instant,
) -> (u64, i64) {
    let nodes = prm.nodes.max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let total = (prm.rate * prm.duration.as_secs_f64()) as u64;
    let watchers_of = |n: u64| -> u64 {
        // Watcher w watches node w % nodes.
        let full = prm.watchers as u64 / nodes;
        full + u64::from(n < prm.watchers as u64 % nodes)
    };
    let mut useful = 0u64;
    let kv = conn::kv(store_ch);
    let mut last_rev = 0;
    let mut inflight = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / prm.rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let e = rng.random_range(0..prm.entries);
        let to = rng.random_range(0..nodes);
        let from = node_of[e as usize];
        node_of[e as usize] = to;
        useful += watchers_of(to) + if from != to { watchers_of(from) } else { 0 };
        let mut kvc = kv.clone();
        let req = pb::PutRequest {
            key: entry_key(prefix, e),
            value: node_value(to, prm.pad),
            ..Default::default()
        };
        inflight.push(async move { kvc.put(req).await });
        while inflight.len() >= 256 {
            if let Some(Ok(r)) = inflight.next().await {
                last_rev = last_rev.max(r.into_inner().header.map_or(0, |h| h.revision));
            }
        }
    }
    while let Some(r) = inflight.next().await {
        if let Ok(r) = r {
            last_rev = last_rev.max(r.into_inner().header.map_or(0, |h| h.revision));
        }
    }
    (useful, last_rev)
}

fn index_report(prm: &IndexBenchParams, runs: &[(IndexRun, IndexRun, IndexRun)]) -> String {
    let mut out = format!(
        "## index: {} entries over {} nodes, {} watchers on {} connections, {} puts/s for {:?}\n\n",
        prm.entries, prm.nodes, prm.watchers, prm.connections, prm.rate, prm.duration
    );
    out.push_str("| rep | mode | gateway CPU s | CPU µs / useful event | CPU above idle µs / useful event | bytes sent | events sent | useful events | drained | wall s |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let (mut cpu, mut marginal, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for (n, (i, f, w)) in runs.iter().enumerate() {
        for r in [i, f, w] {
            let useful = r.useful.max(1) as f64;
            out.push_str(&format!(
                "| {n} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {:.1} |\n",
                r.mode,
                r.gateway_cpu_s,
                r.gateway_cpu_s * 1e6 / useful,
                (r.gateway_cpu_s - i.gateway_cpu_s).max(0.0) * 1e6 / useful,
                r.bytes,
                r.events,
                r.useful,
                r.drained,
                r.wall_s
            ));
        }
        let per = |r: &IndexRun| r.gateway_cpu_s / r.useful.max(1) as f64;
        let above =
            |r: &IndexRun| (r.gateway_cpu_s - i.gateway_cpu_s).max(0.005) / r.useful.max(1) as f64;
        cpu.push(per(w) / per(f).max(1e-12));
        marginal.push(above(w) / above(f));
        bytes.push(w.bytes as f64 / f.bytes.max(1) as f64);
    }
    out.push_str(&format!(
        "\nMedian of {} runs, whole prefix / filtered: gateway CPU per useful event = **{:.1}x** (above the idle gateway applying the same writes: **{:.1}x**), bytes sent = **{:.0}x**\n",
        runs.len(),
        median(&mut cpu),
        median(&mut marginal),
        median(&mut bytes)
    ));
    out
}
