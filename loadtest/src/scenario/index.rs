//! Secondary-index benchmarks against real `lookout` processes, each mode
//! measured beside its baseline in the same run, on a fresh gateway per
//! mode (so peak RSS is that mode's own):
//!
//! - `index`: N JSON entries spread over M node values; W watchers each
//!   filtered to its node (server-side index) vs the same W watchers on the
//!   whole prefix (filtering on the client), a writer at R puts/s moving
//!   entries between nodes. Gateway CPU per useful event and bytes sent.
//!   The watchers share C connections (`--connections`): C = W is every
//!   agent its own client; fewer let the gateway hand a whole-prefix event
//!   to a connection's watchers in one write, a cheaper baseline.
//! - `initial`: I informers, each syncing K keys, with one initial-state
//!   watch vs list (paged) + watch from the list's revision + 1. Time until
//!   all are synced and the gateway's peak RSS.
//!
//! ```text
//!  lookout store (one) ─ preload (txns of 128 puts)
//!   per repetition, per mode: lookout gateway --index node@P=json:/node (fresh)
//!     clients: raw gRPC watch streams, responses scanned, never decoded
//!     ─> gateway CPU (/proc), bytes received, events, time, VmHWM
//! ```
//!
//! The clients only scan each response's top-level fields (flags, header
//! revision, number of events) and count bytes, so the load generator's
//! cost stays far below the gateway's even when every watcher receives the
//! whole prefix.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use lookout_proto::pb;
use lookout_testkit::{ChildGuard, free_port, spawn_logged};
use prost::encoding::decode_varint;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use crate::conn;
use crate::error::{LoadError, Result};
use crate::procstat;

// === a scanning codec: counts, never decodes ===

/// What the benchmarks need from a `WatchResponse`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan {
    /// Encoded message length.
    pub len: usize,
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub events: u32,
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct ScanCodec;

impl Codec for ScanCodec {
    type Encode = pb::WatchRequest;
    type Decode = Scan;
    type Encoder = <ProstCodec<pb::WatchRequest, pb::WatchResponse> as Codec>::Encoder;
    type Decoder = ScanDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<pb::WatchRequest, pb::WatchResponse>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ScanDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ScanDecoder;

impl Decoder for ScanDecoder {
    type Item = Scan;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut DecodeBuf<'_>,
    ) -> std::result::Result<Option<Scan>, tonic::Status> {
        let n = buf.remaining();
        let bytes = buf.copy_to_bytes(n);
        scan(&bytes)
            .map(Some)
            .ok_or_else(|| tonic::Status::internal("bad WatchResponse"))
    }
}

fn scan(mut b: &[u8]) -> Option<Scan> {
    let mut s = Scan {
        len: b.len(),
        ..Default::default()
    };
    while !b.is_empty() {
        let k = decode_varint(&mut b).ok()?;
        let (field, wire) = (k >> 3, k & 7);
        match wire {
            0 => {
                let v = decode_varint(&mut b).ok()?;
                match field {
                    2 => s.watch_id = v as i64,
                    3 => s.created = v != 0,
                    4 => s.canceled = v != 0,
                    _ => {}
                }
            }
            2 => {
                let len = decode_varint(&mut b).ok()? as usize;
                if len > b.len() {
                    return None;
                }
                let (v, rest) = b.split_at(len);
                b = rest;
                match field {
                    1 => s.revision = header_revision(v)?,
                    11 => s.events += 1,
                    _ => {}
                }
            }
            1 if b.len() >= 8 => b = &b[8..],
            5 if b.len() >= 4 => b = &b[4..],
            _ => return None,
        }
    }
    Some(s)
}

fn header_revision(mut b: &[u8]) -> Option<i64> {
    let mut rev = 0;
    while !b.is_empty() {
        let k = decode_varint(&mut b).ok()?;
        match k & 7 {
            0 => {
                let v = decode_varint(&mut b).ok()?;
                if k >> 3 == 3 {
                    rev = v as i64;
                }
            }
            _ => return None,
        }
    }
    Some(rev)
}

async fn open_stream(
    ch: &Channel,
    first: Vec<pb::WatchRequest>,
) -> Result<(
    mpsc::UnboundedSender<pb::WatchRequest>,
    tonic::Streaming<Scan>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for r in first {
        let _ = tx.send(r);
    }
    let mut grpc = tonic::client::Grpc::new(ch.clone()).max_decoding_message_size(512 << 20);
    grpc.ready()
        .await
        .map_err(|e| LoadError::InvalidArgument(format!("connection not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let s = grpc
        .streaming(
            tonic::Request::new(UnboundedReceiverStream::new(rx)),
            path,
            ScanCodec,
        )
        .await
        .map_err(|e| LoadError::InvalidArgument(format!("watch: {e}")))?
        .into_inner();
    Ok((tx, s))
}

fn create(req: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(req)),
    }
}

fn progress() -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        )),
    }
}

// === processes ===

/// A `lookout store` and fresh gateways in front of it.
struct Procs {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Kept for its Drop, which kills the store.
    _store: ChildGuard,
    store_endpoint: String,
}

impl Procs {
    async fn start(bin: &Path) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| LoadError::InvalidArgument(e.to_string()))?;
        let port = free_port();
        let store_endpoint = format!("127.0.0.1:{port}");
        let url = format!("http://{store_endpoint}");
        let mut cmd = std::process::Command::new(bin);
        cmd.env("RUST_LOG", "warn")
            .args(["store", "--name", "s1", "--data-dir"])
            .arg(dir.path().join("store"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ]);
        let store = spawn_logged(cmd, &dir.path().join("store.log"))
            .map_err(|e| LoadError::InvalidArgument(format!("spawn store: {e}")))?;
        wait_serving(&store_endpoint).await?;
        Ok(Self {
            bin: bin.to_path_buf(),
            dir,
            _store: store,
            store_endpoint,
        })
    }

    async fn gateway(&self, index: &str) -> Result<(ChildGuard, String)> {
        let port = free_port();
        let ep = format!("127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.env("RUST_LOG", "warn").args([
            "gateway",
            "--listen-addr",
            &ep,
            "--endpoints",
            &self.store_endpoint,
            "--index",
            index,
        ]);
        let g = spawn_logged(cmd, &self.dir.path().join(format!("gateway-{port}.log")))
            .map_err(|e| LoadError::InvalidArgument(format!("spawn gateway: {e}")))?;
        wait_serving(&ep).await?;
        Ok((g, ep))
    }
}

async fn wait_serving(ep: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if lookout_testkit::grpc_status(ep).await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(LoadError::InvalidArgument(format!(
        "{ep} did not serve in 60s"
    )))
}

fn node_value(node: u64, pad: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"node":"n{node}","spec":{{"pad":"{}"}}}}"#,
        "x".repeat(pad)
    ))
}

fn entry_key(prefix: &str, i: u64) -> Bytes {
    Bytes::from(format!("{prefix}e{i:07}"))
}

/// Writes `entries` keys in txns of 128 puts; returns the last revision.
async fn preload(
    ch: &Channel,
    prefix: &str,
    entries: u64,
    node_of: impl Fn(u64) -> u64,
    pad: usize,
) -> Result<i64> {
    let mut kv = conn::kv(ch);
    let mut rev = 0;
    let mut i = 0;
    while i < entries {
        let n = (entries - i).min(128);
        let ops = (i..i + n)
            .map(|j| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: entry_key(prefix, j),
                    value: node_value(node_of(j), pad),
                    ..Default::default()
                })),
            })
            .collect();
        let r = kv
            .txn(pb::TxnRequest {
                success: ops,
                ..Default::default()
            })
            .await
            .map_err(|e| LoadError::InvalidArgument(format!("preload: {e}")))?;
        rev = r.into_inner().header.map_or(rev, |h| h.revision);
        i += n;
    }
    Ok(rev)
}

fn range_end(prefix: &str) -> Bytes {
    crate::payload::prefix_range_end(&Bytes::copy_from_slice(prefix.as_bytes()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

// === index: filtered vs whole-prefix watchers ===

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
    // The writer: R puts/s, each moving a random entry to a random node.
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

// === initial: initial-state watches vs list + watch ===

/// `lookout-load initial` parameters.
#[derive(Debug, Clone)]
pub struct InitialBenchParams {
    pub bin: PathBuf,
    pub informers: usize,
    pub keys: u64,
    pub connections: usize,
    pub page_size: i64,
    pub pad: usize,
    pub repeat: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct InitialRun {
    pub mode: &'static str,
    pub synced: usize,
    pub sync_s: f64,
    pub rss_start: u64,
    pub peak_rss: u64,
    pub bytes: u64,
}

/// Runs `initial` and returns the markdown report.
///
/// # Errors
/// When a process or connection cannot be started.
pub async fn run_initial(prm: &InitialBenchParams) -> Result<String> {
    let procs = Procs::start(&prm.bin).await?;
    let prefix = "/bench/init/";
    let store_ch = conn::connect(&procs.store_endpoint).await?;
    let t = Instant::now();
    preload(&store_ch, prefix, prm.keys, |_| 0, prm.pad).await?;
    eprintln!("preloaded {} keys in {:?}", prm.keys, t.elapsed());
    let index = format!("node@{prefix}=json:/node");
    let mut runs = Vec::new();
    for rep in 0..prm.repeat {
        let mut pair = Vec::new();
        for initial in [true, false] {
            let (mut gw, ep) = procs.gateway(&index).await?;
            let r = initial_mode(prm, &ep, gw.pid(), prefix, initial).await?;
            eprintln!("rep {rep} {r:?}");
            gw.terminate(Duration::from_secs(5));
            pair.push(r);
        }
        let b = pair.pop().expect("two modes");
        let a = pair.pop().expect("two modes");
        runs.push((a, b));
    }
    Ok(initial_report(prm, &runs))
}

async fn initial_mode(
    prm: &InitialBenchParams,
    ep: &str,
    pid: u32,
    prefix: &str,
    initial: bool,
) -> Result<InitialRun> {
    let chans = conn::connect_many(ep, prm.connections.max(1)).await?;
    let rss_start = procstat::sample(pid).map(|s| s.rss_bytes).unwrap_or(0);
    let bytes = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..prm.informers {
        let ch = chans[i % chans.len()].clone();
        let bytes = bytes.clone();
        let prm = prm.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let key = Bytes::copy_from_slice(prefix.as_bytes());
            let end = range_end(&prefix);
            let mut got = 0u64;
            let req = if initial {
                pb::WatchCreateRequest {
                    key,
                    range_end: end,
                    initial_state: true,
                    ..Default::default()
                }
            } else {
                // list (paged, linearizable) then watch from revision + 1
                let mut kv = conn::kv(&ch);
                let mut from = key.clone();
                let mut rev = 0;
                loop {
                    let r = kv
                        .range(pb::RangeRequest {
                            key: from.clone(),
                            range_end: end.clone(),
                            limit: prm.page_size,
                            revision: rev,
                            ..Default::default()
                        })
                        .await
                        .ok()?
                        .into_inner();
                    bytes.fetch_add(prost::Message::encoded_len(&r) as u64, Relaxed);
                    rev = r.header.map_or(rev, |h| h.revision);
                    got += r.kvs.len() as u64;
                    let Some(last) = r.kvs.last() else { break };
                    if !r.more {
                        break;
                    }
                    let mut next = last.key.to_vec();
                    next.push(0);
                    from = Bytes::from(next);
                }
                pb::WatchCreateRequest {
                    key,
                    range_end: end,
                    start_revision: rev + 1,
                    ..Default::default()
                }
            };
            let (tx, mut rx) = open_stream(&ch, vec![create(req)]).await.ok()?;
            while let Ok(Some(s)) = rx.message().await {
                bytes.fetch_add(s.len as u64 + 5, Relaxed);
                got += u64::from(s.events);
                let synced = if initial {
                    !s.created && !s.canceled && s.events == 0 && s.watch_id >= 0
                } else {
                    s.created
                };
                if s.canceled {
                    return None;
                }
                if synced {
                    drop(tx);
                    return Some((t0.elapsed(), got));
                }
            }
            None
        }));
    }
    let mut synced = 0;
    let mut last = Duration::ZERO;
    let mut peak = 0u64;
    let deadline = tokio::time::Instant::now() + prm.timeout;
    for t in tasks {
        // Sample the gateway's RSS while waiting (VmHWM covers the gaps).
        if let Ok(Ok(Some((d, got)))) = tokio::time::timeout_at(deadline, t).await
            && got >= prm.keys
        {
            synced += 1;
            last = last.max(d);
        }
        if let Ok(s) = procstat::sample(pid) {
            peak = peak.max(s.hwm_bytes.max(s.rss_bytes));
        }
    }
    if let Ok(s) = procstat::sample(pid) {
        peak = peak.max(s.hwm_bytes);
    }
    Ok(InitialRun {
        mode: if initial {
            "initial-state watch"
        } else {
            "list + watch"
        },
        synced,
        sync_s: last.as_secs_f64(),
        rss_start,
        peak_rss: peak,
        bytes: bytes.load(Relaxed),
    })
}

fn initial_report(prm: &InitialBenchParams, runs: &[(InitialRun, InitialRun)]) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut out = format!(
        "## initial: {} informers x {} keys ({} B values), {} connections, list page {}\n\n",
        prm.informers,
        prm.keys,
        prm.pad + 30,
        prm.connections,
        prm.page_size
    );
    out.push_str("| rep | mode | synced | time to all synced s | gateway RSS before MiB | peak RSS MiB | peak - before MiB | bytes received |\n|---|---|---|---|---|---|---|---|\n");
    let (mut t, mut m, mut g) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (a, b)) in runs.iter().enumerate() {
        for r in [a, b] {
            out.push_str(&format!(
                "| {i} | {} | {}/{} | {:.2} | {:.1} | {:.1} | {:.1} | {} |\n",
                r.mode,
                r.synced,
                prm.informers,
                r.sync_s,
                mib(r.rss_start),
                mib(r.peak_rss),
                mib(r.peak_rss.saturating_sub(r.rss_start)),
                r.bytes
            ));
        }
        t.push(b.sync_s / a.sync_s.max(1e-9));
        m.push(b.peak_rss as f64 / a.peak_rss.max(1) as f64);
        g.push(
            b.peak_rss.saturating_sub(b.rss_start) as f64
                / a.peak_rss.saturating_sub(a.rss_start).max(1) as f64,
        );
    }
    out.push_str(&format!(
        "\nMedian of {} runs, list+watch / initial-state: time to all synced = **{:.2}x**, peak gateway RSS = **{:.2}x** (growth over the idle gateway: **{:.2}x**)\n",
        runs.len(),
        median(&mut t),
        median(&mut m),
        median(&mut g)
    ));
    out
}
