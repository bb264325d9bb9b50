//! `lookout-testkit`: what every Lookout integration test needs to start and
//! talk to real processes on loopback, and the one checker of etcd's watch
//! guarantees (used by the tests and by `lookout-load`).
//!
//! ```text
//!   test ──spawn──> etcd / lookout (child, PID kept) ──> wait_ready (bounded)
//!        <──Drop─── kill that PID, reap it, remove its temp data dir
//!   watchers' records + the store's history read back ──> checker ──> verdict
//! ```
//!
//! It owns: loopback port allocation, starting a real etcd 3.4 (Debian's
//! `etcd`) or a `lookout` binary as a child process, running `etcdctl`,
//! bounded polling, and judging watchers against the store's own history.
//! It must never kill a process it did not start (no kill by name), never
//! listen outside 127.0.0.0/8, and never decide an event is missing from
//! anything but the store's history.
//!
//! Where things live:
//!
//! | concern | module |
//! |---|---|
//! | ports, bounded waits, child guards, `etcdctl` | this file |
//! | real etcd, grpc-proxy, a restartable etcd | [`etcd`], [`grpc_proxy`], [`etcd_restart`] |
//! | `lookout` processes: one, store + gateway, extra gateways | [`lookout`], [`lookout_stack`], [`extra_gateway`] |
//! | N-member clusters (`lookout store` or etcd), membership, kills | [`cluster`] |
//! | test certificates | [`certs`] |
//! | KV calls and the churn workload | [`kv`] |
//! | HTTP/1 by hand, a TCP proxy that can cut links | [`http1`], [`tcp_proxy`] |
//! | watch guarantees (online record, truth, verdict, history reader) | [`checker`] |
//! | linearizability of register histories | [`linearizability`] |
//! | the fault battery's checkers: the revision log merged from members' watches, multi-key linearizability, watchers that resume on any server, lease safety, durability | [`kv_history`], [`kv_linearizability`], [`watch_check`], [`lease_check`], [`durability`] |
//! | per-link partitions, one-way loss and delay between named processes | [`fault_proxy`] |
//! | etcdctl transcripts (fixed session, scripts) | [`session`], [`script`] |
//! | the crate's error type | [`error`] |

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod certs;
pub mod checker;
pub mod cluster;
pub mod durability;
pub mod error;
pub mod etcd;
pub mod etcd_restart;
pub mod extra_gateway;
pub mod fault_proxy;
pub mod grpc_proxy;
pub mod http1;
pub mod kv;
pub mod kv_history;
pub mod kv_linearizability;
pub mod lease_check;
pub mod linearizability;
pub mod lookout;
pub mod lookout_stack;
pub mod script;
pub mod session;
pub mod tcp_proxy;
pub mod watch_check;

pub use error::TestkitError;
pub use etcd::EtcdServer;
pub use extra_gateway::ExtraGateway;
pub use grpc_proxy::GrpcProxy;
pub use lookout::LookoutProcess;
pub use lookout_stack::LookoutStack;
pub use session::etcdctl_session;
pub use tcp_proxy::TcpProxy;

/// A free TCP port on 127.0.0.1, found by binding port 0.
///
/// The port is released before return, so another process could grab it;
/// callers that start a server on it retry on "address in use".
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Polls `cond` every 20 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message. Tests wait on conditions, never on sleeps.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking twin of [`wait_for`] for tests that are not async.
pub fn wait_for_blocking<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True once something accepts TCP connections on `addr`.
pub fn accepts_tcp(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Runs Debian's `etcdctl` (API v3) against `endpoint` ("127.0.0.1:port")
/// with a bounded command timeout, returning its raw output.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl (apt-get install etcd-client)")
}

/// A child process that is killed (by its own PID) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    /// Where the child's stdout and stderr go, kept for failure messages.
    log: PathBuf,
}

impl ChildGuard {
    pub fn new(child: Child, log: PathBuf) -> Self {
        Self {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `kill -9`: no chance to flush or clean up, as a crash would leave it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to the child and waits (bounded) for it to exit,
    /// returning its exit status; falls back to SIGKILL after `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The child's combined output so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> std::io::Result<ChildGuard> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()?;
    Ok(ChildGuard::new(child, log.to_path_buf()))
}

/// Asks `endpoint` ("127.0.0.1:port") for Maintenance Status over gRPC;
/// `Some(revision)` once it answers.
pub async fn grpc_status(endpoint: &str) -> Option<i64> {
    let resp = cluster::status(endpoint).await?;
    Some(resp.header.map_or(0, |h| h.revision))
}
