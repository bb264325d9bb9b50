//! `compare` end to end with a tiny matrix: etcd and grpc-proxy measured,
//! Lookout skipped with a reason when its binary is missing or lacks flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lookout_loadtest::cli::{Cli, Command};
use lookout_loadtest::compare::targets::TargetKind;
use lookout_loadtest::compare::{self, Outcome};

fn args(out: &std::path::Path, lookout: &std::path::Path) -> compare::CompareArgs {
    let cli = Cli::parse_from([
        "lookout-load",
        "compare",
        "--out",
        out.to_str().unwrap(),
        "--lookout-bin",
        lookout.to_str().unwrap(),
        "--watchers",
        "10",
        "--watchers-per-connection",
        "5",
        "--duration",
        "1s",
        "--keys",
        "20",
        "--informer-clients",
        "5",
        "--informer-keys",
        "50",
        "--repeat",
        "2",
        "--no-progress",
    ]);
    match cli.cmd {
        Command::Compare(a) => a,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_etcd_and_proxy_and_skips_missing_lookout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let missing = PathBuf::from("/nonexistent/lookout");
    let stop = tokio_util::sync::CancellationToken::new();
    let res = tokio::time::timeout(
        Duration::from_secs(240),
        compare::run(args(&out, &missing), stop),
    )
    .await
    .expect("compare finishes on its own")
    .unwrap();
    assert_eq!(res.len(), 2, "one fan-out cell and one informer cell");
    for cell in &res {
        let kinds: Vec<TargetKind> = cell.runs.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [TargetKind::Etcd, TargetKind::GrpcProxy, TargetKind::Lookout]
        );
        for (k, o) in &cell.runs {
            match (k, o) {
                (TargetKind::Lookout, Outcome::Skipped(why)) => {
                    assert!(why.contains("does not exist"), "{why}")
                }
                (_, Outcome::Ran(r)) => {
                    assert!(
                        r.sustained,
                        "{} on {}: {:?}",
                        cell.cell.id,
                        k.label(),
                        r.problems
                    );
                    assert!(r.command.contains("--server-pid"), "{}", r.command);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert_eq!(res[0].spread.len(), 2, "etcd and grpc-proxy ran twice");
    for needle in [
        "2 runs, 2 sustained; p99 put → event",
        "2 runs, 2 sustained; time until all synced",
        "## Machine",
        "- CPU: ",
        "lookout**: skipped",
        "grpc-proxy ÷ etcd",
        "fanout-w10-r100.svg",
        "`free -m`",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
    let svg = std::fs::read_to_string(out.join("fanout-w10-r100.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("etcd") && svg.contains("grpc-proxy"));
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(
        jsonl.lines().count(),
        8,
        "2 cells x 2 measured targets x 2 repeats"
    );
}

#[test]
fn lookout_without_the_flags_is_skipped_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("lookout");
    std::fs::write(&bin, "#!/bin/sh\necho 'usage: lookout dev'\n").unwrap();
    let mut perm = std::fs::metadata(&bin).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&bin, perm).unwrap();
    let why = lookout_testkit::lookout_stack::probe(&bin).unwrap_err();
    assert!(
        why.contains("store --help") && why.contains("--listen-client-urls"),
        "{why}"
    );
    let why = lookout_testkit::lookout_stack::probe(&dir.path().join("absent")).unwrap_err();
    assert!(why.contains("does not exist"), "{why}");
}
