//! Plain request throughput: `put` and `range`, closed loop, like etcd's own
//! `benchmark put` / `benchmark range`.
//!
//! ```text
//!  [range: preload K keys] ─> C connections, N clients (each a loop of
//!  request ─> response) ─> `total` requests in all ─> latency, ops/s
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lookout_proto::pb;

use super::{ClientProc, RunCtx, p};
use crate::conn;
use crate::error::{LoadError, Result};
use crate::hist::LatencyHist;
use crate::payload;
use crate::procstat::ProcWatch;
use crate::progress::{Counters, Progress};
use crate::result::{OpsStats, RunResult};

/// Which request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Range,
}

/// put / range parameters.
#[derive(Debug, Clone)]
pub struct OpsParams {
    pub op: Op,
    pub clients: usize,
    pub connections: usize,
    pub total: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Distinct keys: put cycles over them; range preloads them and reads
    /// one at random per request.
    pub keys: u64,
    pub serializable: bool,
    /// Range the whole prefix instead of one key per request.
    pub whole_prefix: bool,
    pub timeout: Duration,
}

impl Default for OpsParams {
    fn default() -> Self {
        Self {
            op: Op::Put,
            clients: 10,
            connections: 1,
            total: 10_000,
            key_size: 32,
            value_size: 256,
            keys: 1000,
            serializable: false,
            whole_prefix: false,
            timeout: Duration::from_secs(10),
        }
    }
}

impl OpsParams {
    pub fn params(&self) -> BTreeMap<String, serde_json::Value> {
        let mut m = BTreeMap::new();
        m.insert("clients".into(), p(self.clients));
        m.insert("connections".into(), p(self.connections));
        m.insert("total".into(), p(self.total));
        m.insert("key_size".into(), p(self.key_size));
        m.insert("value_size".into(), p(self.value_size));
        m.insert("keys".into(), p(self.keys));
        if self.op == Op::Range {
            m.insert("serializable".into(), p(self.serializable));
            m.insert("whole_prefix".into(), p(self.whole_prefix));
        }
        m
    }
}

/// A key of exactly `size` bytes (when the prefix leaves room) for index `i`.
fn key(prefix: &[u8], i: u64, size: usize) -> Bytes {
    let width = size.saturating_sub(prefix.len()).max(8);
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{i:0width$}").as_bytes());
    Bytes::from(k)
}

/// xorshift64*: a cheap per-client random key picker (no shared state).
fn next_rand(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[derive(Debug, Default)]
struct ClientOut {
    latency: LatencyHist,
    ok: u64,
    errors: u64,
    timeouts: u64,
    kinds: BTreeMap<String, u64>,
}

/// Runs `put` or `range` against `ctx`.
///
/// # Errors
/// When no connection can be made, or the range preload fails.
pub async fn run(ctx: &RunCtx, prm: &OpsParams) -> Result<RunResult> {
    if prm.clients == 0 || prm.connections == 0 {
        return Err(LoadError::InvalidArgument(
            "--clients and --connections must be > 0".into(),
        ));
    }
    let started = Instant::now();
    let loadavg_1m = super::loadavg_1m();
    let counters = Arc::new(Counters::default());
    let progress = Progress::new(ctx.progress, counters.clone());
    let client = ClientProc::start();
    let chans = conn::connect_many(&ctx.endpoint, prm.connections).await?;
    let keys = prm.keys.max(1);
    if prm.op == Op::Range {
        progress.phase("preload");
        preload(&chans[0], ctx, prm, keys).await?;
    }
    progress.phase(match prm.op {
        Op::Put => "put",
        Op::Range => "range",
    });
    let server_watch = ProcWatch::start(&ctx.server_pids);
    // Claimed one request at a time so clients share `total` exactly.
    let issued = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(prm.clients);
    for c in 0..prm.clients {
        let client = Client {
            kv: conn::kv(&chans[c % chans.len()]),
            issued: issued.clone(),
            counters: counters.clone(),
            prm: prm.clone(),
            prefix: ctx.prefix.clone(),
            stop: ctx.stop.clone(),
            seed: 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            keys,
        };
        tasks.push(tokio::spawn(client.run()));
    }
    let (lat, mut stats) = collect(prm, tasks).await;
    let secs = t0.elapsed().as_secs_f64();
    stats.ops_per_s = if secs > 0.0 {
        stats.ok as f64 / secs
    } else {
        0.0
    };
    let servers = server_watch.finish();
    drop(progress);
    let mut res = RunResult {
        scenario: match prm.op {
            Op::Put => "put",
            Op::Range => "range",
        }
        .into(),
        target: ctx.target.clone(),
        endpoint: ctx.endpoint.clone(),
        params: prm.params(),
        command: ctx.command.clone(),
        sustained: true,
        latency: lat.summary(),
        servers,
        ..RunResult::default()
    };
    if stats.errors + stats.timeouts > 0 {
        res.problem(format!(
            "{} errors, {} timeouts",
            stats.errors, stats.timeouts
        ));
    }
    if ctx.stop.is_cancelled() {
        res.problem("interrupted");
    }
    res.ops = Some(stats);
    res.client = client.finish();
    res.duration_s = started.elapsed().as_secs_f64();
    res.loadavg_1m = loadavg_1m;
    Ok(res)
}

/// One closed-loop client: a request at a time until `total` are claimed.
struct Client {
    kv: pb::kv_client::KvClient<tonic::transport::Channel>,
    /// Claimed one request at a time so clients share `total` exactly.
    issued: Arc<AtomicU64>,
    counters: Arc<Counters>,
    prm: OpsParams,
    prefix: Bytes,
    stop: tokio_util::sync::CancellationToken,
    /// This client's random key sequence.
    seed: u64,
    keys: u64,
}

impl Client {
    async fn run(mut self) -> ClientOut {
        let mut out = ClientOut::default();
        loop {
            let n = self.issued.fetch_add(1, Ordering::Relaxed);
            if n >= self.prm.total || self.stop.is_cancelled() {
                return out;
            }
            let t = Instant::now();
            match self.request(n).await {
                Ok(Ok(())) => {
                    out.ok += 1;
                    out.latency.record_ns(t.elapsed().as_nanos() as u64);
                    Counters::add(&self.counters.puts_acked, 1);
                }
                Ok(Err(s)) => {
                    out.errors += 1;
                    *out.kinds
                        .entry(format!("{:?}: {}", s.code(), s.message()))
                        .or_default() += 1;
                    Counters::add(&self.counters.puts_failed, 1);
                }
                Err(_) => {
                    out.timeouts += 1;
                    Counters::add(&self.counters.puts_failed, 1);
                }
            }
        }
    }

    /// Request number `n`, bounded by the timeout.
    async fn request(
        &mut self,
        n: u64,
    ) -> Result<Result<(), tonic::Status>, tokio::time::error::Elapsed> {
        let (prm, prefix, keys) = (&self.prm, &self.prefix, self.keys);
        match prm.op {
            Op::Put => {
                let req = pb::PutRequest {
                    key: key(prefix, n % keys, prm.key_size),
                    value: payload::encode(n, prm.value_size),
                    ..Default::default()
                };
                tokio::time::timeout(prm.timeout, self.kv.put(req))
                    .await
                    .map(|r| r.map(|_| ()))
            }
            Op::Range => {
                let req = if prm.whole_prefix {
                    pb::RangeRequest {
                        key: prefix.clone(),
                        range_end: payload::prefix_range_end(prefix),
                        serializable: prm.serializable,
                        ..Default::default()
                    }
                } else {
                    pb::RangeRequest {
                        key: key(prefix, next_rand(&mut self.seed) % keys, prm.key_size),
                        serializable: prm.serializable,
                        ..Default::default()
                    }
                };
                tokio::time::timeout(prm.timeout, self.kv.range(req))
                    .await
                    .map(|r| r.map(|_| ()))
            }
        }
    }
}

/// Joins the clients and sums what they measured.
async fn collect(
    prm: &OpsParams,
    tasks: Vec<tokio::task::JoinHandle<ClientOut>>,
) -> (LatencyHist, OpsStats) {
    let mut lat = LatencyHist::new();
    let mut stats = OpsStats {
        total: prm.total,
        ..OpsStats::default()
    };
    for t in tasks {
        // Each client ends after at most one request past `total`, each
        // bounded by `timeout`.
        if let Ok(o) = t.await {
            lat.merge(&o.latency);
            stats.ok += o.ok;
            stats.errors += o.errors;
            stats.timeouts += o.timeouts;
            for (k, v) in o.kinds {
                *stats.error_kinds.entry(k).or_default() += v;
            }
        }
    }
    (lat, stats)
}

async fn preload(
    ch: &tonic::transport::Channel,
    ctx: &RunCtx,
    prm: &OpsParams,
    keys: u64,
) -> Result<()> {
    use futures::StreamExt;
    let kv = conn::kv(ch);
    let results: Vec<_> = futures::stream::iter(0..keys)
        .map(|i| {
            let mut kv = kv.clone();
            let req = pb::PutRequest {
                key: key(&ctx.prefix, i, prm.key_size),
                value: payload::encode(i, prm.value_size),
                ..Default::default()
            };
            async move { tokio::time::timeout(prm.timeout, kv.put(req)).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let failed = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
    if failed > 0 {
        return Err(LoadError::Target {
            target: ctx.target.clone(),
            reason: format!("range preload: {failed} of {keys} puts failed"),
        });
    }
    Ok(())
}
