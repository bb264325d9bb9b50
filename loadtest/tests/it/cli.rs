//! The `lookout-load` binary itself: one JSON line on stdout, a report
//! directory with a markdown table and an SVG plot.

use std::process::Command;

use lookout_testkit::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_one_json_line_and_writes_a_report() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r");
    let out = tokio::task::spawn_blocking({
        let ep = etcd.endpoint.clone();
        let report = report.clone();
        let pid = etcd.pid();
        move || {
            Command::new(env!("CARGO_BIN_EXE_lookout-load"))
                .args([
                    "fanout",
                    "--endpoint",
                    &ep,
                    "--watchers",
                    "6",
                    "--connections",
                    "2",
                ])
                .args([
                    "--rate",
                    "20",
                    "--duration",
                    "1s",
                    "--keys",
                    "5",
                    "--no-progress",
                ])
                .arg(format!("--server-pid=etcd={pid}"))
                .arg("--report")
                .arg(&report)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON line: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(v["sustained"], true, "{}", lines[0]);
    assert_eq!(v["watch"]["normal"]["checks"]["missing"], 0);
    assert_eq!(v["watch"]["normal"]["checks"]["events"], 6 * 20);
    assert_eq!(v["servers"][0]["label"], "etcd");
    assert!(v["command"].as_str().unwrap().contains("--watchers 6"));
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("| p99 put → event |") && md.contains("latency.svg"),
        "{md}"
    );
    let svg = std::fs::read_to_string(report.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.contains("<svg"));
}

#[test]
fn bad_flags_are_rejected_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_lookout-load"))
        .args(["fanout", "--duration", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad duration"));
}
