//! The `lookout` binary as a child process, for crash and interop tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{ChildGuard, spawn_logged};

/// A running `lookout <subcommand>` child with the client endpoint it serves.
#[derive(Debug)]
pub struct LookoutProcess {
    pub child: ChildGuard,
    /// "127.0.0.1:port".
    pub endpoint: String,
}

impl LookoutProcess {
    /// Spawns `bin args...` (stdout/stderr to `log`) and waits up to 30 s
    /// until `endpoint` answers gRPC Status. Panics with the log otherwise.
    pub async fn spawn(bin: &Path, args: &[String], endpoint: &str, log: &Path) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = spawn_logged(cmd, log).expect("spawn lookout");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if !child.is_running() {
                panic!("lookout exited early:\n{}", child.log_text());
            }
            if crate::grpc_status(endpoint).await.is_some() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "lookout did not serve {endpoint} in 30s:\n{}",
                    child.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            endpoint: endpoint.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// Path of the `lookout` binary for tests outside the gateway crate: the
/// `LOOKOUT_BIN` environment variable, or `target/<profile>/lookout` next to
/// the running test executable. Build it first (`cargo build -p lookout-gateway`).
pub fn lookout_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LOOKOUT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    profile_dir.join("lookout")
}
