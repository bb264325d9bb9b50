//! A Lookout store plus one gateway in front of it, started from the
//! `lookout` binary, for comparisons and end-to-end tests. Unlike
//! [`crate::LookoutProcess::spawn`] nothing here panics: a binary that is
//! missing or does not take these flags yet is a reason to skip, returned as
//! text.
//!
//! ```text
//!   lookout store   --name s1 --data-dir D --listen-client-urls http://127.0.0.1:P
//!                   --advertise-client-urls http://127.0.0.1:P
//!   lookout gateway --listen-addr 127.0.0.1:G --endpoints 127.0.0.1:P
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ChildGuard, free_port, spawn_logged};

/// Flags each subcommand must accept for [`LookoutStack`] to start it.
pub const STORE_FLAGS: &[&str] = &[
    "--name",
    "--data-dir",
    "--listen-client-urls",
    "--advertise-client-urls",
];
pub const GATEWAY_FLAGS: &[&str] = &["--listen-addr", "--endpoints"];

/// A running store and gateway; dropping it kills both.
#[derive(Debug)]
pub struct LookoutStack {
    /// Dropped first: the gateway goes before the store it talks to.
    pub gateway: ChildGuard,
    pub store: ChildGuard,
    /// "127.0.0.1:port" of the gateway (gRPC, and HTTP on the same port).
    pub gateway_endpoint: String,
    /// "127.0.0.1:port" of the store.
    pub store_endpoint: String,
    pub dir: tempfile::TempDir,
}

/// Checks that `bin` exists and that `lookout store --help` and
/// `lookout gateway --help` mention every flag the stack passes.
///
/// # Errors
/// Why the binary cannot be used (yet).
pub fn probe(bin: &Path) -> Result<(), String> {
    if !bin.is_file() {
        return Err(format!(
            "{} does not exist (build it: cargo build --release -p lookout-gateway)",
            bin.display()
        ));
    }
    for (sub, flags) in [("store", STORE_FLAGS), ("gateway", GATEWAY_FLAGS)] {
        let help = help_text(bin, sub)?;
        let missing: Vec<&str> = flags
            .iter()
            .copied()
            .filter(|f| !help.contains(f))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "`{} {sub} --help` does not list {}",
                bin.display(),
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

/// `bin sub --help`, bounded to 10 s.
fn help_text(bin: &Path, sub: &str) -> Result<String, String> {
    let mut child = Command::new(bin)
        .arg(sub)
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {} {sub} --help: {e}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} {sub} --help did not exit in 10s",
                    bin.display()
                ));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading {} {sub} --help: {e}", bin.display()))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

impl LookoutStack {
    /// Probes `bin`, starts the store, waits (bounded) until it serves gRPC,
    /// then the gateway, and waits for it too.
    ///
    /// # Errors
    /// The probe's reason, or the child's log when it exits or never serves.
    pub async fn try_start(bin: &Path) -> Result<Self, String> {
        probe(bin)?;
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut last = String::new();
        for _attempt in 0..3 {
            let sp = free_port();
            let store_endpoint = format!("127.0.0.1:{sp}");
            let url = format!("http://{store_endpoint}");
            let mut cmd = lookout_cmd(bin);
            cmd.args(["store", "--name", "s1", "--data-dir"])
                .arg(dir.path().join(format!("store-{sp}")))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ]);
            let log = dir.path().join(format!("store-{sp}.log"));
            let mut store =
                spawn_logged(cmd, &log).map_err(|e| format!("spawn lookout store: {e}"))?;
            if let Err(e) = wait_serving(&mut store, &store_endpoint, Duration::from_secs(30)).await
            {
                last = format!("lookout store {e}:\n{}", tail(&store.log_text()));
                continue;
            }
            let gp = free_port();
            let gateway_endpoint = format!("127.0.0.1:{gp}");
            let mut cmd = lookout_cmd(bin);
            cmd.args([
                "gateway",
                "--listen-addr",
                &gateway_endpoint,
                "--endpoints",
                &store_endpoint,
            ]);
            let log = dir.path().join(format!("gateway-{gp}.log"));
            let mut gateway =
                spawn_logged(cmd, &log).map_err(|e| format!("spawn lookout gateway: {e}"))?;
            if let Err(e) =
                wait_serving(&mut gateway, &gateway_endpoint, Duration::from_secs(30)).await
            {
                last = format!("lookout gateway {e}:\n{}", tail(&gateway.log_text()));
                continue;
            }
            return Ok(Self {
                gateway,
                store,
                gateway_endpoint,
                store_endpoint,
                dir,
            });
        }
        Err(last)
    }

    pub fn gateway_pid(&self) -> u32 {
        self.gateway.pid()
    }

    pub fn store_pid(&self) -> u32 {
        self.store.pid()
    }
}

fn lookout_cmd(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    cmd
}

async fn wait_serving(
    child: &mut ChildGuard,
    endpoint: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !child.is_running() {
            return Err("exited".into());
        }
        if crate::grpc_status(endpoint).await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("did not serve {endpoint} within {timeout:?}"))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Where a `lookout` binary is looked for when none is given: `LOOKOUT_BIN`,
/// else next to the running executable (`target/<profile>/lookout`).
pub fn default_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LOOKOUT_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("lookout")))
        .unwrap_or_else(|| PathBuf::from("lookout"))
}
