//! Drives 256-byte puts at one or more etcd v3 endpoints and prints the
//! latency distribution: a probe for profiling the write path (run the
//! server under `perf`/`strace` while this runs). Not a benchmark: the
//! comparisons against etcd are `put_vs_etcd` (lookout-load against both
//! servers in one run) and `benches/`.
//!
//! `cargo run --release -p lookout-consensus --example put_probe --
//! <endpoint[,endpoint...]> [clients] [puts]`

use std::time::{Duration, Instant};

use lookout_proto::pb::{PutRequest, kv_client::KvClient};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let eps: Vec<String> = args
        .next()
        .expect("endpoint")
        .split(',')
        .map(str::to_string)
        .collect();
    let clients: usize = args.next().map_or(1, |s| s.parse().expect("clients"));
    let total: usize = args.next().map_or(5000, |s| s.parse().expect("puts"));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for c in 0..clients {
        let ep = eps[c % eps.len()].clone();
        tasks.push(tokio::spawn(async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut kv = KvClient::new(ch);
            let mut lat = Vec::new();
            for i in 0..total / clients {
                let t = Instant::now();
                kv.put(PutRequest {
                    key: format!("probe/{c}/{i}").into(),
                    value: vec![b'v'; 256].into(),
                    ..Default::default()
                })
                .await
                .unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = start.elapsed();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "{} puts, {clients} clients: {:.0}/s  p50 {:?} p90 {:?} p99 {:?}",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        p(0.5),
        p(0.9),
        p(0.99)
    );
}
