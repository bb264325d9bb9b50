//! N-member clusters on loopback as child processes: `lookout store` or a
//! real etcd 3.4, started with the very same etcd flags (three commands
//! for three members, like etcd's docs), PIDs kept, killed on drop.
//!
//! ```text
//!   Cluster::start(Program::Lookout, 3) ──spawn x3──> members (own data dir, ports)
//!        ──wait (bounded)──> every member answers Status with the same leader
//!   kill9(i) / restart(i) / add_member(..) for failure and membership tests
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lookout_proto::pb::{StatusRequest, StatusResponse, maintenance_client::MaintenanceClient};

use crate::{ChildGuard, free_port, spawn_logged};

/// Which server the members run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `<bin> store ...` (see [`crate::lookout::lookout_bin`]).
    Lookout(PathBuf),
    /// Debian's `etcd`.
    Etcd,
}

/// One member: its flags, ports and (while running) its process.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    /// "127.0.0.1:port", as etcdctl and our clients take it.
    pub endpoint: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The flags it was started with (reused by `restart`).
    pub args: Vec<String>,
    pub child: Option<ChildGuard>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A cluster of child processes; dropping it kills every member.
#[derive(Debug)]
pub struct Cluster {
    pub program: Program,
    pub members: Vec<Member>,
    pub token: String,
    /// Extra flags given to every member.
    pub extra: Vec<String>,
    /// Holds every member's data dir and log.
    pub dir: tempfile::TempDir,
}

/// Maintenance Status of one endpoint (bounded by a 2 s timeout).
pub async fn status(endpoint: &str) -> Option<StatusResponse> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let r = MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await
        .ok()?;
    Some(r.into_inner())
}

impl Cluster {
    /// Starts `n` members with `extra` flags and waits (up to 60 s) until
    /// all agree on a leader.
    pub async fn start(program: Program, n: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = format!("lookout-test-{}", free_port());
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Self::plan(dir.path(), &format!("m{i}")));
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            program,
            members,
            token,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        for i in 0..n {
            let args = c.member_args(i, &initial, "new");
            c.members[i].args = args;
            c.spawn(i);
        }
        c.wait_leader(Duration::from_secs(60)).await;
        c
    }

    fn plan(dir: &Path, name: &str) -> Member {
        let client = free_port();
        let peer = free_port();
        Member {
            name: name.to_string(),
            endpoint: format!("127.0.0.1:{client}"),
            peer_url: format!("http://127.0.0.1:{peer}"),
            data_dir: dir.join(format!("{name}.data")),
            log: dir.join(format!("{name}.log")),
            args: Vec::new(),
            child: None,
        }
    }

    fn member_args(&self, i: usize, initial: &str, state: &str) -> Vec<String> {
        let m = &self.members[i];
        let mut a = vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", m.data_dir.display()),
            format!("--listen-client-urls={}", m.client_url()),
            format!("--advertise-client-urls={}", m.client_url()),
            format!("--listen-peer-urls={}", m.peer_url),
            format!("--initial-advertise-peer-urls={}", m.peer_url),
            format!("--initial-cluster={initial}"),
            format!("--initial-cluster-state={state}"),
            format!("--initial-cluster-token={}", self.token),
        ];
        if self.program == Program::Etcd {
            a.push("--log-level=warn".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut cmd = match &self.program {
            Program::Lookout(bin) => {
                let mut c = Command::new(bin);
                c.arg("store");
                if std::env::var_os("RUST_LOG").is_none() {
                    c.env("RUST_LOG", "info,openraft=warn");
                }
                c
            }
            Program::Etcd => Command::new("etcd"),
        };
        cmd.args(&m.args);
        m.child = Some(spawn_logged(cmd, &m.log).expect("spawn cluster member"));
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Endpoints of the running members, comma separated (etcdctl's form).
    pub fn endpoints_arg(&mut self) -> String {
        let mut out = Vec::new();
        for m in &mut self.members {
            if m.is_running() {
                out.push(m.endpoint.clone());
            }
        }
        out.join(",")
    }

    /// Index of the member every running member names as leader, if they
    /// agree.
    pub async fn leader(&mut self) -> Option<usize> {
        let mut seen = None;
        let mut ids = Vec::new();
        for i in 0..self.members.len() {
            if !self.members[i].is_running() {
                continue;
            }
            let s = status(&self.members[i].endpoint).await?;
            let me = s.header.map_or(0, |h| h.member_id);
            ids.push((i, me));
            if s.leader == 0 || seen.is_some_and(|l| l != s.leader) {
                return None;
            }
            seen = Some(s.leader);
        }
        let leader = seen?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| i)
    }

    /// Waits until all running members agree on a leader; its index.
    pub async fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            for m in &mut self.members {
                if m.child.is_some() && !m.is_running() {
                    panic!("member {} exited:\n{}", m.name, m.log_text());
                }
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("--- {}:\n{}", m.name, tail(&m.log_text())))
                    .collect();
                panic!("no agreed leader after {timeout:?}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP (`paused = true`) or SIGCONT member `i`: a process that
    /// holds its sockets and state but answers nothing, as a stalled VM or
    /// a long GC pause looks to its peers. Dropping the cluster kills a
    /// paused member as any other.
    pub fn pause(&mut self, i: usize, paused: bool) {
        let pid = self.members[i].pid();
        assert!(pid != 0, "member {} is not running", self.members[i].name);
        let sig = if paused { "-STOP" } else { "-CONT" };
        let st = std::process::Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} {pid}: {st}");
    }

    /// `kill -9` member `i` (its data dir stays).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill9();
        }
    }

    /// Starts member `i` again with its original flags and waits (30 s)
    /// until it answers Status.
    pub async fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        let ep = self.members[i].endpoint.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(&ep).await.is_none() {
            if !self.members[i].is_running() || Instant::now() >= deadline {
                panic!(
                    "member {} did not come back:\n{}",
                    self.members[i].name,
                    self.members[i].log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Plans a new member `name` (ports, data dir) without starting it:
    /// its peer URL is what `member add` takes.
    pub fn plan_member(&mut self, name: &str) -> usize {
        let m = Self::plan(self.dir.path(), name);
        self.members.push(m);
        self.members.len() - 1
    }

    /// Starts planned member `i` with `--initial-cluster-state existing`
    /// and `initial_cluster` (what `member add` printed), waiting (30 s)
    /// until it answers Status.
    pub async fn start_existing(&mut self, i: usize, initial_cluster: &str) {
        let args = self.member_args(i, initial_cluster, "existing");
        self.members[i].args = args;
        self.restart(i).await;
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(4000);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
