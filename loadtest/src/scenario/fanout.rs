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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout_testkit::checker::{CheckTotals, Truth};
use tokio::task::JoinHandle;

use super::{ClientProc, RunCtx, p, secs, wait_until};
use crate::conn;
use crate::error::{LoadError, Result};
use crate::hist::LatencyHist;
use crate::payload;
use crate::procstat::ProcWatch;
use crate::progress::{Counters, Progress};
use crate::result::{CatchupStats, RunResult, WatchStats};
use crate::truth::{self, History};
use crate::watch::grpc::{self, StreamSpec};
use crate::watch::http::{self, HttpApi, HttpSpec};
use crate::watch::{self as w, Group, Stall, StreamLimits, StreamOutcome, WatchTarget};
use crate::writer::{self, PutOutcome, WriterConfig, WriterReport};

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
    let split = prm.split();
    let target = WatchTarget {
        key: ctx.prefix.clone(),
        range_end: payload::prefix_range_end(&ctx.prefix),
    };

    let truth_ch = conn::connect(&ctx.truth_endpoint).await?;
    let writer_chs = conn::connect_many(&ctx.endpoint, prm.writer_connections.max(1)).await?;
    let normal_chs = conn::connect_many(&ctx.endpoint, split.normal_conns).await?;
    let slow_chs = conn::connect_many(&ctx.endpoint, split.slow_conns).await?;
    let base = conn::current_revision(&truth_ch).await?;

    // Catch-up: write the history first, then start the watchers behind it.
    let mut preload: Option<WriterReport> = None;
    let mut start_rev = base + 1;
    let mut next_seq = 0;
    if let Some(c) = prm.catchup {
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
        let rep = writer::run(&writer_chs, &cfg, counters.clone(), ctx.stop.clone()).await;
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
        start_rev = (head - c.behind as i64 + 1).max(base + 1);
        next_seq = c.behind;
        preload = Some(rep);
    }

    let server_watch = ProcWatch::start(&ctx.server_pids);
    let rss_before = server_watch.rss_each();
    let scrapes = crate::promscrape::Scrapes::start(&ctx.metrics_endpoints).await;
    let (controls, sig) = w::signals(counters.clone());
    let limits = StreamLimits {
        setup_timeout: prm.setup_timeout,
        max_resumes: prm.max_resumes,
        live_from_unix_ns: payload::now_unix_ns(),
        reach_rev: preload.as_ref().map(|r| r.max_acked_rev()),
    };

    progress.phase("setup");
    let mut tasks: Vec<JoinHandle<StreamOutcome>> = Vec::new();
    let mut streams_by_group: BTreeMap<Group, usize> = BTreeMap::new();
    let mut spawn_grpc =
        |chs: &[tonic::transport::Channel], n: usize, group: Group, stall: Option<Stall>| {
            let streams = chs.len() * prm.streams_per_connection.max(1);
            for (i, count) in grpc::spread(n, streams).into_iter().enumerate() {
                if count == 0 {
                    continue;
                }
                *streams_by_group.entry(group).or_default() += 1;
                let spec = StreamSpec {
                    channel: chs[i % chs.len()].clone(),
                    target: target.clone(),
                    watchers: count,
                    start_rev,
                    group,
                    stall,
                    switch: prm.failover.as_ref().map(|f| w::Switch {
                        after: f.after,
                        endpoint: f.endpoint.clone(),
                    }),
                };
                tasks.push(tokio::spawn(grpc::run_stream(spec, limits, sig.clone())));
            }
        };
    spawn_grpc(&normal_chs, split.normal, Group::Normal, None);
    let stall = prm.slow.map(|s| Stall {
        after: s.after,
        for_: s.for_,
    });
    spawn_grpc(&slow_chs, split.slow, Group::Slow, stall);
    if let Some(h) = &prm.http {
        for _ in 0..split.http {
            *streams_by_group.entry(Group::Http).or_default() += 1;
            let spec = HttpSpec {
                addr: h.addr.clone(),
                api: h.api,
                target: target.clone(),
                start_rev,
            };
            tasks.push(tokio::spawn(http::run_watcher(spec, limits, sig.clone())));
        }
    }

    let setup_t = Instant::now();
    let all_ready = wait_until(
        prm.setup_timeout + Duration::from_secs(1),
        &ctx.stop,
        || {
            Counters::get(&counters.watchers_ready) >= prm.watchers as u64
                || tasks.iter().all(|t| t.is_finished())
        },
    )
    .await;
    let setup_s = setup_t.elapsed().as_secs_f64();
    let ready = Counters::get(&counters.watchers_ready);
    let rss_after_setup = server_watch.rss_each();

    // The live writer.
    progress.phase("writing");
    let live_total = (prm.rate * prm.duration.as_secs_f64()).round() as u64;
    let cfg = WriterConfig {
        prefix: ctx.prefix.clone(),
        keys: prm.keys,
        value_size: prm.value_size,
        total: live_total,
        rate: Some(prm.rate),
        put_timeout: prm.put_timeout,
        max_inflight: prm.max_inflight,
        first_seq: next_seq,
    };
    let _ = controls
        .writer_started
        .send(Some(tokio::time::Instant::now()));
    let wrep = writer::run_isolated(
        &ctx.endpoint,
        prm.writer_connections.max(1),
        &cfg,
        counters.clone(),
        ctx.stop.clone(),
        &writer_chs,
    )
    .await;

    // The last revision every watcher must reach: the prefix's newest, which
    // also covers puts that timed out but were applied.
    progress.phase("drain");
    let fallback_head = wrep
        .max_acked_rev()
        .max(preload.as_ref().map(|r| r.max_acked_rev()).unwrap_or(0));
    let (drain_head, head_err) = prefix_head_or(&truth_ch, &target, fallback_head).await;
    let _ = controls.target.send(drain_head);
    let drain_t = Instant::now();
    // Stalled watchers cannot catch up before their stall ends.
    let stall_left = prm
        .slow
        .map(|s| (s.after + s.for_).saturating_sub(wrep.finished.duration_since(wrep.started)))
        .unwrap_or_default();
    let drained = wait_until(prm.drain_timeout + stall_left, &ctx.stop, || {
        Counters::get(&counters.watchers_done) >= ready || tasks.iter().all(|t| t.is_finished())
    })
    .await;
    let drain_s = drain_t.elapsed().as_secs_f64();
    let window_s = wrep.finished.duration_since(wrep.started).as_secs_f64() + drain_s;

    controls.stop.cancel();
    let outcomes = join_all(tasks).await;
    let servers = server_watch.finish();
    let server_metrics = scrapes.finish().await;
    drop((normal_chs, slow_chs, writer_chs));

    // Asked again now the watchers are gone: an overloaded store may not
    // have answered before, and puts that timed out may have been applied
    // since. Watchers are judged up to the newest revision either answer
    // gives; what they did not get by then is undelivered.
    let (late_head, late_err) = prefix_head_or(&truth_ch, &target, drain_head).await;
    let head = drain_head.max(late_head);
    let head_note = match (head_err, late_err) {
        (Some(_), Some(e)) => Some(format!(
            "prefix head unavailable ({e}); used the writer's acks"
        )),
        _ => None,
    };

    progress.phase("verify");
    let history = match truth::read_history(
        &ctx.truth_endpoint,
        &target,
        start_rev,
        head,
        Duration::from_secs(60),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            let mut acked = wrep.acked_revisions();
            if let Some(pre) = &preload {
                acked.extend(pre.acked_revisions());
            }
            History {
                truth: Truth::from_revisions(acked),
                seq_rev: Default::default(),
                source: format!("writer acknowledgements only: {e}"),
            }
        }
    };
    drop(progress);

    let mut res = RunResult {
        scenario: prm.scenario().into(),
        target: ctx.target.clone(),
        endpoint: ctx.endpoint.clone(),
        params: prm.params(),
        command: ctx.command.clone(),
        sustained: true,
        setup_s: Some(setup_s),
        drain_s: Some(drain_s),
        servers,
        server_metrics,
        truth: history.source.clone(),
        ..RunResult::default()
    };
    if let Some(n) = head_note {
        res.problem(n);
    }
    if !history.truth.has_digest() {
        res.problem(format!(
            "could not read the store's history: {}",
            history.source
        ));
    }

    let mut wstats = wrep.stats();
    cross_check_writer(&wrep, &history, &mut wstats);
    if let Some(pre) = &preload {
        let mut pstats = pre.stats();
        cross_check_writer(pre, &history, &mut pstats);
        if pstats.acked_lost > 0 {
            res.problem(format!(
                "{} acknowledged preload puts are not in the store's history",
                pstats.acked_lost
            ));
        }
    }

    // Judge every watcher, per group.
    let mut groups: BTreeMap<Group, (WatchStats, LatencyHist)> = BTreeMap::new();
    let mut reach = LatencyHist::new();
    let mut not_caught_total = 0;
    for o in &outcomes {
        let (ws, lat) = groups.entry(o.group).or_default();
        ws.created += o.created as u64;
        ws.resumes += o.resumes;
        ws.orphan_events += o.orphan_events;
        for e in &o.errors {
            if ws.errors.len() < 4 {
                ws.errors.push(e.clone());
            }
        }
        lat.merge(&o.latency);
        reach.merge(&o.reach);
        let mut totals = CheckTotals::default();
        for c in &o.checks {
            totals.add(c, &c.judge(&history.truth, head));
            if c.is_open() && c.last_rev() < head {
                ws.not_caught_up += 1;
                not_caught_total += 1;
            }
        }
        ws.checks.merge(&totals);
    }
    for (g, (ws, lat)) in &mut groups {
        ws.watchers = match g {
            Group::Normal => split.normal,
            Group::Slow => split.slow,
            Group::Http => split.http,
        } as u64;
        ws.connections = match g {
            Group::Normal => split.normal_conns,
            Group::Slow => split.slow_conns,
            Group::Http => split.http,
        } as u64;
        ws.streams = streams_by_group.get(g).copied().unwrap_or(0) as u64;
        ws.latency = lat.summary();
        ws.deliveries_per_s = if window_s > 0.0 {
            ws.checks.events as f64 / window_s
        } else {
            0.0
        };
    }

    // Problems, in the order a reader wants them.
    let judged: usize = outcomes.iter().map(|o| o.checks.len()).sum();
    if judged < prm.watchers {
        res.problem(format!(
            "{} watchers' records were lost (their task did not stop)",
            prm.watchers - judged
        ));
    }
    if !all_ready || ready < prm.watchers as u64 {
        res.problem(format!(
            "only {ready} of {} watchers were created within {:.0}s",
            prm.watchers,
            prm.setup_timeout.as_secs_f64()
        ));
    }
    if wstats.timed_out + wstats.failed > 0 {
        res.problem(format!(
            "{} puts timed out and {} failed (writes fell over){}",
            wstats.timed_out,
            wstats.failed,
            wstats
                .errors
                .keys()
                .next()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    if wstats.acked_lost > 0 {
        res.problem(format!(
            "{} acknowledged puts are not in the store's history",
            wstats.acked_lost
        ));
    }
    if wrep.interrupted {
        res.problem("interrupted");
    }
    if live_total > 0 && wstats.acked < live_total * 95 / 100 {
        res.problem(format!(
            "writer completed {} of {} puts",
            wstats.acked, live_total
        ));
    }
    if !drained || not_caught_total > 0 {
        res.problem(format!(
            "{not_caught_total} watchers had not received revision {head} {:.0}s after the last put (events late)",
            prm.drain_timeout.as_secs_f64()
        ));
    }
    for (g, (ws, _)) in &groups {
        let c = &ws.checks;
        let name = group_name(*g);
        if c.missing + c.duplicates + c.out_of_order + c.unexpected + c.content_mismatch > 0 {
            res.problem(format!(
                "{name} watchers: {} missing, {} duplicate, {} out of order, {} unexpected, {} altered",
                c.missing, c.duplicates, c.out_of_order, c.unexpected, c.content_mismatch
            ));
        }
        if c.undelivered > 0 {
            res.problem(format!(
                "{name} watchers: {} events not delivered when the run stopped waiting",
                c.undelivered
            ));
        }
        if c.lost > 0 || c.cancelled > 0 {
            res.problem(format!(
                "{name} watchers: {} lost their stream, {} cancelled by the server",
                c.lost, c.cancelled
            ));
        }
    }

    // Memory per watcher: server RSS grown by creating the watchers.
    if !rss_before.is_empty() && ready > 0 {
        for (i, s) in res.servers.iter_mut().enumerate() {
            let grown = rss_after_setup.get(i).copied().unwrap_or(0) as f64
                - rss_before.get(i).copied().unwrap_or(0) as f64;
            res.rss_per_watcher_bytes
                .insert(s.label.clone(), (grown / ready as f64).round());
        }
    }

    if let (Some(pre), Some(c)) = (&preload, prm.catchup) {
        let behind = c.behind;
        let caught = reach.count();
        let s = reach.summary();
        res.catchup = Some(CatchupStats {
            behind,
            head_rev: pre.max_acked_rev(),
            caught_up: caught,
            history_events_per_s: if s.max_ms > 0.0 {
                (behind * caught) as f64 / (s.max_ms / 1e3)
            } else {
                0.0
            },
            catchup_time: s,
        });
        if caught < ready {
            res.problem(format!("{} of {ready} watchers caught up to head", caught));
        }
    }

    res.latency = groups
        .get(&Group::Normal)
        .or_else(|| groups.values().next())
        .map(|(ws, _)| ws.latency.clone())
        .unwrap_or_default();
    res.watch = groups
        .into_iter()
        .map(|(g, (ws, _))| (group_name(g).to_string(), ws))
        .collect();
    res.writer = Some(wstats);
    res.client = client.finish();
    res.duration_s = started.elapsed().as_secs_f64();
    res.loadavg_1m = loadavg_1m;
    Ok(res)
}

/// The newest revision in the prefix (from the truth endpoint), never below
/// `fallback`; the error text when the store did not answer.
async fn prefix_head_or(
    ch: &tonic::transport::Channel,
    target: &WatchTarget,
    fallback: i64,
) -> (i64, Option<String>) {
    match conn::prefix_head(ch, &target.key, &target.range_end).await {
        Ok((h, _)) => (h.max(fallback), None),
        Err(e) => (fallback, Some(e.to_string())),
    }
}

fn group_name(g: Group) -> &'static str {
    match g {
        Group::Normal => "normal",
        Group::Slow => "slow",
        Group::Http => "http",
    }
}

/// Every acknowledged put must be in the history at its revision; unknown
/// puts are resolved by it.
pub(crate) fn cross_check_writer(
    rep: &WriterReport,
    h: &History,
    st: &mut crate::writer::WriterStats,
) {
    if !h.truth.has_digest() {
        return;
    }
    for (i, o) in rep.outcomes.iter().enumerate() {
        let seq = rep.first_seq + i as u64;
        match o {
            PutOutcome::Acked(rev) => {
                if h.seq_rev.get(&seq) != Some(rev) {
                    st.acked_lost += 1;
                }
            }
            PutOutcome::Unknown => {
                if h.seq_rev.contains_key(&seq) {
                    st.unknown_applied += 1;
                } else {
                    st.unknown_absent += 1;
                }
            }
            PutOutcome::NotSent => {}
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
