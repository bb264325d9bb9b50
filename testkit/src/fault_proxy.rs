//! Loopback fault proxies on every link of a cluster: partitions (both
//! ways or one way) and added delay, per ordered pair of processes, changed
//! while traffic flows.
//!
//! ```text
//!   member a ──dial peer URL of b──> FaultProxy(b) ──> b's real peer listener
//!                                      │ who dialed? the PID owning the
//!                                      │ socket (/proc), mapped to a node
//!   gateway g ──endpoint (g, m)──────> FaultProxy(m, from g) ──> m's client port
//!   each direction of each connection: reader ──(time read, bytes)──> writer
//!     writer waits while Net says from -> to is blackholed, and until
//!     time read + delay; then writes. Bytes are held, never dropped, so a
//!     healed link carries on like TCP after retransmission.
//! ```
//!
//! Why a proxy and not network namespaces: a member dials the peer URL its
//! peers advertise (the same URL for everyone), so the proxy in front of a
//! member serves all its peers and must learn who dialed; on loopback the
//! source address is always 127.0.0.1, but the dialing socket belongs to
//! exactly one process, which `/proc/net/tcp` and `/proc/<pid>/fd` name.
//! Namespaces would need root and veth setup in CI; this needs neither and
//! works the same for `lookout store` and etcd.
//!
//! It must never listen outside 127.0.0.1 and never touch a process it was
//! not told about.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A process on the simulated network (a member, a gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node(pub u32);

/// What happens to bytes from one node to another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkRule {
    /// Hold every byte until healed (a partition; new connections are
    /// accepted and then hang, as through a black hole).
    pub blackhole: bool,
    /// Deliver each chunk this long after it was read.
    pub delay: Duration,
}

type Rules = HashMap<(Node, Node), LinkRule>;

/// The rules of every link, and the PIDs the proxies identify dialers by.
#[derive(Debug)]
pub struct Net {
    rules: watch::Sender<Rules>,
    // A std Mutex: lookups and inserts only, never held across an await.
    pids: Mutex<HashMap<u32, Node>>,
    /// Connections whose dialer could not be identified (their bytes pass
    /// unhindered, so a high count means faults were not injected).
    unidentified: AtomicU64,
    connections: AtomicU64,
}

impl Net {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            rules: watch::channel(Rules::new()).0,
            pids: Mutex::new(HashMap::new()),
            unidentified: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        })
    }

    /// The rule for bytes from `from` to `to`.
    pub fn rule(&self, from: Node, to: Node) -> LinkRule {
        self.rules
            .borrow()
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }

    /// Sets the rule for bytes from `from` to `to`.
    pub fn set(&self, from: Node, to: Node, rule: LinkRule) {
        self.rules.send_modify(|r| {
            if rule == LinkRule::default() {
                r.remove(&(from, to));
            } else {
                r.insert((from, to), rule);
            }
        });
    }

    /// Blackholes every link between a node of `a` and a node of `b`, both
    /// ways.
    pub fn partition(&self, a: &[Node], b: &[Node]) {
        for &x in a {
            for &y in b {
                self.set(x, y, blackhole());
                self.set(y, x, blackhole());
            }
        }
    }

    /// Back to a perfect network.
    pub fn heal(&self) {
        self.rules.send_modify(Rules::clear);
    }

    /// Names the process `pid` as `node` (again after every restart).
    pub fn register_pid(&self, pid: u32, node: Node) {
        self.pids.lock().expect("pids").insert(pid, node);
    }

    pub fn forget_pid(&self, pid: u32) {
        self.pids.lock().expect("pids").remove(&pid);
    }

    pub fn unidentified(&self) -> u64 {
        self.unidentified.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

fn blackhole() -> LinkRule {
    LinkRule {
        blackhole: true,
        delay: Duration::ZERO,
    }
}

/// How a proxy learns which node dialed it.
#[derive(Debug, Clone, Copy)]
pub enum Dialer {
    /// Only this node uses the proxy.
    Fixed(Node),
    /// Any registered process may: look the dialing socket's owner up.
    ByPid,
}

/// Forwards `127.0.0.1:<port>` to one node's real address, applying the
/// [`Net`]'s rules; dropped, it closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    endpoint: String,
    cut: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port in front of `dest` (a node
    /// reachable at `target`, "127.0.0.1:port").
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(
        net: Arc<Net>,
        dest: Node,
        target: &str,
        dialer: Dialer,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = listener.local_addr()?.to_string();
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(0u64);
        let target = target.to_string();
        let accept = {
            let cut = cut.clone();
            tokio::spawn(async move {
                while let Ok((client, peer)) = listener.accept().await {
                    net.connections.fetch_add(1, Ordering::Relaxed);
                    let (net, target, mut cut) = (net.clone(), target.clone(), cut.subscribe());
                    tokio::spawn(async move {
                        let from = match dialer {
                            Dialer::Fixed(n) => Some(n),
                            Dialer::ByPid => identify(&net, peer.port(), port).await,
                        };
                        if from.is_none() {
                            net.unidentified.fetch_add(1, Ordering::Relaxed);
                        }
                        let Ok(Ok(server)) = tokio::time::timeout(
                            Duration::from_secs(2),
                            TcpStream::connect(&target),
                        )
                        .await
                        else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let up = pump(cr, sw, net.clone(), from.map(|f| (f, dest)));
                        let down = pump(sr, cw, net, from.map(|f| (dest, f)));
                        tokio::select! {
                            _ = async { tokio::join!(up, down) } => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Ok(Self {
            endpoint,
            cut,
            accept,
        })
    }

    /// "127.0.0.1:port" to dial instead of the node's own address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Closes every connection through this proxy (a reset on the link).
    pub fn reset(&self) {
        self.cut.send_modify(|e| *e += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.reset();
        self.accept.abort();
    }
}

/// Copies `r` to `w`, holding bytes while the link `(from, to)` is
/// blackholed and delaying them by its delay. `None`: no rule applies.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    net: Arc<Net>,
    link: Option<(Node, Node)>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(64);
    let reader = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now(), Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut rules = net.rules.subscribe();
        while let Some((read_at, data)) = rx.recv().await {
            if let Some((from, to)) = link {
                loop {
                    let rule = net.rule(from, to);
                    if rule.blackhole {
                        if rules.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let due = read_at + rule.delay;
                    if due <= Instant::now() {
                        break;
                    }
                    // Rules may change while waiting: look again then.
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = rules.changed() => {}
                    }
                }
            }
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// The node whose process owns the socket `127.0.0.1:src_port` connected
/// to our port `dst_port`. Retried briefly: the dialer's fd is there by the
/// time we accept, but /proc may be read mid-update.
async fn identify(net: &Arc<Net>, src_port: u16, dst_port: u16) -> Option<Node> {
    let pids: Vec<(u32, Node)> = net
        .pids
        .lock()
        .expect("pids")
        .iter()
        .map(|(p, n)| (*p, *n))
        .collect();
    tokio::task::spawn_blocking(move || {
        for _ in 0..5 {
            if let Some(inode) = socket_inode(src_port, dst_port) {
                let needle = format!("socket:[{inode}]");
                for (pid, node) in &pids {
                    if owns(*pid, &needle) {
                        return Some(*node);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The inode of the TCP socket 127.0.0.1:`local` -> 127.0.0.1:`remote`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let want_local = format!("0100007F:{local:04X}");
    let want_remote = format!("0100007F:{remote:04X}");
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote)
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

fn owns(pid: u32, needle: &str) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, within: Duration) -> Option<Duration> {
        let t = Instant::now();
        s.write_all(b"ping").await.ok()?;
        let mut b = [0u8; 4];
        tokio::time::timeout(within, s.read_exact(&mut b))
            .await
            .ok()?
            .ok()?;
        Some(t.elapsed())
    }

    #[tokio::test]
    async fn blackhole_holds_bytes_until_healed_and_delay_delays() {
        let net = Net::new();
        let (a, b) = (Node(1), Node(2));
        let p = FaultProxy::start(net.clone(), b, &echo().await, Dialer::Fixed(a))
            .await
            .unwrap();
        let mut s = TcpStream::connect(p.endpoint()).await.unwrap();
        assert!(roundtrip(&mut s, Duration::from_secs(2)).await.is_some());

        // One way: b -> a lost, so the echo never comes back...
        net.set(b, a, blackhole());
        assert!(
            roundtrip(&mut s, Duration::from_millis(300))
                .await
                .is_none()
        );
        // ...until healed: the held bytes arrive, nothing lost.
        net.heal();
        let mut held = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&held, b"ping");

        net.set(
            a,
            b,
            LinkRule {
                blackhole: false,
                delay: Duration::from_millis(150),
            },
        );
        let rtt = roundtrip(&mut s, Duration::from_secs(2)).await.unwrap();
        assert!(rtt >= Duration::from_millis(150), "{rtt:?}");
        net.heal();
        let rtt = roundtrip(&mut s, Duration::from_secs(2)).await.unwrap();
        assert!(rtt < Duration::from_millis(150), "{rtt:?}");
    }

    #[tokio::test]
    async fn the_dialer_is_found_by_its_pid() {
        let net = Net::new();
        // This test process dials; registered under its own PID.
        net.register_pid(std::process::id(), Node(7));
        let p = FaultProxy::start(net.clone(), Node(2), &echo().await, Dialer::ByPid)
            .await
            .unwrap();
        net.partition(&[Node(7)], &[Node(2)]);
        let mut s = TcpStream::connect(p.endpoint()).await.unwrap();
        assert!(
            roundtrip(&mut s, Duration::from_millis(300))
                .await
                .is_none(),
            "partitioned"
        );
        assert_eq!(net.unidentified(), 0);
        net.heal();
        let mut held = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        // An unregistered dialer passes (and is counted).
        net.forget_pid(std::process::id());
        net.partition(&[Node(7)], &[Node(2)]);
        let mut s = TcpStream::connect(p.endpoint()).await.unwrap();
        assert!(roundtrip(&mut s, Duration::from_secs(2)).await.is_some());
        assert_eq!(net.unidentified(), 1);
    }
}
