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
pub mod targets;

use std::fmt::Write as _;
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
use crate::report::{self, Value, fmt_value, md_table, plot};
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
    let load_before = loadavg();
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
    let load = format!("{load_before} at the start, {} at the end", loadavg());
    let md = render(&args, &command, nofile, &load, &skip, &outcomes)?;
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

// === report ===

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cmd_output(cmd: &str, args: &[&str]) -> Option<String> {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
}

/// The machine, from /proc/cpuinfo, `free`, the kernel and tool versions.
pub fn machine_description(nofile: u64) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mhz = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let free = cmd_output("free", &["-m"]).unwrap_or_else(|| "(free not available)".into());
    let etcd = cmd_output("etcd", &["--version"])
        .and_then(|v| v.lines().next().map(str::to_string))
        .unwrap_or_else(|| "etcd not found".into());
    let date = cmd_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let git =
        cmd_output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let mut s = String::new();
    let _ = writeln!(s, "- Date: {date}; lookout commit `{git}`");
    let _ = writeln!(s, "- CPU: {cpus} × {model} ({mhz} MHz), from /proc/cpuinfo");
    let _ = writeln!(s, "- Kernel: Linux {}", kernel.trim());
    let _ = writeln!(s, "- {etcd}; open-file limit raised to {nofile}");
    let _ = writeln!(
        s,
        "- Load generator, servers and store share the same {cpus} CPUs (loopback only); the load generator's own CPU is reported per run."
    );
    let _ = writeln!(s, "\n`free -m`:\n\n```text\n{free}\n```");
    s
}

fn render(
    args: &CompareArgs,
    command: &str,
    nofile: u64,
    load: &str,
    skip: &[(TargetKind, Option<String>)],
    outcomes: &[CellOutcome],
) -> Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "# Lookout vs etcd vs etcd grpc-proxy\n");
    let _ = writeln!(
        md,
        "Produced by `lookout-load compare`: every target is started fresh for every cell on loopback ports with a temp data dir, the same scenario runs against each, and all figures come from this one run on this one machine. Ratios divide the column's target by the baseline named in the header (lower is better for latency, CPU and memory; higher for rates).\n"
    );
    let _ = writeln!(md, "## Machine\n\n{}", machine_description(nofile));
    let _ = writeln!(
        md,
        "Load average (1/5/15 min, from /proc/loadavg): {load}. The machine is shared, so compare columns within this report, not across reports.\n"
    );
    let _ = writeln!(md, "## Command\n\n```sh\n{command}\n```\n");
    let _ = writeln!(md, "## Targets\n");
    for (k, why) in skip {
        match why {
            None => {
                let _ = writeln!(md, "- **{}**: {}", k.label(), k.describe());
            }
            Some(w) => {
                let _ = writeln!(
                    md,
                    "- **{}**: skipped — {}",
                    k.label(),
                    w.lines().next().unwrap_or("")
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nThe checker: every watcher's events are checked for order, gaps and duplicates against the store's own history of the prefix (read back once after the run from the store, not through the front end); a put that timed out counts as unknown unless that history shows it.\n"
    );

    let labels: Vec<TargetKind> = skip.iter().map(|(k, _)| *k).collect();
    // Ratio columns: every later target against every earlier one.
    let pairs: Vec<(usize, usize)> = (0..labels.len())
        .flat_map(|b| (b + 1..labels.len()).map(move |a| (a, b)))
        .collect();

    let _ = writeln!(md, "## Summary\n");
    let mut header = vec!["cell".to_string(), "metric".to_string()];
    header.extend(labels.iter().map(|k| k.label().to_string()));
    header.extend(
        pairs
            .iter()
            .map(|(a, b)| format!("{} ÷ {}", labels[*a].label(), labels[*b].label())),
    );
    let mut rows = Vec::new();
    const SUMMARY: &[&str] = &[
        "verdict",
        "p99 put → event",
        "deliveries/s",
        "missing / duplicate / out of order / unexpected",
        "undelivered at deadline / watchers behind",
        "undelivered at deadline / informers behind",
        "time until all synced",
        "burst p99 put → event",
        "max catch-up time",
        "slow watchers p99",
        "slow watchers clean / compact-cancelled / lost",
        "store lists by the front (lifetime) / ranges it forwarded (run)",
        "RSS per watcher (shared stream)",
        "RSS per stream (beyond its watcher)",
        "RSS per connection (beyond its stream)",
        "front process CPU",
        "front process peak RSS",
    ];
    for co in outcomes {
        let table = cell_metrics(co);
        for (name, vals) in &table {
            if !SUMMARY.contains(&name.as_str()) {
                continue;
            }
            rows.push(row(&co.cell.id, name, vals, &pairs));
        }
    }
    let _ = writeln!(md, "{}", md_table(&header, &rows));

    for co in outcomes {
        let _ = writeln!(md, "## {}\n", co.cell.title);
        let _ = writeln!(md, "```sh\n{}\n```\n", co.cell.command());
        let table = cell_metrics(co);
        let mut h = vec!["metric".to_string()];
        h.extend(labels.iter().map(|k| k.label().to_string()));
        h.extend(
            pairs
                .iter()
                .map(|(a, b)| format!("{} ÷ {}", labels[*a].label(), labels[*b].label())),
        );
        let rows: Vec<Vec<String>> = table
            .iter()
            .map(|(name, vals)| {
                let mut r = row("", name, vals, &pairs);
                r.remove(0);
                r
            })
            .collect();
        let _ = writeln!(md, "{}", md_table(&h, &rows));
        for line in stall_effect(co, outcomes) {
            let _ = writeln!(md, "- {line}");
        }
        for (k, note) in &co.spread {
            let _ = writeln!(md, "- {}: {note}", k.label());
        }
        // Problems and skip reasons, per target.
        for (k, o) in &co.runs {
            match o {
                Outcome::Ran(r) if !r.problems.is_empty() => {
                    let _ = writeln!(md, "- {}: {}", k.label(), r.problems.join("; "));
                }
                Outcome::Skipped(w) | Outcome::Failed(w) => {
                    let _ = writeln!(
                        md,
                        "- {}: not measured — {}",
                        k.label(),
                        w.lines().next().unwrap_or("")
                    );
                }
                _ => {}
            }
        }
        let svg = format!("{}.svg", co.cell.id);
        let series: Vec<plot::Series<'_>> = co
            .runs
            .iter()
            .filter_map(|(k, o)| match o {
                Outcome::Ran(r) if !r.latency.curve.is_empty() => Some(plot::Series {
                    label: k.label().to_string(),
                    curve: &r.latency.curve,
                }),
                _ => None,
            })
            .collect();
        if !series.is_empty() {
            plot::latency_svg(&args.out.join(&svg), &co.cell.id, &series)?;
            let _ = writeln!(md, "\n![{} latency distribution]({svg})\n", co.cell.id);
        }
        let _ = writeln!(
            md,
            "<details><summary>exact per-target commands</summary>\n"
        );
        for (_, o) in &co.runs {
            if let Outcome::Ran(r) = o {
                let _ = writeln!(md, "```sh\n{}\n```", r.command);
            }
        }
        let _ = writeln!(md, "\n</details>\n");
    }
    let _ = writeln!(
        md,
        "## Files\n\n- `results.jsonl`: one JSON result per (cell, target), with full latency curves, writer stats, checker totals and per-process CPU/RSS.\n- `*.svg`: put → event latency distribution per cell (log scale).\n"
    );
    let _ = writeln!(
        md,
        "Regenerate with the command above (see loadtest/README.md)."
    );
    Ok(md)
}

/// For a slow-watcher cell: the ordinary watchers' p99 against the fan-out
/// cell with the same watchers and rate and no stalls (issue 5 asks for it
/// within 20%), per target.
fn stall_effect(co: &CellOutcome, all: &[CellOutcome]) -> Vec<String> {
    let CellKind::Watch(p) = &co.cell.kind else {
        return Vec::new();
    };
    if p.slow.is_none() {
        return Vec::new();
    }
    let Some(base) = all.iter().find(|o| {
        matches!(&o.cell.kind, CellKind::Watch(b)
            if b.slow.is_none() && b.http.is_none() && b.catchup.is_none() && b.failover.is_none()
                && b.watchers == p.watchers && b.rate == p.rate)
    }) else {
        return Vec::new();
    };
    co.runs
        .iter()
        .zip(&base.runs)
        .filter_map(|((k, o), (_, b))| match (o, b) {
            (Outcome::Ran(s), Outcome::Ran(b)) => Some(format!(
                "{}: ordinary watchers' p99 with stalls {} vs {} without ({}, cell {})",
                k.label(),
                report::fmt_ms(s.latency.p99_ms),
                report::fmt_ms(b.latency.p99_ms),
                report::ratio(
                    &Value::Num(s.latency.p99_ms, report::Fmt::Ms),
                    &Value::Num(b.latency.p99_ms, report::Fmt::Ms)
                ),
                base.cell.id
            )),
            _ => None,
        })
        .collect()
}

/// metric name -> value per target, in target order.
fn cell_metrics(co: &CellOutcome) -> Vec<(String, Vec<Value>)> {
    let mut names: Vec<String> = Vec::new();
    let per: Vec<Vec<report::Metric>> = co
        .runs
        .iter()
        .map(|(_, o)| match o {
            Outcome::Ran(r) => report::metrics(r),
            _ => Vec::new(),
        })
        .collect();
    for ms in &per {
        for m in ms {
            if !names.contains(&m.name) {
                names.push(m.name.clone());
            }
        }
    }
    names
        .into_iter()
        .map(|n| {
            let vals = co
                .runs
                .iter()
                .zip(&per)
                .map(|((_, o), ms)| match o {
                    Outcome::Ran(_) => ms
                        .iter()
                        .find(|m| m.name == n)
                        .map(|m| m.value.clone())
                        .unwrap_or(Value::Missing),
                    Outcome::Skipped(_) => Value::Text("skipped".into()),
                    Outcome::Failed(_) => Value::Text("failed".into()),
                })
                .collect();
            (n, vals)
        })
        .collect()
}

fn row(cell: &str, name: &str, vals: &[Value], pairs: &[(usize, usize)]) -> Vec<String> {
    let mut r = vec![cell.to_string(), name.to_string()];
    r.extend(vals.iter().map(fmt_value));
    r.extend(
        pairs
            .iter()
            .map(|(a, b)| match (vals.get(*a), vals.get(*b)) {
                (Some(x), Some(y)) => report::ratio(x, y),
                _ => "–".into(),
            }),
    );
    r
}
