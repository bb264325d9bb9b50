//! Fan-out and its variants: W watchers on one prefix, a writer at R puts/s
//! over K keys, every delivered event checked and timed.
//!
//! ```text
//!  connect C (+ slow) conns ─> base rev ─> [catchup: preload N puts]
//!   ─> spawn streams (W/C/S watchers each, from base+1 or head-N+1)
//!   ─> all created? (setup deadline) ─> RSS per watcher
//!   ─> writer for T ─> target = newest revision of the prefix
//!   ─> watchers drain to target (drain deadline) ─> stop, join
//!   ─> read the store's history ─> judge every watcher ─> RunResult
//! ```
//!
//! Variants: `slow` puts a fraction of the watchers on their own connections
//! that stop reading for a while; `http` puts a fraction on HTTP NDJSON
//! streams; `catchup` starts the watchers N revisions behind head.
//!
//! [`run`] strings the phases together, one function each, in the order
//! above; `verdict` turns what they collected into the result and its
//! problems.

mod verdict;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout_testkit::checker::Truth;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{ClientProc, RunCtx, p, secs, wait_until};
use crate::conn;
use crate::error::{LoadError, Result};
use crate::payload;
use crate::procstat::ProcWatch;
use crate::progress::{Counters, Progress};
use crate::promscrape::Scrapes;
use crate::result::RunResult;
use crate::truth::{self, History};
use crate::watch::grpc::{self, StreamSpec};
use crate::watch::http::{self, HttpApi, HttpSpec};
use crate::watch::{
    self as w, Controls, Group, Signals, Stall, StreamLimits, StreamOutcome, WatchTarget,
};
use crate::writer::{self, WriterConfig, WriterReport};

/// Parameters shared by fanout, slow, http and catchup.
#[derive(Debug, Clone)]
pub struct FanoutParams {
    pub watchers: usize,
    pub connections: usize,
    /// Watch streams per connection; watchers are spread over all streams.
    pub streams_per_connection: usize,
    /// Puts per second (0 = no live writer, catch-up only).
    pub rate: f64,
    pub keys: u64,
    pub value_size: usize,
    pub duration: Duration,
    pub writer_connections: usize,
    pub put_timeout: Duration,
    pub max_inflight: usize,
    pub setup_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_resumes: u32,
    pub slow: Option<SlowParams>,
    pub http: Option<HttpParams>,
    pub catchup: Option<CatchupParams>,
    pub failover: Option<FailoverParams>,
}

impl Default for FanoutParams {
    fn default() -> Self {
        Self {
            watchers: 100,
            connections: 1,
            streams_per_connection: 1,
            rate: 100.0,
            keys: 1000,
            value_size: 256,
            duration: Duration::from_secs(10),
            writer_connections: 1,
            put_timeout: Duration::from_secs(10),
            max_inflight: 10_000,
            setup_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_resumes: 5,
            slow: None,
            http: None,
            catchup: None,
            failover: None,
        }
    }
}

/// Every watch stream is killed mid-run and its watchers resume on another
/// endpoint (a second gateway in front of the same store) from their last
/// revision + 1; the checker then finds any gap or duplicate.
#[derive(Debug, Clone)]
pub struct FailoverParams {
    /// From the writer's start.
    pub after: Duration,
    /// "host:port" of the other front end (filled in per target by compare).
    pub endpoint: String,
}

/// A fraction of watchers that stop reading.
#[derive(Debug, Clone, Copy)]
pub struct SlowParams {
    pub fraction: f64,
    /// From the writer's start.
    pub after: Duration,
    pub for_: Duration,
}

/// A fraction of watchers on HTTP streams.
#[derive(Debug, Clone)]
pub struct HttpParams {
    pub fraction: f64,
    pub api: HttpApi,
    /// "host:port" serving the HTTP API.
    pub addr: String,
}

/// Watchers start this many revisions behind head.
#[derive(Debug, Clone, Copy)]
pub struct CatchupParams {
    pub behind: u64,
}

impl FanoutParams {
    /// The scenario's name in results.
    pub fn scenario(&self) -> &'static str {
        if self.catchup.is_some() {
            "catchup"
        } else if self.failover.is_some() {
            "failover"
        } else if self.slow.is_some() {
            "slow"
        } else if self.http.is_some() {
            "http"
        } else {
            "fanout"
        }
    }

    /// Puts the live writer sends.
    fn live_total(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }

    fn split(&self) -> Split {
        let w = self.watchers;
        let share = |f: f64| -> usize {
            if f <= 0.0 || w == 0 {
                0
            } else {
                ((w as f64 * f).round() as usize).clamp(1, w)
            }
        };
        let slow = self.slow.map(|s| share(s.fraction)).unwrap_or(0);
        let http = self
            .http
            .as_ref()
            .map(|h| share(h.fraction))
            .unwrap_or(0)
            .min(w - slow);
        let normal = w - slow - http;
        let c = self.connections.max(1);
        let slow_conns = if slow == 0 {
            0
        } else {
            let f = self.slow.map(|s| s.fraction).unwrap_or(0.0);
            ((c as f64 * f).round() as usize).clamp(1, slow)
        };
        let normal_conns = if normal == 0 {
            0
        } else {
            c.saturating_sub(slow_conns).clamp(1, normal)
        };
        Split {
            normal,
            slow,
            http,
            normal_conns,
            slow_conns,
        }
    }

    /// The parameters as a map for results and tables.
    pub fn params(&self) -> BTreeMap<String, serde_json::Value> {
        let mut m = BTreeMap::new();
        m.insert("watchers".into(), p(self.watchers));
        m.insert("connections".into(), p(self.connections));
        m.insert(
            "streams_per_connection".into(),
            p(self.streams_per_connection),
        );
        m.insert("rate".into(), p(self.rate));
        m.insert("keys".into(), p(self.keys));
        m.insert("value_size".into(), p(self.value_size));
        m.insert("duration_s".into(), p(secs(self.duration)));
        if let Some(s) = self.slow {
            m.insert("slow_fraction".into(), p(s.fraction));
            m.insert("slow_after_s".into(), p(secs(s.after)));
            m.insert("slow_for_s".into(), p(secs(s.for_)));
        }
        if let Some(h) = &self.http {
            m.insert("http_fraction".into(), p(h.fraction));
            m.insert("http_api".into(), p(h.api));
        }
        if let Some(c) = self.catchup {
            m.insert("behind".into(), p(c.behind));
        }
        if let Some(f) = &self.failover {
            m.insert("switch_after_s".into(), p(secs(f.after)));
            m.insert("resume_endpoint".into(), p(&f.endpoint));
        }
        m
    }
}

#[derive(Debug, Clone, Copy)]
struct Split {
    normal: usize,
    slow: usize,
    http: usize,
    normal_conns: usize,
    slow_conns: usize,
}

/// Runs fan-out (or slow / http / catchup) against `ctx`.
///
/// # Errors
/// Only when the run cannot start (no connection, no base revision, a failed
/// preload). A target that falls over mid-run is a result, not an error.
pub async fn run(ctx: &RunCtx, prm: &FanoutParams) -> Result<RunResult> {
    if prm.watchers == 0 {
        return Err(LoadError::InvalidArgument("--watchers must be > 0".into()));
    }
    let started = Instant::now();
    let loadavg_1m = super::loadavg_1m();
    let counters = Arc::new(Counters::default());
    let progress = Progress::new(ctx.progress, counters.clone());
    progress.phase("connect");
    let client = ClientProc::start();
    let mut run = Run::connect(ctx, prm, counters.clone()).await?;
    let start = run.preload(&progress).await?;

    let server_watch = ProcWatch::start(&ctx.server_pids);
    let rss_before = server_watch.rss_each();
    let scrapes = Scrapes::start(&ctx.metrics_endpoints).await;
    let (controls, sig) = w::signals(counters);
    progress.phase("setup");
    let watchers = run.spawn(&start, &sig);
    let setup = run.wait_setup(&watchers, &server_watch).await;

    progress.phase("writing");
    let wrep = run.write(&controls, start.next_seq).await;
    progress.phase("drain");
    let drain = run
        .drain(&controls, &watchers, &start, &wrep, setup.ready)
        .await;

    controls.stop.cancel();
    let outcomes = join_all(watchers.tasks).await;
    let servers = server_watch.finish();
    let server_metrics = scrapes.finish().await;
    run.release_load_connections();
    // Asked again now the watchers are gone: an overloaded store may not
    // have answered before, and puts that timed out may have been applied
    // since. Watchers are judged up to the newest revision either answer
    // gives; what they did not get by then is undelivered.
    let (late_head, late_err) = run.prefix_head_or(drain.head).await;
    let head = drain.head.max(late_head);
    let head_note = match (&drain.head_err, late_err) {
        (Some(_), Some(e)) => Some(format!(
            "prefix head unavailable ({e}); used the writer's acks"
        )),
        _ => None,
    };

    progress.phase("verify");
    let history = run.verify(&start, &wrep, head).await;
    drop(progress);

    let mut res = verdict::judge(verdict::Collected {
        ctx,
        prm,
        split: &run.split,
        streams_by_group: &watchers.streams_by_group,
        outcomes: &outcomes,
        history: &history,
        preload: start.preload.as_ref(),
        wrep: &wrep,
        setup: &setup,
        drain: &drain,
        head,
        head_note,
        rss_before: &rss_before,
        servers,
        server_metrics,
    });
    res.client = client.finish();
    res.duration_s = started.elapsed().as_secs_f64();
    res.loadavg_1m = loadavg_1m;
    Ok(res)
}

/// One run against one target: what every phase needs.
struct Run<'a> {
    ctx: &'a RunCtx,
    prm: &'a FanoutParams,
    counters: Arc<Counters>,
    split: Split,
    target: WatchTarget,
    /// To the store: the prefix head and the base revision.
    truth: Channel,
    writer: Vec<Channel>,
    normal: Vec<Channel>,
    slow: Vec<Channel>,
    /// The store's revision before anything was written.
    base: i64,
}

/// Where the watchers start, and what was written before them.
struct Start {
    /// Catch-up: the history written before the watchers started.
    preload: Option<WriterReport>,
    start_rev: i64,
    /// The live writer's first sequence number.
    next_seq: u64,
}

/// The stream tasks, one per gRPC stream or HTTP watcher.
struct Watchers {
    tasks: Vec<JoinHandle<StreamOutcome>>,
    streams_by_group: BTreeMap<Group, usize>,
}

impl Watchers {
    fn all_finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }
}

/// How creating the watchers went.
struct Setup {
    all_ready: bool,
    setup_s: f64,
    /// Watchers whose create was acknowledged.
    ready: u64,
    /// Server RSS once they were created, per measured process.
    rss_after: Vec<u64>,
}

/// How the watchers caught up after the last put.
struct Drain {
    /// The revision every watcher was asked to reach.
    head: i64,
    /// Why the store did not say its prefix head (the writer's acks stood in).
    head_err: Option<String>,
    drained: bool,
    drain_s: f64,
    /// Writer time plus drain: the window deliveries per second are over.
    window_s: f64,
}

impl<'a> Run<'a> {
    /// Opens the store, writer and watcher connections; reads the base
    /// revision.
    async fn connect(
        ctx: &'a RunCtx,
        prm: &'a FanoutParams,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let split = prm.split();
        let target = WatchTarget {
            key: ctx.prefix.clone(),
            range_end: payload::prefix_range_end(&ctx.prefix),
        };
        let truth = conn::connect(&ctx.truth_endpoint).await?;
        let writer = conn::connect_many(&ctx.endpoint, prm.writer_connections.max(1)).await?;
        let normal = conn::connect_many(&ctx.endpoint, split.normal_conns).await?;
        let slow = conn::connect_many(&ctx.endpoint, split.slow_conns).await?;
        let base = conn::current_revision(&truth).await?;
        Ok(Self {
            ctx,
            prm,
            counters,
            split,
            target,
            truth,
            writer,
            normal,
            slow,
            base,
        })
    }

    /// Catch-up: writes the history first, so the watchers start behind it.
    async fn preload(&self, progress: &Progress) -> Result<Start> {
        let (ctx, prm, base) = (self.ctx, self.prm, self.base);
        let Some(c) = prm.catchup else {
            return Ok(Start {
                preload: None,
                start_rev: base + 1,
                next_seq: 0,
            });
        };
        progress.phase("preload");
        let cfg = WriterConfig {
            prefix: ctx.prefix.clone(),
            keys: prm.keys,
            value_size: prm.value_size,
            total: c.behind,
            rate: None,
            put_timeout: prm.put_timeout,
            max_inflight: 64,
            first_seq: 0,
        };
        let rep = writer::run(&self.writer, &cfg, self.counters.clone(), ctx.stop.clone()).await;
        if rep.acked != c.behind {
            return Err(LoadError::Target {
                target: ctx.target.clone(),
                reason: format!(
                    "catch-up preload: {} of {} puts acknowledged ({:?})",
                    rep.acked, c.behind, rep.errors
                ),
            });
        }
        let head = rep.max_acked_rev();
        Ok(Start {
            start_rev: (head - c.behind as i64 + 1).max(base + 1),
            next_seq: c.behind,
            preload: Some(rep),
        })
    }

    /// Spreads the normal and slow watchers over their connections' streams
    /// and starts one task per stream, and one per HTTP watcher.
    fn spawn(&self, start: &Start, sig: &Signals) -> Watchers {
        let prm = self.prm;
        let limits = StreamLimits {
            setup_timeout: prm.setup_timeout,
            max_resumes: prm.max_resumes,
            live_from_unix_ns: payload::now_unix_ns(),
            reach_rev: start.preload.as_ref().map(|r| r.max_acked_rev()),
        };
        let mut out = Watchers {
            tasks: Vec::new(),
            streams_by_group: BTreeMap::new(),
        };
        let stall = prm.slow.map(|s| Stall {
            after: s.after,
            for_: s.for_,
        });
        let plan = [
            (&self.normal, self.split.normal, Group::Normal, None),
            (&self.slow, self.split.slow, Group::Slow, stall),
        ];
        for (chs, n, group, stall) in plan {
            let streams = chs.len() * prm.streams_per_connection.max(1);
            for (i, count) in grpc::spread(n, streams).into_iter().enumerate() {
                if count == 0 {
                    continue;
                }
                *out.streams_by_group.entry(group).or_default() += 1;
                let spec = StreamSpec {
                    channel: chs[i % chs.len()].clone(),
                    target: self.target.clone(),
                    watchers: count,
                    start_rev: start.start_rev,
                    group,
                    stall,
                    switch: prm.failover.as_ref().map(|f| w::Switch {
                        after: f.after,
                        endpoint: f.endpoint.clone(),
                    }),
                };
                out.tasks
                    .push(tokio::spawn(grpc::run_stream(spec, limits, sig.clone())));
            }
        }
        if let Some(h) = &prm.http {
            for _ in 0..self.split.http {
                *out.streams_by_group.entry(Group::Http).or_default() += 1;
                let spec = HttpSpec {
                    addr: h.addr.clone(),
                    api: h.api,
                    target: self.target.clone(),
                    start_rev: start.start_rev,
                };
                out.tasks
                    .push(tokio::spawn(http::run_watcher(spec, limits, sig.clone())));
            }
        }
        out
    }

    /// Waits (bounded) until every watcher is created or every task ended.
    async fn wait_setup(&self, watchers: &Watchers, server_watch: &ProcWatch) -> Setup {
        let (prm, counters) = (self.prm, &self.counters);
        let t = Instant::now();
        let all_ready = wait_until(
            prm.setup_timeout + Duration::from_secs(1),
            &self.ctx.stop,
            || {
                Counters::get(&counters.watchers_ready) >= prm.watchers as u64
                    || watchers.all_finished()
            },
        )
        .await;
        Setup {
            all_ready,
            setup_s: t.elapsed().as_secs_f64(),
            ready: Counters::get(&counters.watchers_ready),
            rss_after: server_watch.rss_each(),
        }
    }

    /// The live writer: R puts/s for the run's duration, on its own thread.
    async fn write(&self, controls: &Controls, first_seq: u64) -> WriterReport {
        let (ctx, prm) = (self.ctx, self.prm);
        let cfg = WriterConfig {
            prefix: ctx.prefix.clone(),
            keys: prm.keys,
            value_size: prm.value_size,
            total: prm.live_total(),
            rate: Some(prm.rate),
            put_timeout: prm.put_timeout,
            max_inflight: prm.max_inflight,
            first_seq,
        };
        let _ = controls
            .writer_started
            .send(Some(tokio::time::Instant::now()));
        writer::run_isolated(
            &ctx.endpoint,
            prm.writer_connections.max(1),
            &cfg,
            self.counters.clone(),
            ctx.stop.clone(),
            &self.writer,
        )
        .await
    }

    /// Sets the last revision every watcher must reach (the prefix's newest,
    /// which also covers puts that timed out but were applied) and waits
    /// (bounded) for them to reach it.
    async fn drain(
        &self,
        controls: &Controls,
        watchers: &Watchers,
        start: &Start,
        wrep: &WriterReport,
        ready: u64,
    ) -> Drain {
        let fallback_head = wrep.max_acked_rev().max(
            start
                .preload
                .as_ref()
                .map(|r| r.max_acked_rev())
                .unwrap_or(0),
        );
        let (head, head_err) = self.prefix_head_or(fallback_head).await;
        let _ = controls.target.send(head);
        let t = Instant::now();
        // Stalled watchers cannot catch up before their stall ends.
        let stall_left = self
            .prm
            .slow
            .map(|s| (s.after + s.for_).saturating_sub(wrep.finished.duration_since(wrep.started)))
            .unwrap_or_default();
        let counters = &self.counters;
        let drained = wait_until(self.prm.drain_timeout + stall_left, &self.ctx.stop, || {
            Counters::get(&counters.watchers_done) >= ready || watchers.all_finished()
        })
        .await;
        let drain_s = t.elapsed().as_secs_f64();
        Drain {
            head,
            head_err,
            drained,
            drain_s,
            window_s: wrep.finished.duration_since(wrep.started).as_secs_f64() + drain_s,
        }
    }

    /// Closes the writer's and the watchers' connections (the store's stays).
    fn release_load_connections(&mut self) {
        drop((
            std::mem::take(&mut self.normal),
            std::mem::take(&mut self.slow),
            std::mem::take(&mut self.writer),
        ));
    }

    /// The newest revision in the prefix (from the truth endpoint), never
    /// below `fallback`; the error text when the store did not answer.
    async fn prefix_head_or(&self, fallback: i64) -> (i64, Option<String>) {
        match conn::prefix_head(&self.truth, &self.target.key, &self.target.range_end).await {
            Ok((h, _)) => (h.max(fallback), None),
            Err(e) => (fallback, Some(e.to_string())),
        }
    }

    /// Reads the store's history of the prefix back; when it cannot be
    /// read, the writer's acknowledgements stand in (content is then not
    /// checked).
    async fn verify(&self, start: &Start, wrep: &WriterReport, head: i64) -> History {
        let read = truth::read_history(
            &self.ctx.truth_endpoint,
            &self.target,
            start.start_rev,
            head,
            Duration::from_secs(60),
        )
        .await;
        match read {
            Ok(h) => h,
            Err(e) => {
                let mut acked = wrep.acked_revisions();
                if let Some(pre) = &start.preload {
                    acked.extend(pre.acked_revisions());
                }
                History {
                    truth: Truth::from_revisions(acked),
                    seq_rev: Default::default(),
                    source: format!("writer acknowledgements only: {e}"),
                }
            }
        }
    }
}

/// Joins stream tasks (they were told to stop); a task that does not end in
/// 10 s is aborted and its watchers are reported lost.
pub(crate) async fn join_all(tasks: Vec<JoinHandle<StreamOutcome>>) -> Vec<StreamOutcome> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::with_capacity(tasks.len());
    for mut t in tasks {
        match tokio::time::timeout_at(deadline, &mut t).await {
            Ok(Ok(o)) => out.push(o),
            Ok(Err(e)) => {
                // A panicked task: surface it as a lost group rather than
                // pretend its watchers were fine.
                let mut o = StreamOutcome::new(Group::Normal, Vec::new());
                o.note_error(format!("stream task failed: {e}"));
                out.push(o);
            }
            Err(_) => {
                t.abort();
                let mut o = StreamOutcome::new(Group::Normal, Vec::new());
                o.note_error("stream task did not stop within 10s");
                out.push(o);
            }
        }
    }
    out
}
