//! The system under test: three store members and two gateways as child
//! processes on loopback, with a fault proxy on every link between them.
//!
//! ```text
//!   members m0 m1 m2: listen on their own peer ports, advertise the peer
//!     URL of the proxy in front of them (FaultProxy, dialer found by PID)
//!   gateways g0 g1: --endpoints = one proxy per member, used by that
//!     gateway alone (FaultProxy with a fixed dialer)
//!   clients dial gateways and members directly (no proxy)
//! ```
//!
//! The same layout runs `lookout store` + `lookout gateway` or etcd 3.4 +
//! `etcd grpc-proxy` (etcd's own answer to what the gateway does), with the
//! same etcd flags, so the battery compares like with like.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lookout_proto::pb::{StatusRequest, StatusResponse, maintenance_client::MaintenanceClient};
use lookout_testkit::fault_proxy::{Dialer, FaultProxy, Net, Node};
use lookout_testkit::{ChildGuard, free_port, spawn_logged};

use crate::BatteryError;

/// Which implementation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `lookout store` members and `lookout gateway`s from this binary.
    Lookout(PathBuf),
    /// Debian's etcd 3.4 members and `etcd grpc-proxy`s.
    Etcd,
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Lookout(_) => "lookout",
            Target::Etcd => "etcd",
        }
    }
}

/// Node ids of the gateways start here (members are 0, 1, 2).
pub const GATEWAY_NODE: u32 = 100;

/// One child process: how to start it again, and its state.
#[derive(Debug)]
pub struct Server {
    /// "m0", "g1".
    pub name: String,
    pub node: Node,
    /// "127.0.0.1:port" its clients dial.
    pub endpoint: String,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<ChildGuard>,
    /// Bumped on every (re)start: a client's session is one incarnation.
    pub incarnation: Arc<AtomicU64>,
    pub paused: bool,
    /// The etcd member ID (members only, learned at start).
    pub member_id: u64,
}

impl Server {
    fn spawn(&mut self, net: &Net) -> Result<(), BatteryError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = spawn_logged(cmd, &self.log)
            .map_err(|e| BatteryError::Spawn(self.name.clone(), e.to_string()))?;
        net.register_pid(child.pid(), self.node);
        self.child = Some(child);
        self.paused = false;
        self.incarnation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = s.len().saturating_sub(3000);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        s[start..].to_string()
    }
}

/// Three members and two gateways with proxies; dropping it kills them all.
#[derive(Debug)]
pub struct Topology {
    pub target: Target,
    pub net: Arc<Net>,
    pub members: Vec<Server>,
    pub gateways: Vec<Server>,
    /// In front of each member's peer port.
    _peer_proxies: Vec<FaultProxy>,
    /// [gateway][member], in front of the members' client ports.
    _upstream_proxies: Vec<Vec<FaultProxy>>,
    pub dir: tempfile::TempDir,
}

/// Maintenance Status of `endpoint`, bounded by `timeout`.
pub async fn status(endpoint: &str, timeout: Duration) -> Option<StatusResponse> {
    let fut = async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .ok()?
            .connect_timeout(timeout)
            .connect()
            .await
            .ok()?;
        MaintenanceClient::new(ch)
            .status(StatusRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

fn signal(pid: u32, sig: &str) {
    if pid != 0 {
        let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
    }
}

impl Topology {
    /// Starts the members (waiting for an agreed leader) and then the
    /// gateways (waiting until each answers Status).
    ///
    /// # Errors
    /// A process that does not start or serve in time, with its log.
    pub async fn start(
        target: Target,
        members: usize,
        gateways: usize,
    ) -> Result<Self, BatteryError> {
        let dir = tempfile::tempdir().map_err(|e| BatteryError::Io(e.to_string()))?;
        let net = Net::new();
        let token = format!("battery-{}", free_port());
        let mut peer_proxies = Vec::new();
        let mut plans = Vec::new();
        for i in 0..members {
            let (client, peer) = (free_port(), free_port());
            let proxy = FaultProxy::start(
                net.clone(),
                Node(i as u32),
                &format!("127.0.0.1:{peer}"),
                Dialer::ByPid,
            )
            .await
            .map_err(|e| BatteryError::Io(e.to_string()))?;
            plans.push((client, peer, format!("http://{}", proxy.endpoint())));
            peer_proxies.push(proxy);
        }
        let initial = plans
            .iter()
            .enumerate()
            .map(|(i, (_, _, adv))| format!("m{i}={adv}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut ms = Vec::new();
        for (i, (client, peer, adv)) in plans.iter().enumerate() {
            let name = format!("m{i}");
            let mut args = Vec::new();
            let (program, env) = match &target {
                Target::Lookout(bin) => {
                    args.push("store".to_string());
                    (
                        bin.clone(),
                        vec![("RUST_LOG".to_string(), "warn".to_string())],
                    )
                }
                Target::Etcd => (PathBuf::from("etcd"), Vec::new()),
            };
            args.extend([
                format!("--name={name}"),
                format!("--data-dir={}", dir.path().join(&name).display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls={adv}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".to_string(),
                format!("--initial-cluster-token={token}"),
                "--experimental-watch-progress-notify-interval=1s".to_string(),
            ]);
            if target == Target::Etcd {
                args.push("--log-level=warn".into());
            }
            ms.push(Server {
                name: name.clone(),
                node: Node(i as u32),
                endpoint: format!("127.0.0.1:{client}"),
                log: dir.path().join(format!("{name}.log")),
                program,
                args,
                env,
                child: None,
                incarnation: Arc::new(AtomicU64::new(0)),
                paused: false,
                member_id: 0,
            });
        }
        let mut topo = Self {
            target,
            net,
            members: ms,
            gateways: Vec::new(),
            _peer_proxies: peer_proxies,
            _upstream_proxies: Vec::new(),
            dir,
        };
        for i in 0..members {
            let net = topo.net.clone();
            topo.members[i].spawn(&net)?;
        }
        topo.wait_leader(Duration::from_secs(60)).await?;
        for i in 0..members {
            let s = status(&topo.members[i].endpoint, Duration::from_secs(2))
                .await
                .ok_or_else(|| {
                    BatteryError::NotServing(
                        topo.members[i].name.clone(),
                        topo.members[i].log_tail(),
                    )
                })?;
            topo.members[i].member_id = s.header.map_or(0, |h| h.member_id);
        }
        for g in 0..gateways {
            let node = Node(GATEWAY_NODE + g as u32);
            let mut proxies = Vec::new();
            for m in &topo.members {
                proxies.push(
                    FaultProxy::start(topo.net.clone(), m.node, &m.endpoint, Dialer::Fixed(node))
                        .await
                        .map_err(|e| BatteryError::Io(e.to_string()))?,
                );
            }
            let eps = proxies
                .iter()
                .map(|p| p.endpoint().to_string())
                .collect::<Vec<_>>()
                .join(",");
            let name = format!("g{g}");
            let listen = format!("127.0.0.1:{}", free_port());
            let (program, args, env) = match &topo.target {
                Target::Lookout(bin) => (
                    bin.clone(),
                    vec![
                        "gateway".to_string(),
                        format!("--listen-addr={listen}"),
                        format!("--endpoints={eps}"),
                        "--experimental-watch-progress-notify-interval=1s".to_string(),
                    ],
                    vec![("RUST_LOG".to_string(), "warn".to_string())],
                ),
                Target::Etcd => (
                    PathBuf::from("etcd"),
                    vec![
                        "grpc-proxy".to_string(),
                        "start".to_string(),
                        format!("--endpoints={eps}"),
                        format!("--listen-addr={listen}"),
                        format!("--advertise-client-url={listen}"),
                        format!("--data-dir={}", topo.dir.path().join(&name).display()),
                    ],
                    Vec::new(),
                ),
            };
            let mut s = Server {
                name: name.clone(),
                node,
                endpoint: listen,
                log: topo.dir.path().join(format!("{name}.log")),
                program,
                args,
                env,
                child: None,
                incarnation: Arc::new(AtomicU64::new(0)),
                paused: false,
                member_id: 0,
            };
            s.spawn(&topo.net)?;
            topo.gateways.push(s);
            topo._upstream_proxies.push(proxies);
            let g_idx = topo.gateways.len() - 1;
            topo.wait_serving(false, g_idx, Duration::from_secs(30))
                .await?;
        }
        Ok(topo)
    }

    fn server(&mut self, member: bool, i: usize) -> &mut Server {
        if member {
            &mut self.members[i]
        } else {
            &mut self.gateways[i]
        }
    }

    /// Waits until server `i` answers Status.
    async fn wait_serving(
        &mut self,
        member: bool,
        i: usize,
        timeout: Duration,
    ) -> Result<(), BatteryError> {
        let deadline = Instant::now() + timeout;
        loop {
            let ep = self.server(member, i).endpoint.clone();
            if status(&ep, Duration::from_millis(800)).await.is_some() {
                return Ok(());
            }
            let s = self.server(member, i);
            if !s.is_running() || Instant::now() >= deadline {
                return Err(BatteryError::NotServing(s.name.clone(), s.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self, member: bool, i: usize) {
        let net = self.net.clone();
        let s = self.server(member, i);
        if let Some(mut c) = s.child.take() {
            net.forget_pid(c.pid());
            c.kill9();
        }
        s.paused = false;
    }

    /// Starts a killed server again (same flags, data and ports) and waits
    /// (30 s) until it answers Status.
    ///
    /// # Errors
    /// When it exits or does not serve in time.
    pub async fn restart(&mut self, member: bool, i: usize) -> Result<(), BatteryError> {
        self.kill(member, i);
        let net = self.net.clone();
        // A port just released may still be held for a moment: retry.
        for attempt in 0..3 {
            self.server(member, i).spawn(&net)?;
            match self.wait_serving(member, i, Duration::from_secs(30)).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 2 => return Err(e),
                Err(_) => {
                    self.kill(member, i);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Ok(())
    }

    /// SIGSTOP (`pause = true`) or SIGCONT.
    pub fn pause(&mut self, member: bool, i: usize, pause: bool) {
        let s = self.server(member, i);
        signal(s.pid(), if pause { "-STOP" } else { "-CONT" });
        s.paused = pause;
    }

    /// Index of the member the others name as leader (asked with short
    /// timeouts; paused or partitioned members may not answer).
    pub async fn leader(&self) -> Option<usize> {
        let mut votes: Vec<u64> = Vec::new();
        for m in &self.members {
            if m.paused || m.child.is_none() {
                continue;
            }
            if let Some(s) = status(&m.endpoint, Duration::from_millis(500)).await
                && s.leader != 0
            {
                votes.push(s.leader);
            }
        }
        let leader = *votes.first()?;
        if votes.iter().filter(|v| **v == leader).count() * 2 <= self.members.len() {
            return None;
        }
        self.members.iter().position(|m| m.member_id == leader)
    }

    /// Waits until every running member names the same leader.
    async fn wait_leader(&mut self, timeout: Duration) -> Result<usize, BatteryError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ids = Vec::new();
            let mut all = true;
            for m in &self.members {
                match status(&m.endpoint, Duration::from_millis(800)).await {
                    Some(s) if s.leader != 0 => {
                        ids.push((s.leader, s.header.map_or(0, |h| h.member_id)))
                    }
                    _ => all = false,
                }
            }
            if all
                && ids.iter().all(|(l, _)| *l == ids[0].0)
                && let Some(i) = ids.iter().position(|(_, me)| *me == ids[0].0)
            {
                return Ok(i);
            }
            for m in &mut self.members {
                if m.child.is_some() && !m.is_running() {
                    return Err(BatteryError::NotServing(m.name.clone(), m.log_tail()));
                }
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("--- {}\n{}", m.name, m.log_tail()))
                    .collect();
                return Err(BatteryError::NoLeader(timeout, logs.join("\n")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Undoes every fault (resumes paused processes, restarts killed ones,
    /// heals the network) and waits (bounded) until the members agree on a
    /// leader and every gateway answers. Returns how long that took.
    ///
    /// # Errors
    /// When the cluster does not recover within `timeout`.
    pub async fn heal_all(&mut self, timeout: Duration) -> Result<Duration, BatteryError> {
        let t = Instant::now();
        self.net.heal();
        for member in [true, false] {
            let n = if member {
                self.members.len()
            } else {
                self.gateways.len()
            };
            for i in 0..n {
                if self.server(member, i).paused {
                    self.pause(member, i, false);
                }
            }
        }
        for i in 0..self.members.len() {
            if !self.members[i].is_running() {
                self.restart(true, i).await?;
            }
        }
        self.wait_leader(timeout).await?;
        for i in 0..self.gateways.len() {
            if !self.gateways[i].is_running() {
                self.restart(false, i).await?;
            }
            self.wait_serving(false, i, timeout).await?;
        }
        Ok(t.elapsed())
    }

    /// Kills every process (their logs stay until the topology is dropped).
    pub fn stop_all(&mut self) {
        for i in 0..self.gateways.len() {
            self.kill(false, i);
        }
        for i in 0..self.members.len() {
            self.kill(true, i);
        }
    }

    /// Every process's log file, for a failure's evidence.
    pub fn logs(&self) -> Vec<(String, &Path)> {
        self.members
            .iter()
            .chain(&self.gateways)
            .map(|s| (s.name.clone(), s.log.as_path()))
            .collect()
    }
}
