//! Lock contention and election handover through Lookout against etcd
//! direct, in one run on one machine, with the same client (the Rust
//! `etcd-client` crate's `LockClient` and `ElectionClient`, i.e. etcd's
//! server-side Lock and Election services).
//!
//! ```text
//!   targets: etcd 3.4 | gateway over etcd | lookout store | gateway over lookout store
//!   lock:     N clients, each with its own connection and lease, loop
//!             Lock(name) -> Unlock(key) for D seconds: acquisitions/s,
//!             per-client counts (Jain's fairness index, min/max), and the
//!             watchers the store behind the target holds meanwhile
//!   election: A leads, B campaigns; revoke A's lease; time until B's
//!             Campaign returns (R rounds: median, max)
//! ```
//!
//! Usage (release builds; the `lookout` binary from the same tree):
//!
//! ```sh
//! cargo build --release -p lookout-gateway --bin lookout --example lock_vs_etcd
//! target/release/examples/lock_vs_etcd --clients 100 --seconds 10 --rounds 20
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, LockOptions};
use lookout_testkit::{EtcdServer, LookoutProcess, LookoutStack, free_port};

struct Args {
    clients: usize,
    seconds: u64,
    rounds: usize,
    bin: PathBuf,
    targets: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: lock_vs_etcd [--clients N] [--seconds S] [--rounds R] [--lookout PATH] \
         [--targets etcd,gateway-etcd,store,gateway-store]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        clients: 100,
        seconds: 10,
        rounds: 20,
        bin: PathBuf::from("target/release/lookout"),
        targets: ["etcd", "gateway-etcd", "store", "gateway-store"]
            .map(String::from)
            .to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--clients" => a.clients = value().parse().unwrap_or_else(|_| usage()),
            "--seconds" => a.seconds = value().parse().unwrap_or_else(|_| usage()),
            "--rounds" => a.rounds = value().parse().unwrap_or_else(|_| usage()),
            "--lookout" => a.bin = PathBuf::from(value()),
            "--targets" => a.targets = value().split(',').map(String::from).collect(),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    a
}

/// `etcd_debugging_mvcc_watcher_total` of the store at `endpoint`, if it
/// exports it.
async fn store_watchers(endpoint: &str) -> Option<f64> {
    let (_, text) = lookout_testkit::http1::get(endpoint, "/metrics", Duration::from_secs(5))
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse().ok())
}

struct LockResult {
    per_client: Vec<u64>,
    elapsed: Duration,
    /// The store's watchers sampled during the contention.
    store_watchers: Option<f64>,
}

async fn lock_contention(endpoint: &str, store: &str, clients: usize, secs: u64) -> LockResult {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let name = format!("bench-lock-{}", free_port());
    for _ in 0..clients {
        let (ep, stop, name) = (endpoint.to_string(), stop.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect([ep], None).await.expect("connect");
            let lease = c.lease_grant(60, None).await.expect("lease").id();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = match tokio::time::timeout(
                    Duration::from_secs(30),
                    c.lock(name.as_str(), Some(LockOptions::new().with_lease(lease))),
                )
                .await
                {
                    Ok(Ok(r)) => r.key().to_vec(),
                    Ok(Err(e)) => panic!("lock: {e}"),
                    Err(_) => break,
                };
                n += 1;
                c.unlock(key).await.expect("unlock");
            }
            let _ = c.lease_revoke(lease).await;
            n
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs / 2)).await;
    let watchers = store_watchers(store).await;
    tokio::time::sleep(Duration::from_secs(secs - secs / 2)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await.expect("client task"));
    }
    LockResult {
        per_client,
        elapsed,
        store_watchers: watchers,
    }
}

/// Leader handover: time from revoking the leader's lease to the waiting
/// candidate's Campaign returning.
async fn election_handover(endpoint: &str, rounds: usize) -> Vec<Duration> {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let name = format!("bench-election-{}", free_port());
    let mut out = Vec::new();
    let mut leader_lease = c.lease_grant(60, None).await.unwrap().id();
    c.campaign(name.as_str(), "a", leader_lease).await.unwrap();
    for i in 0..rounds {
        let next_lease = c.lease_grant(60, None).await.unwrap().id();
        let (ep, n) = (endpoint.to_string(), name.clone());
        let waiter = tokio::spawn(async move {
            let mut c = Client::connect([ep], None).await.expect("connect");
            let r = c.campaign(n.as_str(), format!("v{i}"), next_lease).await;
            (Instant::now(), r)
        });
        // The candidate is queued once its key exists.
        let prefix = format!("{name}/");
        loop {
            let r = c
                .get(
                    prefix.as_str(),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .unwrap();
            if r.count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let t0 = Instant::now();
        c.lease_revoke(leader_lease).await.unwrap();
        let (t1, r) = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("handover within 30s")
            .unwrap();
        r.expect("campaign");
        out.push(t1 - t0);
        leader_lease = next_lease;
    }
    out
}

fn jain(x: &[u64]) -> f64 {
    let s: f64 = x.iter().map(|v| *v as f64).sum();
    let s2: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
    if s2 == 0.0 {
        0.0
    } else {
        s * s / (x.len() as f64 * s2)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = parse();
    let mut rows = Vec::new();
    for t in &a.targets {
        // Each target gets fresh processes; the store behind it is where
        // the watchers are counted.
        let (endpoint, store, _keep): (String, String, Box<dyn std::any::Any>) = match t.as_str() {
            "etcd" => {
                let e = EtcdServer::start().await;
                (e.endpoint.clone(), e.endpoint.clone(), Box::new(e))
            }
            "gateway-etcd" => {
                let e = EtcdServer::start().await;
                let dir = tempfile::tempdir().unwrap();
                let ep = format!("127.0.0.1:{}", free_port());
                let args: Vec<String> =
                    ["gateway", "--listen-addr", &ep, "--endpoints", &e.endpoint]
                        .map(String::from)
                        .to_vec();
                let g = LookoutProcess::spawn(&a.bin, &args, &ep, &dir.path().join("gw.log")).await;
                (ep, e.endpoint.clone(), Box::new((e, g, dir)))
            }
            "store" | "gateway-store" => {
                let s = LookoutStack::try_start(&a.bin).await.unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(1)
                });
                let ep = if t == "store" {
                    s.store_endpoint.clone()
                } else {
                    s.gateway_endpoint.clone()
                };
                (ep, s.store_endpoint.clone(), Box::new(s))
            }
            other => {
                eprintln!("unknown target {other}");
                usage()
            }
        };
        eprintln!(
            "{t}: lock contention, {} clients, {}s",
            a.clients, a.seconds
        );
        let l = lock_contention(&endpoint, &store, a.clients, a.seconds).await;
        eprintln!("{t}: election handover, {} rounds", a.rounds);
        let mut h = election_handover(&endpoint, a.rounds).await;
        h.sort();
        let total: u64 = l.per_client.iter().sum();
        rows.push(format!(
            "| {t} | {:.0} | {:.3} | {} / {} | {} | {:.1} | {:.1} |",
            total as f64 / l.elapsed.as_secs_f64(),
            jain(&l.per_client),
            l.per_client.iter().min().unwrap_or(&0),
            l.per_client.iter().max().unwrap_or(&0),
            l.store_watchers
                .map_or("n/a".to_string(), |w| format!("{w:.0}")),
            ms(h[h.len() / 2]),
            ms(*h.last().unwrap()),
        ));
    }
    println!(
        "| target | lock acquisitions/s | fairness (Jain) | min / max per client | store watchers during contention | handover median ms | handover max ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
