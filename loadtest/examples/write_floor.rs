//! The floor under a filtered watch's send path on this machine: what one
//! small write to one of many idle loopback connections costs the writing
//! process, with nothing of Lookout in the way (no HTTP/2, no cache).
//!
//! A filtered watcher on its own connection gets each useful event in its
//! own write (the next one is ~0.5 s away), so this is the cost the
//! gateway cannot get under per useful event; the `index` benchmark's
//! figures are read against it.
//!
//! ```sh
//! cargo run --release -p lookout-loadtest --example write_floor -- 1000 2000 20
//! #                                      connections, writes/s, seconds per phase
//! ```
//!
//! Five phases, measured one after the other in the same run:
//! - `plain`: a thread with no async runtime, paced by the OS's sleep,
//!   one `write` system call per message;
//! - `direct`: the timer task writes to the target socket itself (the
//!   kernel's send, which on loopback also runs the receiver's TCP stack
//!   and wakes it);
//! - `pairs`: half the timer wake-ups, two writes to two connections each
//!   (the `index` benchmark's puts each move an entry between two nodes,
//!   so one incoming put wakes the gateway for two useful events);
//! - `relay`: woken by the network instead of a timer, as the gateway
//!   is: a feeder process sends 64-byte "puts" at half the rate on one
//!   connection, and each put read is written to two connections (the
//!   gateway's skeleton with none of its work);
//! - `task hop`: the timer hands the message to the connection's own task
//!   through a channel, which writes it (one wake-up per write, as a
//!   watch stream's task has).
//!
//! The readers and the feeder are child processes (their PIDs kept,
//! killed at the end), their output in a temporary directory.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use lookout_loadtest::procstat;
use lookout_testkit::{ChildGuard, spawn_logged};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

const MESSAGE: usize = 180;

/// This process's CPU seconds so far (utime + stime).
fn cpu_seconds() -> f64 {
    procstat::sample(std::process::id())
        .expect("read /proc/self")
        .cpu_s
}

/// When message `i` of a run paced at `rate` per second is due.
fn due(t0: Instant, i: u64, rate: u64) -> Instant {
    t0 + Duration::from_secs_f64(i as f64 / rate as f64)
}

/// Picks target connections: a fixed-seed LCG, so every phase spreads its
/// writes alike without a shared generator's cost.
struct Pick(u64);

impl Pick {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize % n
    }
}

/// Starts this binary again in `role`, its PID kept by the guard (killed
/// and reaped on drop), its output in `dir`.
fn spawn_self(dir: &Path, role: &str, args: &[String]) -> ChildGuard {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg(role).args(args);
    spawn_logged(cmd, &dir.join(format!("{role}.log"))).expect("start a child")
}

fn readers(addr: SocketAddr, n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("readers") {
        let addr: SocketAddr = args[2].parse().expect("address");
        let n: usize = args[3].parse().expect("count");
        readers(addr, n);
        return;
    }
    if args.get(1).map(String::as_str) == Some("feeder") {
        let addr: SocketAddr = args[2].parse().expect("address");
        let rate: u64 = args[3].parse().expect("rate");
        let total: u64 = args[4].parse().expect("count");
        feed(addr, rate, total);
        return;
    }
    let conns: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rate: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(20);

    let std_listener = StdListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = std_listener.local_addr().expect("address");
    let logs = tempfile::tempdir().expect("temporary directory");
    let _readers = spawn_self(
        logs.path(),
        "readers",
        &[addr.to_string(), conns.to_string()],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = TcpListener::from_std(std_listener).expect("listener");
        let mut socks = Vec::with_capacity(conns);
        let mut plain_socks = Vec::with_capacity(conns);
        let accept_deadline = Instant::now() + Duration::from_secs(60);
        while socks.len() < conns {
            let left = accept_deadline.saturating_duration_since(Instant::now());
            let (s, _) = tokio::time::timeout(left, listener.accept())
                .await
                .expect("readers connect within 60 s")
                .expect("accept");
            s.set_nodelay(true).expect("nodelay");
            // A second handle on the same socket for the plain phase.
            let std_s = s.into_std().expect("std socket");
            plain_socks.push(std_s.try_clone().expect("dup"));
            socks.push(Arc::new(TcpStream::from_std(std_s).expect("tokio socket")));
        }
        let msg = vec![b'x'; MESSAGE];
        let total = rate * secs;
        println!("{conns} connections, {rate} writes/s, {secs} s per phase, {MESSAGE} B each");

        // Phase 0: no runtime at all: a plain thread paced by the OS's
        // sleep, writing with one system call per message.
        let plain = {
            let msg = msg.clone();
            tokio::task::spawn_blocking(move || {
                let c0 = cpu_seconds();
                let t0 = Instant::now();
                let mut pick = Pick(0x2545_f491_4f6c_dd1d);
                for i in 0..total {
                    if let Some(d) = due(t0, i, rate).checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    // Non-blocking like the others: a refused write is
                    // dropped (180 B never fills a socket buffer here).
                    let _ = std::io::Write::write(&mut &plain_socks[pick.next(conns)], &msg);
                }
                (cpu_seconds() - c0) * 1e6 / total as f64
            })
            .await
            .expect("plain writer")
        };
        println!("plain:    {plain:.2} µs of CPU per write (no async runtime)");

        // Phase 1: the timer task writes itself.
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let mut pick = Pick(0x9e37_79b9_7f4a_7c15);
        for i in 0..total {
            pace(t0, i, rate).await;
            write_one(&socks[pick.next(conns)], &msg).await;
        }
        let direct = (cpu_seconds() - c0) * 1e6 / total as f64;
        println!("direct:   {direct:.2} µs of CPU per write");

        // Phase 2: half as many wake-ups, two writes each (a gateway woken
        // by one put that moves an entry between two watched nodes).
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        for i in 0..total / 2 {
            pace(t0, i, rate / 2).await;
            for _ in 0..2 {
                write_one(&socks[pick.next(conns)], &msg).await;
            }
        }
        let pair = (cpu_seconds() - c0) * 1e6 / total as f64;
        println!(
            "pairs:    {pair:.2} µs of CPU per write ({:.2}x direct)",
            pair / direct
        );

        // Phase 3: woken by the network, as the gateway is: a feeder
        // process sends one 64-byte "put" per 1/(rate/2) s on one
        // connection; each put read is written to two connections.
        let feed_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let feed_addr = feed_listener.local_addr().expect("address");
        let puts = total / 2;
        let _feeder = spawn_self(
            logs.path(),
            "feeder",
            &[
                feed_addr.to_string(),
                (rate / 2).to_string(),
                puts.to_string(),
            ],
        );
        let (mut feed, _) = tokio::time::timeout(Duration::from_secs(60), feed_listener.accept())
            .await
            .expect("feeder connects within 60 s")
            .expect("accept");
        let c0 = cpu_seconds();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        let deadline = Instant::now() + Duration::from_secs(secs * 3 + 60);
        while got < puts * 64 && Instant::now() < deadline {
            let k = match tokio::time::timeout_at(deadline.into(), feed.read(&mut buf)).await {
                Ok(Ok(k)) if k > 0 => k as u64,
                _ => break,
            };
            // Every whole put that arrived moves one entry between two nodes.
            let whole = (got + k) / 64 - got / 64;
            got += k;
            for _ in 0..whole * 2 {
                write_one(&socks[pick.next(conns)], &msg).await;
            }
        }
        let relay = (cpu_seconds() - c0) * 1e6 / (got / 64 * 2).max(1) as f64;
        println!(
            "relay:    {relay:.2} µs of CPU per write ({:.2}x direct; woken by a put on a socket)",
            relay / direct
        );

        // Phase 4: one task per connection, woken through a channel.
        let written = Arc::new(AtomicU64::new(0));
        let all_written = Arc::new(Notify::new());
        let mut txs = Vec::with_capacity(conns);
        for s in &socks {
            let (tx, mut rx) = mpsc::unbounded_channel::<Arc<Vec<u8>>>();
            let (s, written, all_written) = (s.clone(), written.clone(), all_written.clone());
            tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    write_one(&s, &m).await;
                    if written.fetch_add(1, Relaxed) + 1 == total {
                        all_written.notify_one();
                    }
                }
            });
            txs.push(tx);
        }
        let msg = Arc::new(msg);
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        for i in 0..total {
            pace(t0, i, rate).await;
            let _ = txs[pick.next(conns)].send(msg.clone());
        }
        // The clock is read once the last write went out (bounded: a
        // connection that died loses its writes).
        let _ = tokio::time::timeout(Duration::from_secs(10), all_written.notified()).await;
        let hop = (cpu_seconds() - c0) * 1e6 / total as f64;
        println!(
            "task hop: {hop:.2} µs of CPU per write ({:.2}x direct)",
            hop / direct
        );
    });
}

/// Sends `total` 64-byte messages at `rate` per second on one connection,
/// then closes it: the store's watch stream as the gateway sees it.
fn feed(addr: SocketAddr, rate: u64, total: u64) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let t0 = Instant::now();
    for i in 0..total {
        if let Some(d) = due(t0, i, rate).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if std::io::Write::write_all(&mut s, &[b'p'; 64]).is_err() {
            return;
        }
    }
}

async fn pace(t0: Instant, i: u64, rate: u64) {
    // A message already due goes out without touching the timer.
    if let Some(d) = due(t0, i, rate).checked_duration_since(Instant::now()) {
        tokio::time::sleep(d).await;
    }
}

async fn write_one(s: &TcpStream, msg: &[u8]) {
    let mut off = 0;
    while off < msg.len() {
        match s.try_write(&msg[off..]) {
            Ok(k) => off += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if s.writable().await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
