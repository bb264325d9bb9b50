//! Killing and restarting an [`EtcdServer`] on the same data dir and ports,
//! for tests where the upstream dies and comes back with its history.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::etcd::{EtcdOptions, EtcdServer};
use crate::spawn_logged;

impl EtcdServer {
    /// `kill -9` the member; its data dir stays for [`EtcdServer::restart`].
    pub fn kill(&mut self) {
        self.child.kill9();
    }

    /// Starts etcd again with the same name, ports and data dir (so the same
    /// revisions), and waits up to 20 s until it serves gRPC.
    pub async fn restart(&mut self, opts: &EtcdOptions) {
        self.child.kill9();
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg(format!("--listen-client-urls=http://{}", self.endpoint))
            .arg(format!("--advertise-client-urls=http://{}", self.endpoint))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster={}={}", self.name, self.peer_url))
            .arg("--log-level=warn")
            .args(&opts.extra_args);
        let log = self.dir.path().join("etcd.log");
        self.child = spawn_logged(cmd, &log).expect("respawn etcd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !self.child.is_running() {
                panic!("etcd exited on restart:\n{}", self.child.log_text());
            }
            if crate::grpc_status(&self.endpoint).await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "etcd did not serve after restart:\n{}",
            self.child.log_text()
        );
    }
}
