//! etcd's own gRPC proxy (`etcd grpc-proxy start`) in front of an etcd, as a
//! child process on loopback: the baseline Lookout's gateway is compared to.

use std::process::Command;
use std::time::Duration;

use crate::{ChildGuard, free_port, spawn_logged};

/// A running `etcd grpc-proxy start`; dropping it kills the process.
#[derive(Debug)]
pub struct GrpcProxy {
    pub child: ChildGuard,
    /// "127.0.0.1:port" the proxy serves clients on.
    pub endpoint: String,
    /// Holds the proxy's `--data-dir` and log.
    pub dir: tempfile::TempDir,
}

impl GrpcProxy {
    /// Starts a proxy in front of `etcd_endpoint` ("127.0.0.1:port") and
    /// waits (bounded) until it answers gRPC. Panics when it cannot start.
    pub async fn start(etcd_endpoint: &str) -> Self {
        match Self::try_start(etcd_endpoint).await {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`GrpcProxy::start`] returning the reason instead of panicking.
    ///
    /// # Errors
    /// The last start attempt's log when the proxy never served.
    pub async fn try_start(etcd_endpoint: &str) -> Result<Self, String> {
        let mut last_log = String::new();
        // Ports are found by bind(0) and released before the proxy binds
        // them, so a rare collision is retried with fresh ports.
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
            let port = free_port();
            let endpoint = format!("127.0.0.1:{port}");
            let mut cmd = Command::new("etcd");
            cmd.arg("grpc-proxy")
                .arg("start")
                .arg(format!("--endpoints={etcd_endpoint}"))
                .arg(format!("--listen-addr={endpoint}"))
                .arg(format!("--advertise-client-url={endpoint}"))
                .arg(format!("--data-dir={}", dir.path().join("proxy").display()));
            let log = dir.path().join("grpc-proxy.log");
            let mut child =
                spawn_logged(cmd, &log).map_err(|e| format!("spawn etcd grpc-proxy: {e}"))?;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline && child.is_running() {
                if crate::grpc_status(&endpoint).await.is_some() {
                    return Ok(Self {
                        child,
                        endpoint,
                        dir,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last_log = child.log_text();
        }
        Err(format!(
            "etcd grpc-proxy did not start after 5 attempts; last log:\n{last_log}"
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}
