//! A real etcd 3.4 (Debian's `etcd-server`) as a child process on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{ChildGuard, free_port, spawn_logged};

/// One etcd member listening on 127.0.0.1 ephemeral ports, with its own temp
/// data dir. Dropping it kills the process and removes the data.
#[derive(Debug)]
pub struct EtcdServer {
    pub child: ChildGuard,
    /// "127.0.0.1:port", the form etcdctl and our clients take.
    pub endpoint: String,
    pub peer_url: String,
    pub name: String,
    /// Kept so the directory lives as long as the server.
    pub dir: tempfile::TempDir,
}

/// Options for [`EtcdServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Extra flags appended to etcd's command line.
    pub extra_args: Vec<String>,
}

impl EtcdServer {
    /// Starts a one-member etcd and waits (bounded) until it serves gRPC.
    pub async fn start() -> Self {
        Self::start_with(EtcdOptions::default()).await
    }

    pub async fn start_with(opts: EtcdOptions) -> Self {
        let mut last_log = String::new();
        // Ports come from bind(0) and are released before etcd binds them,
        // so a rare collision with another test is retried.
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let client = free_port();
            let peer = free_port();
            let name = format!("etcd-{client}");
            let endpoint = format!("127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut cmd = Command::new("etcd");
            cmd.arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg(format!("--listen-client-urls=http://{endpoint}"))
                .arg(format!("--advertise-client-urls=http://{endpoint}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster={name}={peer_url}"))
                .arg("--log-level=warn")
                .args(&opts.extra_args);
            let log = dir.path().join("etcd.log");
            let mut child =
                spawn_logged(cmd, &log).expect("spawn etcd (apt-get install etcd-server)");
            if wait_serving(&mut child, &endpoint, &log).await {
                return Self {
                    child,
                    endpoint,
                    peer_url,
                    name,
                    dir,
                };
            }
            last_log = child.log_text();
        }
        panic!("etcd did not start after 5 attempts; last log:\n{last_log}");
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Waits up to 20 s for gRPC Status to answer; false if the child exited.
async fn wait_serving(child: &mut ChildGuard, endpoint: &str, _log: &Path) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if !child.is_running() {
            return false;
        }
        if crate::grpc_status(endpoint).await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
