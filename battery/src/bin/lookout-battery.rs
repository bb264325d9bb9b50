//! `lookout-battery`: runs the fault battery against Lookout and etcd 3.4
//! and prints the table (see the crate doc).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lookout_battery::{FaultKind, RunConfig, Target, report, run};

/// Seeded fault battery: histories checked for linearizability, watch
/// guarantees, lease safety and durability.
#[derive(Debug, Parser)]
struct Args {
    /// `lookout`, `etcd` or `both` (interleaved, seed by seed).
    #[arg(long, default_value = "both")]
    target: String,
    /// Runs per target (seeds `seed`, `seed + 1`, ...).
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// First seed (a failing run prints its seed; pass it here to replay
    /// its schedule).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of faults per run.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Fault kinds, comma separated (default: all; etcd runs skip none).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// The `lookout` binary (default: target/debug/lookout, then release).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where the report and a failing run's evidence go.
    #[arg(long, default_value = "target/battery")]
    out: PathBuf,
    /// Keep every run's evidence, not only a failing one's.
    #[arg(long)]
    keep: bool,
}

fn lookout_bin(given: Option<PathBuf>) -> PathBuf {
    if let Some(b) = given {
        return b;
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|d| d.join("lookout"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/debug/lookout"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut kinds = Vec::new();
    for f in &args.faults {
        match FaultKind::parse(f) {
            Some(k) => kinds.push(k),
            None => {
                eprintln!(
                    "unknown fault {f:?}; known: {}",
                    FaultKind::ALL
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    if kinds.is_empty() {
        kinds = FaultKind::ALL.to_vec();
    }
    let bin = lookout_bin(args.bin.clone());
    let targets: Vec<Target> = match args.target.as_str() {
        "lookout" => vec![Target::Lookout(bin)],
        "etcd" => vec![Target::Etcd],
        "both" => vec![Target::Lookout(bin), Target::Etcd],
        other => {
            eprintln!("--target must be lookout, etcd or both, not {other:?}");
            return ExitCode::from(2);
        }
    };
    let _ = std::fs::create_dir_all(&args.out);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let duration = Duration::from_secs(args.duration);
    let mut results = Vec::new();
    let mut failed = false;
    for n in 0..args.runs {
        let seed = args.seed + n;
        for t in &targets {
            let cfg = RunConfig {
                target: t.clone(),
                seed,
                duration,
                kinds: kinds.clone(),
                out_dir: Some(args.out.clone()),
                keep: args.keep,
            };
            eprintln!("== {} seed {seed}: {} s of faults", t.name(), args.duration);
            match rt.block_on(run(&cfg)) {
                Ok(r) => {
                    eprintln!(
                        "   {} faults, {} ops, {} watch events, {} violations ({:.0} s)",
                        r.faults.len(),
                        r.ops,
                        r.watch_events,
                        r.violations.len(),
                        r.elapsed.as_secs_f64()
                    );
                    for v in &r.violations {
                        eprintln!("   VIOLATION (seed {seed}, {}): {v}", t.name());
                    }
                    failed |= !r.violations.is_empty() && matches!(t, Target::Lookout(_));
                    results.push(r);
                }
                Err(e) => {
                    eprintln!("   could not run (seed {seed}, {}): {e}", t.name());
                    failed = true;
                }
            }
        }
    }
    let table = report::render(&results, duration);
    println!("{table}");
    let _ = std::fs::write(args.out.join("report.md"), &table);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
