//! Single-node throughput of `lookout store` beside a real etcd 3.4 started
//! in the same run, driven by the same gRPC client code:
//!
//! - `put/1-client`, `put/16-clients`: 256-byte puts, each acknowledged only
//!   after fsync on both servers;
//! - `range-10k/serializable`: one serializable prefix range returning 10 000
//!   keys of 256 bytes.
//!
//! Run: `cargo build --release -p lookout-gateway --bin lookout && cargo bench
//! -p lookout-consensus --bench store_vs_etcd` (LOOKOUT_BIN overrides the
//! binary). Both data dirs live in the same temp filesystem. Compare the
//! `etcd` and `lookout` lines of each group as ratios.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use lookout_proto::pb::{PutRequest, RangeRequest, kv_client::KvClient};
use lookout_testkit::lookout::lookout_bin;
use lookout_testkit::{EtcdServer, LookoutProcess, free_port};
use tonic::transport::Channel;

const VALUE: [u8; 256] = [b'v'; 256];
const RANGE_KEYS: usize = 10_000;

struct Servers {
    etcd: EtcdServer,
    lookout: LookoutProcess,
    _dir: tempfile::TempDir,
}

async fn start() -> Servers {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = lookout_bin();
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p lookout-gateway --bin lookout",
        bin.display()
    );
    let endpoint = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{endpoint}");
    let args: Vec<String> = [
        "store",
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--listen-client-urls",
        &url,
        "--advertise-client-urls",
        &url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lookout =
        LookoutProcess::spawn(&bin, &args, &endpoint, &dir.path().join("lookout.log")).await;
    Servers {
        etcd,
        lookout,
        _dir: dir,
    }
}

async fn client(endpoint: &str) -> KvClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    KvClient::new(ch).max_decoding_message_size(64 << 20)
}

fn put_req(key: String) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: VALUE.to_vec().into(),
        ..Default::default()
    }
}

/// `iters` puts spread over `clients` connections; returns wall time.
async fn puts(endpoint: &str, clients: usize, iters: u64, tag: &str) -> Duration {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(client(endpoint).await);
    }
    let per = iters.div_ceil(clients as u64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut kv) in conns.into_iter().enumerate() {
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                kv.put(put_req(format!("bench/{tag}/{c}/{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

async fn load_range(endpoint: &str) {
    let mut kv = client(endpoint).await;
    // 16 writers so the load takes seconds, not minutes, on both servers.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..RANGE_KEYS).step_by(16) {
                kv.put(put_req(format!("range/{i:05}"))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = kv.range(range_req()).await.unwrap().into_inner();
    assert_eq!(r.kvs.len(), RANGE_KEYS);
}

fn range_req() -> RangeRequest {
    RangeRequest {
        key: "range/".into(),
        range_end: "range0".into(),
        serializable: true,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let servers = rt.block_on(start());
    let targets = [
        ("etcd", servers.etcd.endpoint.clone()),
        ("lookout", servers.lookout.endpoint.clone()),
    ];

    for clients in [1usize, 16] {
        let mut g = c.benchmark_group(if clients == 1 {
            "put/1-client"
        } else {
            "put/16-clients"
        });
        g.sample_size(10).measurement_time(Duration::from_secs(8));
        g.throughput(criterion::Throughput::Elements(1));
        for (name, ep) in &targets {
            let mut round = 0u64;
            g.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    round += 1;
                    rt.block_on(puts(ep, clients, iters, &format!("{clients}-{round}")))
                })
            });
        }
        g.finish();
    }

    // The fixed cost of one small unary call (no disk): separates RPC
    // overhead from fsync cost in the put numbers.
    let mut g = c.benchmark_group("get/1-key");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for (name, ep) in &targets {
        let mut kv = rt.block_on(client(ep));
        rt.block_on(kv.put(put_req("one".into()))).unwrap();
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let r = kv
                            .range(RangeRequest {
                                key: "one".into(),
                                serializable: true,
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        assert_eq!(r.into_inner().count, 1);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();

    for (_, ep) in &targets {
        rt.block_on(load_range(ep));
    }
    let mut g = c.benchmark_group("range-10k/serializable");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for (name, ep) in &targets {
        let mut kv = rt.block_on(client(ep));
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let r = kv.range(range_req()).await.unwrap().into_inner();
                        assert_eq!(r.count, RANGE_KEYS as i64);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    drop(servers);
}

criterion_group!(benches, bench);
criterion_main!(benches);
