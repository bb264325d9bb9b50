//! Starting `lookout store` children for the tests.

use std::path::{Path, PathBuf};

use lookout_testkit::{LookoutProcess, free_port};

/// The binary cargo built for this package's tests.
pub fn lookout_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lookout"))
}

/// Starts `lookout store` on a free loopback port with data in `dir`.
pub async fn start_store(dir: &Path, port: Option<u16>) -> LookoutProcess {
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
    let log = dir.join(format!("lookout-{port}.log"));
    LookoutProcess::spawn(&lookout_bin(), &args, &endpoint, &log).await
}
