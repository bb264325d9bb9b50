//! One more `lookout gateway` child in front of a running store, for
//! scenarios with several gateways (a client killed on one gateway resumes
//! on another). Like [`crate::LookoutStack`] nothing here panics: a gateway
//! that exits or never serves is an error message.
//!
//! ```text
//!   lookout gateway --listen-addr 127.0.0.1:G --endpoints <store> [extra flags]
//! ```

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ChildGuard, free_port, spawn_logged};

/// A running extra gateway; dropping it kills it (by its PID).
#[derive(Debug)]
pub struct ExtraGateway {
    pub child: ChildGuard,
    /// "127.0.0.1:port".
    pub endpoint: String,
}

impl ExtraGateway {
    /// Starts `bin gateway` on a free loopback port in front of
    /// `store_endpoint`, logging into `dir`, and waits (bounded) until it
    /// serves gRPC.
    ///
    /// # Errors
    /// The child's log tail when it exits or does not serve within 30 s.
    pub async fn try_start(
        bin: &Path,
        store_endpoint: &str,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Self, String> {
        let mut last = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let endpoint = format!("127.0.0.1:{port}");
            let mut cmd = Command::new(bin);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "warn");
            }
            cmd.args([
                "gateway",
                "--listen-addr",
                &endpoint,
                "--endpoints",
                store_endpoint,
            ])
            .args(extra);
            let log = dir.join(format!("gateway-{port}.log"));
            let mut child =
                spawn_logged(cmd, &log).map_err(|e| format!("spawn lookout gateway: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if !child.is_running() {
                    last = format!("lookout gateway exited:\n{}", child.log_text());
                    break;
                }
                if crate::grpc_status(&endpoint).await.is_some() {
                    return Ok(Self { child, endpoint });
                }
                if Instant::now() >= deadline {
                    last = format!("lookout gateway did not serve {endpoint} within 30s");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(last)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}
