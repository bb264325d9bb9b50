//! `lookout-load compare`: the same scenario matrix against etcd, etcd
//! grpc-proxy and Lookout in one run, on this machine, side by side.
//!
//! ```text
//!   raise RLIMIT_NOFILE ─> probe targets (skip reasons) ─> for each cell:
//!      for each target: start fresh (child PIDs kept) ─> run scenario
//!                       ─> result line on stdout + results.jsonl ─> kill
//!   ─> README.md (machine, commands, ratios, tables) + one SVG per cell
//! ```
//!
//! Each target gets fresh processes per cell so one that fell over cannot
//! spoil the next cell, and so peak RSS belongs to that cell alone.

pub mod matrix;
mod render;
pub mod targets;

pub use render::machine_description;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use tokio_util::sync::CancellationToken;

use self::matrix::{Cell, CellKind, ScenarioKind};
use self::targets::{TargetKind, TargetOptions};
use crate::cmdline::{own_command, parse_duration};
use crate::error::{LoadError, Result};
use crate::report;
use crate::result::RunResult;
use crate::scenario::{RunCtx, fanout, informers, memory};

/// Flags of `lookout-load compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Where README.md, results.jsonl and the plots go.
    #[arg(long, default_value = "loadtest/results/latest")]
    pub out: PathBuf,
    /// Targets, in report column order (the first is the ratio baseline).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "etcd,grpc-proxy,lookout"
    )]
    pub targets: Vec<TargetKind>,
    /// The `lookout` binary (default: $LOOKOUT_BIN, else next to this one).
    #[arg(long)]
    pub lookout_bin: Option<PathBuf>,
    /// Scenario families to include.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fanout,informers"
    )]
    pub scenarios: Vec<ScenarioKind>,
    /// Issue-5 sizes: W = 1k, 5k, 10k, 50k; R = 100, 1000; 30 s; 1000
    /// informers over 10k keys.
    #[arg(long)]
    pub full: bool,
    /// Override the fan-out watcher counts (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub watchers: Vec<usize>,
    /// Override the fan-out put rates (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Watchers per connection (C = W / this).
    #[arg(long, default_value_t = 100)]
    pub watchers_per_connection: usize,
    /// Writer duration per fan-out cell (default 10s, 30s with --full).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    #[arg(long)]
    pub informer_clients: Option<usize>,
    #[arg(long)]
    pub informer_keys: Option<u64>,
    /// Run every (cell, target) this many times, interleaved; the median
    /// run (by p99 latency, or time to sync) is shown, the spread noted.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[arg(long)]
    pub no_progress: bool,
}

/// What happened for one (cell, target).
#[derive(Debug, Clone)]
pub enum Outcome {
    Ran(Box<RunResult>),
    Skipped(String),
    Failed(String),
}

/// All outcomes of one cell, in target order.
#[derive(Debug, Clone)]
pub struct CellOutcome {
    pub cell: Cell,
    /// The representative (median) run per target.
    pub runs: Vec<(TargetKind, Outcome)>,
    /// With `--repeat`: how the repetitions spread, per target.
    pub spread: Vec<(TargetKind, String)>,
}

/// Raises the soft open-file limit to the hard limit (children inherit it).
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_nofile() -> Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let mut new = lim;
    new.current = lim.maximum;
    setrlimit(Resource::Nofile, new)
        .map_err(|e| LoadError::InvalidArgument(format!("setrlimit(NOFILE): {e}")))?;
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Runs the comparison and writes the report.
///
/// # Errors
/// When the output directory cannot be written. Targets that fail are
/// reported, not errors.
pub async fn run(args: CompareArgs, stop: CancellationToken) -> Result<Vec<CellOutcome>> {
    let nofile = raise_nofile()?;
    let load_before = render::loadavg();
    std::fs::create_dir_all(&args.out).map_err(|e| LoadError::io(&args.out, e))?;
    let opts = TargetOptions {
        lookout_bin: args
            .lookout_bin
            .clone()
            .unwrap_or_else(lookout_testkit::lookout_stack::default_bin),
    };
    let mut target_list = args.targets.clone();
    target_list.dedup();
    let skip: Vec<(TargetKind, Option<String>)> = target_list
        .iter()
        .map(|k| (*k, targets::probe(*k, &opts).err()))
        .collect();
    for (k, why) in &skip {
        if let Some(w) = why {
            eprintln!("lookout-load compare: skipping {}: {w}", k.label());
        }
    }
    let cells = matrix::build(&args);
    let jsonl_path = args.out.join("results.jsonl");
    let mut jsonl =
        std::fs::File::create(&jsonl_path).map_err(|e| LoadError::io(&jsonl_path, e))?;
    let command = own_command();
    let mut outcomes = Vec::new();
    let repeat = args.repeat.max(1);
    let total_runs = cells.len() * skip.len() * repeat;
    let mut n = 0;
    for cell in cells {
        // Repetitions interleave the targets (etcd, proxy, lookout, etcd,
        // ...) so a burst of load from elsewhere on the shared machine hits
        // all of them alike; the median run represents each target.
        let mut all: Vec<Vec<Outcome>> = vec![Vec::new(); skip.len()];
        for rep in 0..repeat {
            for (i, (kind, why)) in skip.iter().enumerate() {
                n += 1;
                if let Some(w) = why {
                    if rep == 0 {
                        all[i].push(Outcome::Skipped(w.clone()));
                    }
                    continue;
                }
                if stop.is_cancelled() {
                    all[i].push(Outcome::Skipped("not run (interrupted)".into()));
                    continue;
                }
                eprintln!(
                    "lookout-load compare: [{n}/{total_runs}] {} against {}",
                    cell.id,
                    kind.label()
                );
                let outcome = run_one(&cell, *kind, &opts, &args, &stop).await;
                log_outcome(&mut jsonl, &cell, *kind, &outcome);
                all[i].push(outcome);
            }
        }
        let mut runs = Vec::new();
        let mut spread = Vec::new();
        for ((kind, _), outs) in skip.iter().zip(all) {
            let (rep, note) = representative(&cell, outs);
            if let Some(n) = note {
                spread.push((*kind, n));
            }
            runs.push((*kind, rep));
        }
        outcomes.push(CellOutcome { cell, runs, spread });
    }
    let load = format!(
        "{load_before} at the start, {} at the end",
        render::loadavg()
    );
    let md = render::render(&args, &command, nofile, &load, &skip, &outcomes)?;
    let readme = args.out.join("README.md");
    std::fs::write(&readme, md).map_err(|e| LoadError::io(&readme, e))?;
    eprintln!(
        "lookout-load compare: report written to {}",
        readme.display()
    );
    Ok(outcomes)
}

fn log_outcome(jsonl: &mut std::fs::File, cell: &Cell, kind: TargetKind, outcome: &Outcome) {
    match outcome {
        Outcome::Ran(r) => {
            let line = r.to_json_line();
            println!("{line}");
            let _ = writeln!(jsonl, "{line}");
            eprintln!("    {}", report::verdict(r).replace("**", ""));
        }
        Outcome::Failed(e) => {
            eprintln!("    failed: {e}");
            let _ = writeln!(
                jsonl,
                "{}",
                serde_json::json!({"scenario": cell.id, "target": kind.label(), "error": e})
            );
        }
        Outcome::Skipped(e) => {
            eprintln!("    skipped: {e}");
            let _ = writeln!(
                jsonl,
                "{}",
                serde_json::json!({"scenario": cell.id, "target": kind.label(), "skipped": e})
            );
        }
    }
}

/// The figure repetitions are ranked by: p99 put → event for watch cells,
/// time until all synced for informers.
fn rank_key(cell: &Cell, r: &RunResult) -> f64 {
    match cell.kind {
        CellKind::Watch(_) => r.latency.p99_ms,
        CellKind::Informers(_) => r
            .informers
            .as_ref()
            .map(|i| i.all_synced_s)
            .unwrap_or(f64::MAX),
        CellKind::Memory(_) => r
            .memory
            .as_ref()
            .map(|m| m.per_watcher_bytes)
            .unwrap_or(f64::MAX),
    }
}

/// Picks the median run of the repetitions (a failed run ranks last) and
/// describes the spread when there was more than one.
fn representative(cell: &Cell, mut outs: Vec<Outcome>) -> (Outcome, Option<String>) {
    if outs.len() <= 1 {
        return (
            outs.pop()
                .unwrap_or_else(|| Outcome::Skipped("not run".into())),
            None,
        );
    }
    let key = |o: &Outcome| match o {
        Outcome::Ran(r) => rank_key(cell, r),
        _ => f64::INFINITY,
    };
    outs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let sustained = outs
        .iter()
        .filter(|o| matches!(o, Outcome::Ran(r) if r.sustained))
        .count();
    let figures: Vec<String> = outs
        .iter()
        .map(|o| match (o, &cell.kind) {
            (Outcome::Ran(r), CellKind::Watch(_)) => report::fmt_ms(r.latency.p99_ms),
            (Outcome::Ran(r), CellKind::Informers(_)) => {
                format!("{:.2} s", rank_key(cell, r))
            }
            (Outcome::Ran(r), CellKind::Memory(_)) => report::fmt_bytes(rank_key(cell, r)),
            _ => "failed".into(),
        })
        .collect();
    let what = match cell.kind {
        CellKind::Watch(_) => "p99 put → event",
        CellKind::Informers(_) => "time until all synced",
        CellKind::Memory(_) => "RSS per watcher",
    };
    let note = format!(
        "{} runs, {sustained} sustained; {what}: {} (median shown)",
        outs.len(),
        figures.join(" / ")
    );
    let mid = (outs.len() - 1) / 2;
    (outs.swap_remove(mid), Some(note))
}

/// Starts `kind` fresh, runs `cell` against it, stops it.
async fn run_one(
    cell: &Cell,
    kind: TargetKind,
    opts: &TargetOptions,
    args: &CompareArgs,
    stop: &CancellationToken,
) -> Outcome {
    let target = match targets::start(kind, opts, cell.kind.needs_alt()).await {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(format!("could not start {}: {e}", kind.label())),
    };
    let ctx = RunCtx {
        target: kind.label().into(),
        endpoint: target.endpoint.clone(),
        truth_endpoint: target.truth_endpoint.clone(),
        prefix: Bytes::from(format!("lookout-load/{}/", cell.id)),
        server_pids: target.pids.clone(),
        metrics_endpoints: target.metrics.clone(),
        progress: !args.no_progress,
        stop: stop.clone(),
        command: String::new(),
    };
    // A generous outer bound on top of every phase's own bound.
    let bound = Duration::from_secs(600)
        + match &cell.kind {
            CellKind::Watch(p) => p.duration + p.setup_timeout + p.drain_timeout * 2,
            CellKind::Informers(p) => p.sync_timeout + p.drain_timeout,
            CellKind::Memory(p) => p.setup_timeout * 3,
        };
    let res = match &cell.kind {
        CellKind::Watch(p) => {
            let mut p = p.clone();
            if let Some(h) = &mut p.http {
                match &target.http {
                    Some((api, addr)) => {
                        h.api = *api;
                        h.addr = addr.clone();
                    }
                    None => {
                        return Outcome::Skipped(format!(
                            "{} serves no HTTP watch API",
                            kind.label()
                        ));
                    }
                }
            }
            if let Some(f) = &mut p.failover {
                match &target.alt_endpoint {
                    Some(alt) => f.endpoint = alt.clone(),
                    None => {
                        return Outcome::Skipped(format!(
                            "{} has no second front end",
                            kind.label()
                        ));
                    }
                }
            }
            let mut ctx = ctx;
            ctx.command = single_command(&cell.command(), &target);
            tokio::time::timeout(bound, fanout::run(&ctx, &p)).await
        }
        CellKind::Memory(p) => {
            let mut ctx = ctx;
            // Only the front end's RSS is the figure.
            ctx.server_pids.truncate(1);
            ctx.command = single_command(&cell.command(), &target);
            tokio::time::timeout(bound, memory::run(&ctx, p)).await
        }
        CellKind::Informers(p) => {
            let mut ctx = ctx;
            ctx.command = single_command(&cell.command(), &target);
            tokio::time::timeout(bound, informers::run(&ctx, p)).await
        }
    };
    drop(target);
    match res {
        Ok(Ok(r)) => Outcome::Ran(Box::new(r)),
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(_) => Outcome::Failed(format!("run exceeded {}s", bound.as_secs())),
    }
}

/// The cell's command with this target's real endpoints and PIDs.
fn single_command(template: &str, t: &targets::Running) -> String {
    let mut s = template
        .replace("<target>", &t.endpoint)
        .replace("<store>", &t.truth_endpoint);
    if let Some((api, addr)) = &t.http {
        let api = match api {
            crate::watch::http::HttpApi::Etcd => "etcd",
            crate::watch::http::HttpApi::Lookout => "lookout",
        };
        s = s.replace("<etcd|lookout>", &format!("{api} --http-endpoint {addr}"));
    }
    for (label, pid) in &t.pids {
        s += &format!(" --server-pid {label}={pid}");
    }
    s + &format!(" --label {}", t.kind.label())
}
