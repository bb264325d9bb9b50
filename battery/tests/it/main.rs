//! The short battery CI runs: a few seeds of every fault kind against the
//! real `lookout` binary (build it first:
//! `cargo build -p lookout-gateway --bin lookout`). Each seed is its own
//! test so nextest bounds each one; a failure names its seed, and
//! `lookout-battery --target lookout --seed <seed> --duration <d>` replays
//! its schedule. Long soaks and the etcd baseline run from the binary
//! (`--runs`, `--duration`, `--target both`).

use std::time::Duration;

use lookout_battery::{FaultKind, RunConfig, Target, run};

/// Seconds of faults per seed: enough for 3 to 5 faults.
const DURATION: Duration = Duration::from_secs(20);

async fn battery(seed: u64) {
    let cfg = RunConfig {
        target: Target::Lookout(lookout_testkit::lookout::lookout_bin()),
        seed,
        duration: DURATION,
        kinds: FaultKind::ALL.to_vec(),
        out_dir: Some(std::env::temp_dir().join("lookout-battery-ci")),
        keep: false,
    };
    let r = run(&cfg)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the battery could not run: {e}"));
    eprintln!(
        "seed {seed}: {} faults ({}), {} ops, {} watch events, {} revisions",
        r.faults.len(),
        r.faults
            .iter()
            .map(|f| format!("{} {}", f.kind, f.target))
            .collect::<Vec<_>>()
            .join(", "),
        r.ops,
        r.watch_events,
        r.revisions
    );
    for n in &r.notes {
        eprintln!("seed {seed}: note: {n}");
    }
    // A run that checked nothing proves nothing.
    assert!(!r.faults.is_empty(), "seed {seed}: no fault was injected");
    assert!(
        r.writes_acked > 0 && r.reads > 0 && r.watch_events > 0,
        "seed {seed}: too little was checked: {} acknowledged writes, {} reads, {} watch events",
        r.writes_acked,
        r.reads,
        r.watch_events
    );
    let violations: Vec<String> = r.violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations (evidence under {}):\n{}",
        violations.len(),
        cfg.out_dir
            .as_ref()
            .map_or(String::new(), |d| d.display().to_string()),
        violations.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn battery_seed_1() {
    battery(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn battery_seed_2() {
    battery(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn battery_seed_3() {
    battery(3).await;
}
