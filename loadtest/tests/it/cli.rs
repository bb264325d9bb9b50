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

/// `--endpoints a,b` spreads connections over both in turn: the second
/// connection goes to the second endpoint (an unbound port fails it,
/// naming it), and requests on it travel through that endpoint (a proxy
/// cut under it breaks that connection alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_comma_separated_endpoints() {
    use lookout_loadtest::conn::{connect_many, kv};
    use lookout_proto::pb::RangeRequest;
    let etcd = EtcdServer::start().await;
    let dead = format!("127.0.0.1:{}", lookout_testkit::free_port());
    let with_dead = format!("{},{dead}", etcd.endpoint);
    assert!(
        connect_many(&with_dead, 1).await.is_ok(),
        "the first goes to etcd"
    );
    let err = connect_many(&with_dead, 2).await.unwrap_err().to_string();
    assert!(err.contains(&dead), "{err}");

    let proxy = lookout_testkit::TcpProxy::start(&etcd.endpoint).await;
    let chans = connect_many(&format!("{},{}", etcd.endpoint, proxy.endpoint()), 2)
        .await
        .unwrap();
    let range = |i: usize| {
        let mut c = kv(&chans[i]);
        async move {
            let req = RangeRequest {
                key: b"k".to_vec().into(),
                ..Default::default()
            };
            tokio::time::timeout(std::time::Duration::from_secs(5), c.range(req))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    };
    assert!(range(0).await && range(1).await);
    proxy.cut();
    assert!(range(0).await, "the first connection is direct");
    assert!(!range(1).await, "the second went through the proxy");
}
