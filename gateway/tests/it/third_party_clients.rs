//! Real third-party etcd clients, unchanged, against three targets: a
//! `lookout dev` process, a `lookout gateway` process in front of a real
//! etcd 3.4, and that etcd directly. etcd is the control: a flow that fails
//! there is a bug in the flow, not in Lookout.
//!
//! ```text
//!   gateway/tests/clients/etcd3gw_flows.py  (Python etcd3gw, HTTP/JSON)  ┐
//!   gateway/tests/clients/etcd3_flows.py    (Python etcd3 0.12, gRPC)    ├─> target
//!   gateway/tests/clients/etcd3_flows.js    (Node etcd3, gRPC)           │
//!   etcdctl lock / etcdctl elect            (two contenders, a listener) ┘
//! ```
//!
//! The scripts assert their own outcomes and end with `PASS` or a `FAIL:`
//! line; `scripts/deps.sh` installs the pinned clients (a venv under
//! `target/clients/`, `node_modules` beside the scripts). One test per
//! client and target, so a failure names both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lookout_testkit::{EtcdServer, LookoutProcess, etcdctl, wait_for_blocking};

use crate::harness::{WAIT, health_ok};
use crate::support::start_gateway;

/// Longer than any flow takes on a loaded machine (each script also arms
/// its own 90 s deadline and exits with every thread's stack).
const SCRIPT_LIMIT: Duration = Duration::from_secs(150);

/// Known differences from etcd, allowed per target (`--known NAME`, see
/// `checks.known`): the script prints each and fails when one no longer
/// shows, so an entry goes as soon as Lookout is fixed.
///
/// (None today.)
const LOOKOUT_KNOWN: &[&str] = &[];

// === targets ===

#[derive(Debug, Clone, Copy)]
enum Target {
    /// Real etcd 3.4 directly: the control.
    Etcd,
    /// `lookout dev`: a one-node store and a gateway in one process.
    Dev,
    /// `lookout gateway` in front of a real etcd 3.4.
    GatewayOverEtcd,
}

/// A started target; dropping it stops its processes.
struct Running {
    endpoint: String,
    /// Logs to quote when a flow fails.
    logs: Vec<PathBuf>,
    known: &'static [&'static str],
    /// Fields drop in order: the gateway goes before the etcd it talks to,
    /// and the data dir last.
    _lookout: Option<LookoutProcess>,
    _etcd: Option<EtcdServer>,
    _dir: tempfile::TempDir,
}

impl Target {
    async fn start(self) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        match self {
            Target::Etcd => {
                let etcd = EtcdServer::start().await;
                Running {
                    endpoint: etcd.endpoint.clone(),
                    logs: vec![etcd.child.log_path().to_path_buf()],
                    known: &[],
                    _etcd: Some(etcd),
                    _lookout: None,
                    _dir: dir,
                }
            }
            Target::Dev => {
                let dev = crate::support::start_dev(dir.path()).await;
                let endpoint = dev.endpoint.clone();
                let log = dir.path().join("dev.log");
                lookout_testkit::wait_for("dev gateway synced", WAIT, || {
                    let ep = endpoint.clone();
                    async move { health_ok(&ep).await.then_some(()) }
                })
                .await;
                Running {
                    endpoint,
                    logs: vec![log],
                    known: LOOKOUT_KNOWN,
                    _etcd: None,
                    _lookout: Some(dev),
                    _dir: dir,
                }
            }
            Target::GatewayOverEtcd => {
                let etcd = EtcdServer::start().await;
                let gw = start_gateway(dir.path(), &[&etcd.endpoint], &[]).await;
                Running {
                    endpoint: gw.endpoint.clone(),
                    logs: vec![
                        gw.child.log_path().to_path_buf(),
                        etcd.child.log_path().to_path_buf(),
                    ],
                    known: LOOKOUT_KNOWN,
                    _etcd: Some(etcd),
                    _lookout: Some(gw),
                    _dir: dir,
                }
            }
        }
    }
}

impl Running {
    /// The last lines of each process log, for failure messages.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for p in &self.logs {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("=== {} ===\n{tail}\n", p.display()));
        }
        out
    }
}

// === running a flow script ===

/// gateway/tests/clients, where the scripts and node_modules live.
fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The venv scripts/deps.sh fills from requirements.txt.
fn venv_python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/clients/venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run `bash scripts/deps.sh` (installs the pinned Python etcd clients)",
        p.display()
    );
    p
}

fn node_command() -> Command {
    let modules = clients_dir().join("node_modules/etcd3");
    assert!(
        modules.is_dir(),
        "{} is missing: run `bash scripts/deps.sh` (installs the pinned Node etcd client)",
        modules.display()
    );
    Command::new("node")
}

/// Runs `cmd` (output to `log`), killing it after `limit`; returns its
/// exit status (None when it had to be killed) and its output.
fn run_bounded(mut cmd: Command, log: &Path, limit: Duration) -> (Option<ExitStatus>, String) {
    let out = std::fs::File::create(log).expect("create script log");
    let err = out.try_clone().expect("clone log handle");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

#[derive(Debug, Clone, Copy)]
enum Script {
    Etcd3gw,
    PythonEtcd3,
    NodeEtcd3,
}

async fn run_script(script: Script, target: Target) {
    let t = target.start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = match script {
        Script::Etcd3gw | Script::PythonEtcd3 => {
            let mut c = Command::new(venv_python());
            c.arg(clients_dir().join(match script {
                Script::Etcd3gw => "etcd3gw_flows.py",
                _ => "etcd3_flows.py",
            }));
            // Keep __pycache__ out of the source tree.
            c.env("PYTHONDONTWRITEBYTECODE", "1");
            c
        }
        Script::NodeEtcd3 => {
            let mut c = node_command();
            c.arg(clients_dir().join("etcd3_flows.js"));
            c
        }
    };
    // A developer's proxy settings must not route loopback calls (requests,
    // grpcio and grpc-js all read them).
    cmd.current_dir(clients_dir())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .args(["--endpoint", &t.endpoint, "--prefix", "/clients/"]);
    for k in t.known {
        cmd.args(["--known", k]);
    }
    let log = dir.path().join("script.log");
    let (status, output) =
        tokio::task::spawn_blocking(move || run_bounded(cmd, &log, SCRIPT_LIMIT))
            .await
            .expect("script runner");
    let passed = status.is_some_and(|s| s.success()) && output.lines().any(|l| l == "PASS");
    assert!(
        passed,
        "{script:?} flows against {target:?} ({}) {}:\n{output}\n{}",
        t.endpoint,
        match status {
            None => format!("were killed after {SCRIPT_LIMIT:?}"),
            Some(s) => format!("failed ({s})"),
        },
        t.log_tails()
    );
}

// === etcdctl lock / elect ===

/// A long-running etcdctl (a lock holder, a candidate, a listener) whose
/// output is read from a file while it runs; killed on drop.
struct Etcdctl {
    child: Child,
    out: PathBuf,
    what: String,
}

impl Etcdctl {
    fn spawn(dir: &Path, name: &str, endpoint: &str, args: &[&str]) -> Self {
        let out = dir.join(format!("{name}.out"));
        let file = std::fs::File::create(&out).expect("create etcdctl output");
        let err = file.try_clone().expect("clone");
        let child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("run etcdctl (apt-get install etcd-client)");
        Self {
            child,
            out,
            what: format!("etcdctl {}", args.join(" ")),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits (bounded) until the output contains `needle`.
    fn wait_output(&self, needle: &str) -> String {
        wait_for_blocking(
            &format!("`{}` to print {needle:?}", self.what),
            WAIT,
            || {
                let o = self.output();
                o.contains(needle).then_some(o)
            },
        )
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (etcdctl then unlocks or resigns), and the exit status once
    /// it exits, bounded. The child is not reaped before the signal, so its
    /// PID cannot have been reused.
    fn sigterm_and_wait(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        wait_for_blocking(&format!("`{}` to exit", self.what), WAIT, || {
            self.child.try_wait().ok().flatten()
        })
    }

    /// The exit status once it exits by itself, bounded.
    fn wait_exit(&mut self) -> ExitStatus {
        wait_for_blocking(&format!("`{}` to exit", self.what), WAIT, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Etcdctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys under `prefix/`, via a plain etcdctl get.
fn keys_under(endpoint: &str, prefix: &str) -> Vec<String> {
    let out = etcdctl(
        endpoint,
        &["get", &format!("{prefix}/"), "--prefix", "--keys-only"],
    );
    assert!(out.status.success(), "etcdctl get: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Two `etcdctl lock` contenders: the second gets the lock only after the
/// first releases it (SIGTERM unlocks), then after the holder's session
/// lease expires (`kill -9` leaves its key to the lease).
fn etcdctl_lock_flow(endpoint: &str, dir: &Path) -> Result<(), String> {
    // Holder A prints its lock key and holds until signalled.
    let mut a = Etcdctl::spawn(dir, "a", endpoint, &["lock", "L1"]);
    let key_a = a.wait_output("L1/");
    // B runs a command once it holds the lock, then unlocks and exits.
    let mut b = Etcdctl::spawn(dir, "b", endpoint, &["lock", "L1", "echo", "B-HOLDS"]);
    // B is queued: its own key exists beside A's (ordered by create revision).
    wait_for_blocking("B's key beside A's", WAIT, || {
        (keys_under(endpoint, "L1").len() == 2).then_some(())
    });
    // Absence needs a window; keep it short, the key above is the proof B waits.
    std::thread::sleep(Duration::from_millis(500));
    if !b.running() || b.output().contains("B-HOLDS") {
        return Err(format!(
            "B got the lock while A held it:\nA: {key_a}\nB: {}",
            b.output()
        ));
    }
    let st = a.sigterm_and_wait();
    if !st.success() {
        return Err(format!("A did not unlock cleanly ({st}): {}", a.output()));
    }
    b.wait_output("B-HOLDS");
    let st = b.wait_exit();
    if !st.success() {
        return Err(format!("B failed ({st}): {}", b.output()));
    }
    let left = keys_under(endpoint, "L1");
    if !left.is_empty() {
        return Err(format!("lock keys left after both released: {left:?}"));
    }

    // A holder that dies without unlocking: its key goes with its lease.
    let mut c = Etcdctl::spawn(dir, "c", endpoint, &["lock", "--ttl=2", "L2"]);
    c.wait_output("L2/");
    let _ = c.child.kill();
    let _ = c.child.wait();
    let started = Instant::now();
    let mut d = Etcdctl::spawn(dir, "d", endpoint, &["lock", "L2", "echo", "D-HOLDS"]);
    d.wait_output("D-HOLDS");
    let st = d.wait_exit();
    if !st.success() {
        return Err(format!("D failed ({st}): {}", d.output()));
    }
    // The killed holder's 2 s lease had to expire first.
    if started.elapsed() < Duration::from_secs(1) {
        return Err(format!(
            "D got L2 {:?} after its holder was killed, before the holder's lease could expire",
            started.elapsed()
        ));
    }
    Ok(())
}

/// `etcdctl elect -l` watches two candidates: the first leads, the second
/// waits, and when the first resigns (SIGTERM) the listener sees the second.
fn etcdctl_elect_flow(endpoint: &str, dir: &Path) -> Result<(), String> {
    let mut listener = Etcdctl::spawn(dir, "listen", endpoint, &["elect", "-l", "E1"]);
    let mut c1 = Etcdctl::spawn(dir, "cand1", endpoint, &["elect", "E1", "cand1"]);
    c1.wait_output("cand1");
    listener.wait_output("cand1");
    let mut c2 = Etcdctl::spawn(dir, "cand2", endpoint, &["elect", "E1", "cand2"]);
    wait_for_blocking("cand2's key beside cand1's", WAIT, || {
        (keys_under(endpoint, "E1").len() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    if !c2.output().is_empty() || listener.output().contains("cand2") {
        return Err(format!(
            "cand2 elected while cand1 leads:\ncand2: {}\nlistener: {}",
            c2.output(),
            listener.output()
        ));
    }
    let st = c1.sigterm_and_wait();
    if !st.success() {
        return Err(format!(
            "cand1 did not resign cleanly ({st}): {}",
            c1.output()
        ));
    }
    c2.wait_output("cand2");
    let seen = listener.wait_output("cand2");
    // The listener prints each leader's key then its value, in order.
    let values: Vec<&str> = seen.lines().filter(|l| !l.starts_with("E1/")).collect();
    if values != ["cand1", "cand2"] {
        return Err(format!(
            "listener saw {values:?}, expected cand1 then cand2:\n{seen}"
        ));
    }
    for p in [&mut c2, &mut listener] {
        let st = p.sigterm_and_wait();
        if !st.success() {
            return Err(format!("`{}` exited with {st}: {}", p.what, p.output()));
        }
    }
    Ok(())
}

async fn run_etcdctl(flow: fn(&str, &Path) -> Result<(), String>, name: &str, target: Target) {
    let t = target.start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ep = t.endpoint.clone();
    let path = dir.path().to_path_buf();
    let res = tokio::task::spawn_blocking(move || flow(&ep, &path))
        .await
        .expect("etcdctl flow");
    if let Err(e) = res {
        panic!(
            "etcdctl {name} against {target:?} ({}): {e}\n{}",
            t.endpoint,
            t.log_tails()
        );
    }
}

// === one test per client and target ===

macro_rules! client_tests {
    ($($name:ident => $body:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $body.await
        }
    )*};
}

client_tests! {
    etcd3gw_on_etcd => run_script(Script::Etcd3gw, Target::Etcd);
    etcd3gw_on_lookout_dev => run_script(Script::Etcd3gw, Target::Dev);
    etcd3gw_on_gateway_over_etcd => run_script(Script::Etcd3gw, Target::GatewayOverEtcd);
    python_etcd3_on_etcd => run_script(Script::PythonEtcd3, Target::Etcd);
    python_etcd3_on_lookout_dev => run_script(Script::PythonEtcd3, Target::Dev);
    python_etcd3_on_gateway_over_etcd => run_script(Script::PythonEtcd3, Target::GatewayOverEtcd);
    node_etcd3_on_etcd => run_script(Script::NodeEtcd3, Target::Etcd);
    node_etcd3_on_lookout_dev => run_script(Script::NodeEtcd3, Target::Dev);
    node_etcd3_on_gateway_over_etcd => run_script(Script::NodeEtcd3, Target::GatewayOverEtcd);
    etcdctl_lock_on_etcd => run_etcdctl(etcdctl_lock_flow, "lock", Target::Etcd);
    etcdctl_lock_on_lookout_dev => run_etcdctl(etcdctl_lock_flow, "lock", Target::Dev);
    etcdctl_lock_on_gateway_over_etcd => run_etcdctl(etcdctl_lock_flow, "lock", Target::GatewayOverEtcd);
    etcdctl_elect_on_etcd => run_etcdctl(etcdctl_elect_flow, "elect", Target::Etcd);
    etcdctl_elect_on_lookout_dev => run_etcdctl(etcdctl_elect_flow, "elect", Target::Dev);
    etcdctl_elect_on_gateway_over_etcd => run_etcdctl(etcdctl_elect_flow, "elect", Target::GatewayOverEtcd);
}
