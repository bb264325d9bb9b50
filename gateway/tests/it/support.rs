//! Starting `lookout store` children for the tests.

use std::path::{Path, PathBuf};

use lookout_testkit::{LookoutProcess, free_port};

/// The binary cargo built for this package's tests.
pub fn lookout_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lookout"))
}

/// Starts `lookout store` on a free loopback port with data in `dir`.
pub async fn start_store(dir: &Path, port: Option<u16>) -> LookoutProcess {
    start_store_with(dir, port, &[]).await
}

/// [`start_store`] with extra flags last.
pub async fn start_store_with(dir: &Path, port: Option<u16>, extra: &[&str]) -> LookoutProcess {
    let port = port.unwrap_or_else(free_port);
    let endpoint = format!("127.0.0.1:{port}");
    let url = format!("http://{endpoint}");
    let args = vec![
        "store".to_string(),
        "--name".into(),
        "lookout-test".into(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--listen-client-urls".into(),
        url.clone(),
        "--advertise-client-urls".into(),
        url,
    ];
    let mut args = args;
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = dir.join(format!("lookout-{port}.log"));
    LookoutProcess::spawn(&lookout_bin(), &args, &endpoint, &log).await
}

/// Starts `lookout gateway` on a free loopback port in front of
/// `endpoints`, with `/metrics` on another, and waits until its cache has
/// listed the store. Extra flags go last.
pub async fn start_gateway(dir: &Path, endpoints: &[&str], extra: &[&str]) -> LookoutProcess {
    start_gateway_on(dir, endpoints, free_port(), extra).await
}

/// As [`start_gateway`] on a given port (a restarted gateway keeps its address).
pub async fn start_gateway_on(
    dir: &Path,
    endpoints: &[&str],
    port: u16,
    extra: &[&str],
) -> LookoutProcess {
    let endpoint = format!("127.0.0.1:{port}");
    let mut args = vec![
        "gateway".to_string(),
        "--listen-addr".into(),
        endpoint.clone(),
        "--endpoints".into(),
        endpoints.join(","),
        "--metrics-addr".into(),
        format!("127.0.0.1:{}", free_port()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = dir.join(format!("gateway-{port}.log"));
    let gw = LookoutProcess::spawn(&lookout_bin(), &args, &endpoint, &log).await;
    lookout_testkit::wait_for(
        "gateway cache synced",
        std::time::Duration::from_secs(30),
        || {
            let ep = endpoint.clone();
            async move { crate::harness::health_ok(&ep).await.then_some(()) }
        },
    )
    .await;
    gw
}

/// Drops the fields of a JSON answer that differ between any two clusters
/// (`cluster_id`, `member_id`, `raft_term`), at every depth, so that
/// answers from etcd and from Lookout can be compared as values.
pub fn strip_cluster_ids(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for k in ["cluster_id", "member_id", "raft_term"] {
                m.remove(k);
            }
            m.values_mut().for_each(strip_cluster_ids);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_cluster_ids),
        _ => {}
    }
}

/// `lookout dev` (a one-member store and a gateway in one process) on a
/// free loopback port, its data under `dir/data` and its log in
/// `dir/dev.log`.
pub async fn start_dev(dir: &Path) -> LookoutProcess {
    let endpoint = format!("127.0.0.1:{}", free_port());
    let args = vec![
        "dev".to_string(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--listen-client-urls".into(),
        format!("http://{endpoint}"),
    ];
    LookoutProcess::spawn(&lookout_bin(), &args, &endpoint, &dir.join("dev.log")).await
}
