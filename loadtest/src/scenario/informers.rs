//! Informers: N clients list a prefix and watch from the list's revision + 1,
//! all at once; then a burst of writes every one of them must see exactly
//! once.
//!
//! ```text
//!  preload K keys ─> connect N clients ─> start! ─> each: list (pages) ─> watch(rev+1)
//!   ─> all synced (bounded) ─> burst of B puts ─> every informer drains to
//!   the newest revision ─> judge each against the store's history
//! ```
//!
//! [`run`] strings the phases together, one function each; the verdict
//! (result and problems) is built at the end from what they collected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lookout_proto::pb;
use lookout_testkit::checker::Truth;
use tokio::sync::watch;

use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::verdict::{add_outcome, cross_check_writer, rss_per_watcher};
use super::{ClientProc, RunCtx, p, wait_until};
use crate::conn;
use crate::error::{LoadError, Result};
use crate::hist::LatencyHist;
use crate::payload;
use crate::procstat::{ProcStats, ProcWatch};
use crate::progress::{Counters, Progress};
use crate::promscrape::{Scrapes, ServerMetrics};
use crate::result::{InformerStats, RunResult, WatchStats};
use crate::truth::{self, History};
use crate::watch::grpc::{self, StreamSpec};
use crate::watch::{self as w, Controls, Group, Signals, StreamLimits, StreamOutcome, WatchTarget};
use crate::writer::{self, WriterConfig, WriterReport};

/// Informer scenario parameters.
#[derive(Debug, Clone)]
pub struct InformerParams {
    pub clients: usize,
    /// Connections the clients share (0: one per client, like separate
    /// processes).
    pub connections: usize,
    /// Keys in the prefix before the informers start.
    pub keys: u64,
    pub value_size: usize,
    /// Puts after everyone is synced.
    pub burst: u64,
    /// Serializable lists (default: linearizable, as informers do).
    pub serializable: bool,
    /// List page size (0: one Range for the whole prefix).
    pub page_size: i64,
    pub sync_timeout: Duration,
    pub put_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_resumes: u32,
}

impl Default for InformerParams {
    fn default() -> Self {
        Self {
            clients: 100,
            connections: 0,
            keys: 1000,
            value_size: 256,
            burst: 100,
            serializable: false,
            page_size: 0,
            sync_timeout: Duration::from_secs(120),
            put_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_resumes: 5,
        }
    }
}

impl InformerParams {
    pub fn params(&self) -> BTreeMap<String, serde_json::Value> {
        let mut m = BTreeMap::new();
        m.insert("clients".into(), p(self.clients));
        m.insert("connections".into(), p(self.connections()));
        m.insert("keys".into(), p(self.keys));
        m.insert("value_size".into(), p(self.value_size));
        m.insert("burst".into(), p(self.burst));
        m.insert("serializable".into(), p(self.serializable));
        m.insert("page_size".into(), p(self.page_size));
        m
    }

    fn connections(&self) -> usize {
        if self.connections == 0 {
            self.clients
        } else {
            self.connections.min(self.clients)
        }
    }
}

/// What one informer's list saw.
#[derive(Debug, Default)]
struct ListOutcome {
    keys: u64,
    revision: i64,
    error: Option<String>,
}

/// One informer task's result: its list, its time to synced, its watcher.
type InformerOutcome = (ListOutcome, Option<Duration>, Option<StreamOutcome>);

/// Runs the informer scenario against `ctx`.
///
/// # Errors
/// Only when the run cannot start (no connection, failed preload).
pub async fn run(ctx: &RunCtx, prm: &InformerParams) -> Result<RunResult> {
    if prm.clients == 0 {
        return Err(LoadError::InvalidArgument("--clients must be > 0".into()));
    }
    let started = Instant::now();
    let loadavg_1m = super::loadavg_1m();
    let counters = Arc::new(Counters::default());
    let progress = Progress::new(ctx.progress, counters.clone());
    let client = ClientProc::start();
    let target = WatchTarget {
        key: ctx.prefix.clone(),
        range_end: payload::prefix_range_end(&ctx.prefix),
    };
    progress.phase("preload");
    let pre = preload(ctx, prm, &counters).await?;

    progress.phase("connect");
    let chans = conn::connect_many(&ctx.endpoint, prm.connections()).await?;
    let server_watch = ProcWatch::start(&ctx.server_pids);
    let rss_before = server_watch.rss_each();
    let scrapes = Scrapes::start(&ctx.metrics_endpoints).await;
    let (controls, sig) = w::signals(counters.clone());
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let tasks = spawn_informers(ctx, prm, &chans, &target, &sig, &go_rx);

    progress.phase("sync");
    let sync = sync(ctx, prm, &counters, &tasks, &go_tx, &server_watch).await;
    progress.phase("burst");
    let burst = burst(ctx, prm, &pre, &target, &counters, &controls).await;
    progress.phase("drain");
    let drain_t = Instant::now();
    let drained = wait_until(prm.drain_timeout, &ctx.stop, || {
        Counters::get(&counters.watchers_done) >= sync.synced
            || tasks.iter().all(|t| t.is_finished())
    })
    .await;
    let drain_s = drain_t.elapsed().as_secs_f64();
    controls.stop.cancel();

    let joined = join(tasks).await;
    let servers = server_watch.finish();
    let server_metrics = scrapes.finish().await;
    drop((chans, pre.writer_ch));
    // Asked again with the informers gone (see fanout: late-applied puts).
    let head = match conn::prefix_head(&pre.truth_ch, &target.key, &target.range_end).await {
        Ok((h, _)) => h.max(burst.drain_head),
        Err(_) => burst.drain_head,
    };

    progress.phase("verify");
    let history = verify(ctx, &target, &joined.lists, pre.head, &burst.report, head).await;
    drop(progress);

    let mut res = verdict(Collected {
        ctx,
        prm,
        joined: &joined,
        history: &history,
        burst: &burst.report,
        head,
        preload_head: pre.head,
        sync: &sync,
        drained,
        drain_s,
        rss_before: &rss_before,
        servers,
        server_metrics,
    });
    res.client = client.finish();
    res.duration_s = started.elapsed().as_secs_f64();
    res.loadavg_1m = loadavg_1m;
    Ok(res)
}

/// The store and writer connections, and the prefix written before the
/// informers start.
struct Preloaded {
    truth_ch: Channel,
    writer_ch: Vec<Channel>,
    /// Revision of the last preloaded key.
    head: i64,
}

/// Writes the K keys every informer lists.
async fn preload(
    ctx: &RunCtx,
    prm: &InformerParams,
    counters: &Arc<Counters>,
) -> Result<Preloaded> {
    let truth_ch = conn::connect(&ctx.truth_endpoint).await?;
    let writer_ch = vec![conn::connect(&ctx.endpoint).await?];
    let cfg = WriterConfig {
        prefix: ctx.prefix.clone(),
        keys: prm.keys,
        value_size: prm.value_size,
        total: prm.keys,
        rate: None,
        put_timeout: prm.put_timeout,
        max_inflight: 64,
        first_seq: 0,
    };
    let pre = writer::run(&writer_ch, &cfg, counters.clone(), ctx.stop.clone()).await;
    if pre.acked != prm.keys {
        return Err(LoadError::Target {
            target: ctx.target.clone(),
            reason: format!(
                "preload: {} of {} puts acknowledged ({:?})",
                pre.acked, prm.keys, pre.errors
            ),
        });
    }
    Ok(Preloaded {
        truth_ch,
        writer_ch,
        head: pre.max_acked_rev(),
    })
}

/// One task per informer: it waits for the common start, lists the prefix,
/// then watches from the list's revision + 1 until told to stop.
fn spawn_informers(
    ctx: &RunCtx,
    prm: &InformerParams,
    chans: &[Channel],
    target: &WatchTarget,
    sig: &Signals,
    go_rx: &watch::Receiver<Option<Instant>>,
) -> Vec<JoinHandle<InformerOutcome>> {
    let limits = StreamLimits {
        setup_timeout: prm.sync_timeout,
        max_resumes: prm.max_resumes,
        live_from_unix_ns: payload::now_unix_ns(),
        reach_rev: None,
    };
    let mut tasks = Vec::with_capacity(prm.clients);
    for i in 0..prm.clients {
        let ch = chans[i % chans.len()].clone();
        let mut go = go_rx.clone();
        let sig = sig.clone();
        let target = target.clone();
        let prm = prm.clone();
        let stop = ctx.stop.clone();
        tasks.push(tokio::spawn(async move {
            // Everyone waits for the same start.
            let t0 = loop {
                if let Some(t) = *go.borrow() {
                    break t;
                }
                tokio::select! {
                    _ = w::next_value(&mut go) => {}
                    _ = stop.cancelled() => return (ListOutcome::default(), None, None),
                }
            };
            let list = list_prefix(&ch, &target, &prm).await;
            if list.error.is_some() {
                return (list, None, None);
            }
            let spec = StreamSpec {
                channel: ch,
                target,
                watchers: 1,
                start_rev: list.revision + 1,
                group: Group::Normal,
                stall: None,
                switch: None,
            };
            let out = grpc::run_stream(spec, limits, sig).await;
            let sync = out.ready_at.map(|r| r.duration_since(t0));
            (list, sync, Some(out))
        }));
    }
    tasks
}

/// How the informers synced.
struct Sync {
    all: bool,
    /// From the common start until the last informer was synced.
    all_synced_s: f64,
    synced: u64,
    /// Server RSS once they were synced, per measured process.
    rss_synced: Vec<u64>,
}

/// Starts every informer at once and waits (bounded) until all are synced.
async fn sync(
    ctx: &RunCtx,
    prm: &InformerParams,
    counters: &Counters,
    tasks: &[JoinHandle<InformerOutcome>],
    go_tx: &watch::Sender<Option<Instant>>,
    server_watch: &ProcWatch,
) -> Sync {
    let t0 = Instant::now();
    let _ = go_tx.send(Some(t0));
    let all = wait_until(prm.sync_timeout + Duration::from_secs(1), &ctx.stop, || {
        Counters::get(&counters.watchers_ready) >= prm.clients as u64
            || tasks.iter().all(|t| t.is_finished())
    })
    .await;
    Sync {
        all,
        all_synced_s: t0.elapsed().as_secs_f64(),
        synced: Counters::get(&counters.watchers_ready),
        rss_synced: server_watch.rss_each(),
    }
}

/// The burst and the revision every informer must then reach.
struct Burst {
    report: WriterReport,
    drain_head: i64,
}

/// B puts as fast as they go, then tells the informers the revision they
/// must reach.
async fn burst(
    ctx: &RunCtx,
    prm: &InformerParams,
    pre: &Preloaded,
    target: &WatchTarget,
    counters: &Arc<Counters>,
    controls: &Controls,
) -> Burst {
    let cfg = WriterConfig {
        prefix: ctx.prefix.clone(),
        keys: prm.keys,
        value_size: prm.value_size,
        total: prm.burst,
        rate: None,
        put_timeout: prm.put_timeout,
        max_inflight: prm.burst.max(1) as usize,
        first_seq: prm.keys,
    };
    let _ = controls
        .writer_started
        .send(Some(tokio::time::Instant::now()));
    let report = writer::run(&pre.writer_ch, &cfg, counters.clone(), ctx.stop.clone()).await;
    let drain_head = match conn::prefix_head(&pre.truth_ch, &target.key, &target.range_end).await {
        Ok((h, _)) => h.max(report.max_acked_rev()),
        Err(_) => report.max_acked_rev().max(pre.head),
    };
    let _ = controls.target.send(drain_head);
    Burst { report, drain_head }
}

/// What the informer tasks handed back.
struct Joined {
    lists: Vec<ListOutcome>,
    sync_hist: LatencyHist,
    outcomes: Vec<StreamOutcome>,
    /// Tasks that did not end within 10 s of being told to stop.
    stuck: u64,
}

/// Collects lists, sync times and stream outcomes (bounded).
async fn join(tasks: Vec<JoinHandle<InformerOutcome>>) -> Joined {
    let mut j = Joined {
        lists: Vec::new(),
        sync_hist: LatencyHist::new(),
        outcomes: Vec::new(),
        stuck: 0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for mut t in tasks {
        match tokio::time::timeout_at(deadline, &mut t).await {
            Ok(Ok((list, sync, out))) => {
                if let Some(s) = sync {
                    j.sync_hist.record_ns(s.as_nanos() as u64);
                }
                j.lists.push(list);
                j.outcomes.extend(out);
            }
            _ => {
                t.abort();
                j.stuck += 1;
            }
        }
    }
    j
}

/// Reads the store's history from the oldest informer's start; the burst's
/// acknowledgements stand in when it cannot be read.
async fn verify(
    ctx: &RunCtx,
    target: &WatchTarget,
    lists: &[ListOutcome],
    preload_head: i64,
    burst: &WriterReport,
    head: i64,
) -> History {
    let from = lists
        .iter()
        .filter(|l| l.error.is_none())
        .map(|l| l.revision + 1)
        .min()
        .unwrap_or(preload_head + 1);
    let read = truth::read_history(
        &ctx.truth_endpoint,
        target,
        from,
        head,
        Duration::from_secs(60),
    )
    .await;
    match read {
        Ok(h) => h,
        Err(e) => History {
            truth: Truth::from_revisions(burst.acked_revisions()),
            seq_rev: Default::default(),
            source: format!("writer acknowledgements only: {e}"),
        },
    }
}

/// Everything the phases collected, for the verdict.
struct Collected<'a> {
    ctx: &'a RunCtx,
    prm: &'a InformerParams,
    joined: &'a Joined,
    history: &'a History,
    burst: &'a WriterReport,
    head: i64,
    /// Revision of the last preloaded key (what every list must reach).
    preload_head: i64,
    sync: &'a Sync,
    drained: bool,
    drain_s: f64,
    rss_before: &'a [u64],
    servers: Vec<ProcStats>,
    server_metrics: BTreeMap<String, ServerMetrics>,
}

/// Judges every informer and builds the result (the caller adds the load
/// generator's own figures).
fn verdict(c: Collected<'_>) -> RunResult {
    let prm = c.prm;
    let mut res = RunResult {
        scenario: "informers".into(),
        target: c.ctx.target.clone(),
        endpoint: c.ctx.endpoint.clone(),
        params: prm.params(),
        command: c.ctx.command.clone(),
        sustained: true,
        setup_s: Some(c.sync.all_synced_s),
        drain_s: Some(c.drain_s),
        servers: c.servers.clone(),
        server_metrics: c.server_metrics.clone(),
        truth: c.history.source.clone(),
        ..RunResult::default()
    };
    let mut bstats = c.burst.stats();
    cross_check_writer(c.burst, c.history, &mut bstats);
    let lists = &c.joined.lists;
    let list_errors = lists.iter().filter(|l| l.error.is_some()).count() as u64;
    let list_mismatch = lists
        .iter()
        .filter(|l| l.error.is_none() && (l.keys != prm.keys || l.revision < c.preload_head))
        .count() as u64;
    let ws = judge_informers(&c);
    problems(&c, &ws, &bstats, list_errors, list_mismatch, &mut res);
    if c.sync.synced > 0 {
        let per = rss_per_watcher(
            &res.servers,
            c.rss_before,
            &c.sync.rss_synced,
            c.sync.synced,
        );
        res.rss_per_watcher_bytes.extend(per.collect::<Vec<_>>());
    }
    let all_synced_s = c.sync.all_synced_s;
    res.informers = Some(InformerStats {
        clients: prm.clients as u64,
        synced: c.sync.synced,
        all_synced_s,
        sync_latency: c.joined.sync_hist.summary(),
        list_mismatch,
        list_errors,
        keys_listed_per_s: if all_synced_s > 0.0 {
            (lists.iter().map(|l| l.keys).sum::<u64>()) as f64 / all_synced_s
        } else {
            0.0
        },
        burst_latency: ws.latency.clone(),
        burst_puts: prm.burst,
    });
    res.latency = ws.latency.clone();
    res.watch.insert("informers".into(), ws);
    res.writer = Some(bstats);
    res
}

/// Every informer's watcher judged against the store's history.
fn judge_informers(c: &Collected<'_>) -> WatchStats {
    let prm = c.prm;
    let mut ws = WatchStats {
        watchers: prm.clients as u64,
        connections: prm.connections() as u64,
        streams: prm.clients as u64,
        ..WatchStats::default()
    };
    let mut lat = LatencyHist::new();
    for o in &c.joined.outcomes {
        ws.not_caught_up += add_outcome(&mut ws, &mut lat, o, c.history, c.head);
    }
    ws.latency = lat.summary();
    let window = c
        .burst
        .finished
        .duration_since(c.burst.started)
        .as_secs_f64()
        + c.drain_s;
    ws.deliveries_per_s = if window > 0.0 {
        ws.checks.events as f64 / window
    } else {
        0.0
    };
    ws
}

/// The problems, in the order a reader wants them.
fn problems(
    c: &Collected<'_>,
    ws: &WatchStats,
    bstats: &crate::writer::WriterStats,
    list_errors: u64,
    list_mismatch: u64,
    res: &mut RunResult,
) {
    let prm = c.prm;
    if !c.history.truth.has_digest() {
        res.problem(format!(
            "could not read the store's history: {}",
            c.history.source
        ));
    }
    if c.joined.stuck > 0 {
        res.problem(format!("{} informer tasks did not stop", c.joined.stuck));
    }
    if list_errors > 0 {
        let first = c
            .joined
            .lists
            .iter()
            .find_map(|l| l.error.clone())
            .unwrap_or_default();
        res.problem(format!("{list_errors} lists failed: {first}"));
    }
    if list_mismatch > 0 {
        res.problem(format!(
            "{list_mismatch} lists returned the wrong keys or revision"
        ));
    }
    let synced = c.sync.synced;
    if !c.sync.all || synced < prm.clients as u64 {
        res.problem(format!(
            "{synced} of {} informers synced within {:.0}s",
            prm.clients,
            prm.sync_timeout.as_secs_f64()
        ));
    }
    if bstats.timed_out + bstats.failed > 0 {
        res.problem(format!(
            "{} burst puts timed out, {} failed",
            bstats.timed_out, bstats.failed
        ));
    }
    if bstats.acked_lost > 0 {
        res.problem(format!(
            "{} acknowledged puts are not in the store's history",
            bstats.acked_lost
        ));
    }
    let not_caught = ws.not_caught_up;
    if !c.drained || not_caught > 0 {
        res.problem(format!(
            "{not_caught} informers had not seen the whole burst after {:.0}s (events late)",
            prm.drain_timeout.as_secs_f64()
        ));
    }
    check_problems(ws, res);
}

/// The checker's verdicts as problems.
fn check_problems(ws: &WatchStats, res: &mut RunResult) {
    let c = &ws.checks;
    if c.missing + c.duplicates + c.out_of_order + c.unexpected + c.content_mismatch > 0 {
        res.problem(format!(
            "informers: {} missing, {} duplicate, {} out of order, {} unexpected, {} altered",
            c.missing, c.duplicates, c.out_of_order, c.unexpected, c.content_mismatch
        ));
    }
    if c.undelivered > 0 {
        res.problem(format!(
            "informers: {} burst events not delivered when the run stopped waiting",
            c.undelivered
        ));
    }
    if c.lost + c.cancelled > 0 {
        res.problem(format!(
            "informers: {} lost their stream, {} cancelled",
            c.lost, c.cancelled
        ));
    }
    if c.bad_cancels + c.bad_progress > 0 {
        res.problem(format!(
            "informers: {} compaction cancels at or below a received revision, {} untrue progress notifications",
            c.bad_cancels, c.bad_progress
        ));
    }
}

/// Lists the prefix in pages (or at once) at one revision, counting keys.
async fn list_prefix(
    ch: &tonic::transport::Channel,
    target: &WatchTarget,
    prm: &InformerParams,
) -> ListOutcome {
    let mut kv = conn::kv(ch);
    let mut out = ListOutcome::default();
    let mut key: Bytes = target.key.clone();
    // Pages after the first read at the first page's revision, so the list
    // is one consistent snapshot (as Kubernetes' pager does).
    let mut rev = 0;
    // Bounded: each page advances `key`, and there are at most `keys` keys.
    for _ in 0..=prm.keys.max(1) {
        let req = pb::RangeRequest {
            key: key.clone(),
            range_end: target.range_end.clone(),
            limit: prm.page_size,
            revision: rev,
            serializable: prm.serializable,
            ..Default::default()
        };
        let resp = match tokio::time::timeout(prm.sync_timeout, kv.range(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                out.error = Some(format!("{:?}: {}", s.code(), s.message()));
                return out;
            }
            Err(_) => {
                out.error = Some("list timed out".into());
                return out;
            }
        };
        if rev == 0 {
            rev = resp.header.map(|h| h.revision).unwrap_or(0);
            out.revision = rev;
        }
        out.keys += resp.kvs.len() as u64;
        match (resp.more, resp.kvs.last()) {
            (true, Some(last)) => {
                let mut next = last.key.to_vec();
                next.push(0);
                key = Bytes::from(next);
            }
            _ => return out,
        }
    }
    out.error = Some("list did not finish".into());
    out
}
