//! Put (and serializable 10k-key range) throughput of `lookout store`
//! beside etcd 3.4 in the same run, measured by `lookout-load`: for every
//! repetition and every client count, a fresh etcd cluster and a fresh
//! `lookout store` cluster of the same size are started through
//! lookout-testkit (PIDs kept, killed on drop), `lookout-load put` (or
//! `range`) runs against each one's leader, and the target order
//! alternates between repetitions so the shared machine's noise hits both
//! alike. Prints every run as it finishes, then the medians and ratios.
//!
//! ```text
//! cargo build --release -p lookout-gateway -p lookout-loadtest
//! cargo run --release -p lookout-consensus --example put_vs_etcd -- \
//!     [--members 1|3] [--clients 1,16,64] [--repeat 3] [--total N] [--range]
//!     [--lookout LABEL=PATH ...]
//! ```
//!
//! `LOOKOUT_BIN` / `LOOKOUT_LOAD_BIN` override the binaries (default:
//! next to this example, in target/release/). Each `--lookout LABEL=PATH`
//! adds another `lookout` binary (say, a copy built before a change) to
//! the same interleaved run, so before/after ratios share its noise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lookout_testkit::cluster::{Cluster, Program};

struct Opts {
    members: usize,
    clients: Vec<usize>,
    repeat: usize,
    /// Puts per run with one client; scaled up with more clients so each
    /// run lasts seconds on both servers.
    total: u64,
    range: bool,
    /// Extra lookout binaries: (label, path).
    extra: Vec<(String, PathBuf)>,
}

const USAGE: &str = "usage: put_vs_etcd [--members 1|3] [--clients 1,16,64] [--repeat 3] \
[--total N] [--range] [--lookout LABEL=PATH ...]";

/// Ends the process with `msg` and the usage (exit status 2, as for any
/// command-line mistake).
fn bad(msg: &str) -> ! {
    eprintln!("put_vs_etcd: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| bad(&format!("{flag} takes a number, not {v:?}")))
}

fn parse() -> Opts {
    let mut o = Opts {
        members: 1,
        clients: vec![1, 16, 64],
        repeat: 3,
        total: 2000,
        range: false,
        extra: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| bad(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--members" => o.members = number("--members", &val()),
            "--clients" => o.clients = val().split(',').map(|s| number("--clients", s)).collect(),
            "--repeat" => o.repeat = number("--repeat", &val()),
            "--total" => o.total = number("--total", &val()),
            "--range" => o.range = true,
            "--lookout" => {
                let v = val();
                let (label, path) = v
                    .split_once('=')
                    .unwrap_or_else(|| bad("--lookout takes LABEL=PATH"));
                o.extra.push((label.to_string(), PathBuf::from(path)));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => bad(&format!("unknown flag {other}")),
        }
    }
    o
}

fn release_dir() -> PathBuf {
    // target/release/examples/<this>
    std::env::current_exe()
        .expect("current exe")
        .parent()
        .and_then(Path::parent)
        .expect("example lives in target/<profile>/examples")
        .to_path_buf()
}

fn bin(env: &str, name: &str) -> PathBuf {
    let p = std::env::var_os(env).map_or_else(|| release_dir().join(name), PathBuf::from);
    assert!(
        p.exists(),
        "{} missing: cargo build --release -p lookout-gateway -p lookout-loadtest",
        p.display()
    );
    p
}

/// What one `lookout-load` run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_f64().unwrap_or(f64::NAN)
}

/// Runs `lookout-load <args>` against `endpoint`; the JSON line it prints.
fn load(load_bin: &Path, args: &[String], endpoint: &str, label: &str, pids: &[u32]) -> Run {
    let mut cmd = Command::new(load_bin);
    cmd.args(args)
        .arg("--endpoint")
        .arg(endpoint)
        .arg("--label")
        .arg(label)
        .arg("--no-progress");
    for p in pids {
        cmd.arg("--server-pid").arg(format!("{label}={p}"));
    }
    let out = cmd.output().expect("run lookout-load");
    assert!(
        out.status.success(),
        "lookout-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().expect("a result line");
    let v: serde_json::Value = serde_json::from_str(line).expect("result JSON");
    let problems = v["problems"].as_array().map_or(0, Vec::len);
    assert!(
        problems == 0 && v["ops"]["errors"].as_u64() == Some(0),
        "{label}: {line}"
    );
    Run {
        ops_per_s: num(&v, &["ops", "ops_per_s"]),
        p50_ms: num(&v, &["latency", "p50_ms"]),
        p99_ms: num(&v, &["latency", "p99_ms"]),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = parse();
    let lookout = bin("LOOKOUT_BIN", "lookout");
    let load_bin = bin("LOOKOUT_LOAD_BIN", "lookout-load");
    let mut programs = vec![
        ("etcd".to_string(), Program::Etcd),
        ("lookout".to_string(), Program::Lookout(lookout)),
    ];
    for (label, path) in &o.extra {
        assert!(path.exists(), "{} missing", path.display());
        programs.push((label.clone(), Program::Lookout(path.clone())));
    }
    let np = programs.len();
    let cells: Vec<Option<usize>> = if o.range {
        vec![None]
    } else {
        o.clients.iter().copied().map(Some).collect()
    };
    // (cell, target) -> runs
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); np]; cells.len()];
    for r in 0..o.repeat {
        for (ci, cell) in cells.iter().enumerate() {
            for k in 0..np {
                // Rotate which target goes first.
                let t = (k + r + ci) % np;
                let (label, program) = &programs[t];
                let mut cl = Cluster::start(program.clone(), o.members, &[]).await;
                let leader = cl.wait_leader(Duration::from_secs(30)).await;
                let ep = cl.members[leader].endpoint.clone();
                let pids: Vec<u32> = cl.members.iter().map(|m| m.pid()).collect();
                let args: Vec<String> = match cell {
                    Some(clients) => {
                        let total = o.total * (*clients as u64).clamp(1, 8);
                        vec![
                            "put".into(),
                            "--clients".into(),
                            clients.to_string(),
                            "--connections".into(),
                            (*clients).min(16).to_string(),
                            "--total".into(),
                            total.to_string(),
                            "--value-size".into(),
                            "256".into(),
                        ]
                    }
                    None => vec![
                        "range".into(),
                        "--serializable".into(),
                        "--whole-prefix".into(),
                        "--keys".into(),
                        "10000".into(),
                        "--clients".into(),
                        "1".into(),
                        "--total".into(),
                        "300".into(),
                        "--value-size".into(),
                        "256".into(),
                    ],
                };
                let run = tokio::task::block_in_place(|| load(&load_bin, &args, &ep, label, &pids));
                drop(cl);
                let what = cell.map_or("range-10k".to_string(), |c| format!("put/{c}"));
                println!(
                    "run {r} {what} {label}: {:.0} ops/s p50 {:.2} ms p99 {:.2} ms",
                    run.ops_per_s, run.p50_ms, run.p99_ms
                );
                runs[ci][t].push(run);
            }
        }
    }
    println!(
        "\n{} member(s), median of {} runs (ops/s), ratio = lookout / etcd",
        o.members, o.repeat
    );
    for (label, _) in &programs[1..] {
        println!("\n| cell | etcd | {label} | ratio |\n|---|---|---|---|");
        let t = programs
            .iter()
            .position(|(l, _)| l == label)
            .expect("own label");
        for (ci, cell) in cells.iter().enumerate() {
            let e = median(runs[ci][0].iter().map(|r| r.ops_per_s).collect());
            let l = median(runs[ci][t].iter().map(|r| r.ops_per_s).collect());
            let what = cell.map_or("range 10k serializable".to_string(), |c| {
                format!("put, {c} client(s)")
            });
            println!("| {what} | {e:.0} | {l:.0} | {:.2}x |", l / e);
        }
    }
}
