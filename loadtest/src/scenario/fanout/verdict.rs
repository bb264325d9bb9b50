//! From what a fan-out run collected to its [`RunResult`]: every watcher
//! judged against the store's history, per group, and the problems in the
//! order a reader wants them.
//!
//! ```text
//!   outcomes ──judge(history, head)──> WatchStats per group (normal, slow, http)
//!   writer reports ──cross-check with the history──> acked lost, unknown resolved
//!   setup, drain, checks, writer ──> problems ──> sustained?
//! ```

use std::collections::BTreeMap;

use super::{Drain, FanoutParams, Setup, Split};
use crate::hist::LatencyHist;
use crate::procstat::ProcStats;
use crate::promscrape::ServerMetrics;
use crate::result::{CatchupStats, RunResult, WatchStats};
use crate::scenario::RunCtx;
use crate::scenario::verdict::{add_outcome, cross_check_writer, rss_per_watcher};
use crate::truth::History;
use crate::watch::{Group, StreamOutcome};
use crate::writer::{WriterReport, WriterStats};

/// Everything the phases of one run collected.
pub(super) struct Collected<'a> {
    pub ctx: &'a RunCtx,
    pub prm: &'a FanoutParams,
    pub split: &'a Split,
    pub streams_by_group: &'a BTreeMap<Group, usize>,
    pub outcomes: &'a [StreamOutcome],
    pub history: &'a History,
    pub preload: Option<&'a WriterReport>,
    pub wrep: &'a WriterReport,
    pub setup: &'a Setup,
    pub drain: &'a Drain,
    /// The revision watchers are judged up to.
    pub head: i64,
    /// Why neither prefix head was known, if so.
    pub head_note: Option<String>,
    /// Server RSS before the watchers, per measured process.
    pub rss_before: &'a [u64],
    pub servers: Vec<ProcStats>,
    pub server_metrics: BTreeMap<String, ServerMetrics>,
}

/// The judged watchers of one group and their latency.
type Groups = BTreeMap<Group, (WatchStats, LatencyHist)>;

/// Judges the run (the caller adds the load generator's own figures).
pub(super) fn judge(c: Collected<'_>) -> RunResult {
    let mut res = RunResult {
        scenario: c.prm.scenario().into(),
        target: c.ctx.target.clone(),
        endpoint: c.ctx.endpoint.clone(),
        params: c.prm.params(),
        command: c.ctx.command.clone(),
        sustained: true,
        setup_s: Some(c.setup.setup_s),
        drain_s: Some(c.drain.drain_s),
        servers: c.servers.clone(),
        server_metrics: c.server_metrics.clone(),
        truth: c.history.source.clone(),
        ..RunResult::default()
    };
    if let Some(n) = &c.head_note {
        res.problem(n.clone());
    }
    if !c.history.truth.has_digest() {
        res.problem(format!(
            "could not read the store's history: {}",
            c.history.source
        ));
    }
    let wstats = writer_stats(&c, &mut res);
    let (groups, reach, not_caught) = judge_groups(&c);
    watcher_problems(&c, &wstats, &groups, not_caught, &mut res);
    // Memory per watcher: server RSS grown by creating the watchers.
    if !c.rss_before.is_empty() && c.setup.ready > 0 {
        let per = rss_per_watcher(
            &res.servers,
            c.rss_before,
            &c.setup.rss_after,
            c.setup.ready,
        );
        res.rss_per_watcher_bytes.extend(per.collect::<Vec<_>>());
    }
    catchup(&c, &reach, &mut res);
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
    res
}

/// The live writer's figures, its puts and the preload's checked against
/// the store's history.
fn writer_stats(c: &Collected<'_>, res: &mut RunResult) -> WriterStats {
    let mut wstats = c.wrep.stats();
    cross_check_writer(c.wrep, c.history, &mut wstats);
    if let Some(pre) = c.preload {
        let mut pstats = pre.stats();
        cross_check_writer(pre, c.history, &mut pstats);
        if pstats.acked_lost > 0 {
            res.problem(format!(
                "{} acknowledged preload puts are not in the store's history",
                pstats.acked_lost
            ));
        }
    }
    wstats
}

/// Every watcher judged, per group; the catch-up times; how many open
/// watchers had not reached the head.
fn judge_groups(c: &Collected<'_>) -> (Groups, LatencyHist, u64) {
    let mut groups = Groups::new();
    let mut reach = LatencyHist::new();
    let mut not_caught = 0;
    for o in c.outcomes {
        let (ws, lat) = groups.entry(o.group).or_default();
        let behind = add_outcome(ws, lat, o, c.history, c.head);
        ws.not_caught_up += behind;
        not_caught += behind;
        reach.merge(&o.reach);
    }
    let s = c.split;
    for (g, (ws, lat)) in &mut groups {
        let (watchers, connections) = match g {
            Group::Normal => (s.normal, s.normal_conns),
            Group::Slow => (s.slow, s.slow_conns),
            Group::Http => (s.http, s.http),
        };
        ws.watchers = watchers as u64;
        ws.connections = connections as u64;
        ws.streams = c.streams_by_group.get(g).copied().unwrap_or(0) as u64;
        ws.latency = lat.summary();
        ws.deliveries_per_s = if c.drain.window_s > 0.0 {
            ws.checks.events as f64 / c.drain.window_s
        } else {
            0.0
        };
    }
    (groups, reach, not_caught)
}

/// The problems of setup, writer, drain and checks, in the order a reader
/// wants them.
fn watcher_problems(
    c: &Collected<'_>,
    wstats: &WriterStats,
    groups: &Groups,
    not_caught: u64,
    res: &mut RunResult,
) {
    let prm = c.prm;
    let judged: usize = c.outcomes.iter().map(|o| o.checks.len()).sum();
    if judged < prm.watchers {
        res.problem(format!(
            "{} watchers' records were lost (their task did not stop)",
            prm.watchers - judged
        ));
    }
    let ready = c.setup.ready;
    if !c.setup.all_ready || ready < prm.watchers as u64 {
        res.problem(format!(
            "only {ready} of {} watchers were created within {:.0}s",
            prm.watchers,
            prm.setup_timeout.as_secs_f64()
        ));
    }
    writer_problems(prm, c.wrep, wstats, res);
    if !c.drain.drained || not_caught > 0 {
        res.problem(format!(
            "{not_caught} watchers had not received revision {} {:.0}s after the last put (events late)",
            c.head,
            prm.drain_timeout.as_secs_f64()
        ));
    }
    for (g, (ws, _)) in groups {
        check_problems(group_name(*g), ws, res);
    }
}

fn writer_problems(
    prm: &FanoutParams,
    wrep: &WriterReport,
    wstats: &WriterStats,
    res: &mut RunResult,
) {
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
    let live_total = prm.live_total();
    if live_total > 0 && wstats.acked < live_total * 95 / 100 {
        res.problem(format!(
            "writer completed {} of {} puts",
            wstats.acked, live_total
        ));
    }
}

/// One group's checker verdicts as problems.
fn check_problems(name: &str, ws: &WatchStats, res: &mut RunResult) {
    let c = &ws.checks;
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
    if c.bad_cancels + c.bad_progress > 0 {
        res.problem(format!(
            "{name} watchers: {} compaction cancels at or below a received revision, {} untrue progress notifications",
            c.bad_cancels, c.bad_progress
        ));
    }
}

/// Catch-up: how fast the watchers that started behind reached the head.
fn catchup(c: &Collected<'_>, reach: &LatencyHist, res: &mut RunResult) {
    let (Some(pre), Some(cu)) = (c.preload, c.prm.catchup) else {
        return;
    };
    let behind = cu.behind;
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
    let ready = c.setup.ready;
    if caught < ready {
        res.problem(format!("{} of {ready} watchers caught up to head", caught));
    }
}

fn group_name(g: Group) -> &'static str {
    match g {
        Group::Normal => "normal",
        Group::Slow => "slow",
        Group::Http => "http",
    }
}
