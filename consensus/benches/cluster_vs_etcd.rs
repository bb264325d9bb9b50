//! 3-member put throughput of `lookout store` beside a 3-member etcd 3.4
//! cluster started in the same run on the same machine, driven by the same
//! gRPC client code: 256-byte puts from 1, 16 and 64 concurrent clients,
//! each acknowledged only after a quorum fsynced it. Clients spread over
//! all three members (followers forward to the leader on both servers).
//!
//! Run: `cargo build --release -p lookout-gateway --bin lookout && cargo
//! bench -p lookout-consensus --bench cluster_vs_etcd` (LOOKOUT_BIN
//! overrides the binary). Compare the `etcd` and `lookout` lines of each
//! group as ratios.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use lookout_proto::pb::{PutRequest, kv_client::KvClient};
use lookout_testkit::cluster::{Cluster, Program};
use lookout_testkit::lookout::lookout_bin;
use tonic::transport::Channel;

const VALUE: [u8; 256] = [b'v'; 256];

async fn client(endpoint: &str) -> KvClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    KvClient::new(ch)
}

/// `iters` puts spread over `clients` connections (round-robin over the
/// members); returns wall time.
async fn puts(endpoints: &[String], clients: usize, iters: u64, tag: &str) -> Duration {
    let mut conns = Vec::new();
    for c in 0..clients {
        conns.push(client(&endpoints[c % endpoints.len()]).await);
    }
    let per = iters.div_ceil(clients as u64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut kv) in conns.into_iter().enumerate() {
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                kv.put(PutRequest {
                    key: format!("bench/{tag}/{c}/{i}").into(),
                    value: VALUE.to_vec().into(),
                    ..Default::default()
                })
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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bin = lookout_bin();
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p lookout-gateway --bin lookout",
        bin.display()
    );
    let mut etcd = rt.block_on(Cluster::start(Program::Etcd, 3, &[]));
    let mut lookout = rt.block_on(Cluster::start(Program::Lookout(bin), 3, &[]));
    let targets = [
        ("etcd", rt.block_on(async { etcd.endpoints_arg() })),
        ("lookout", rt.block_on(async { lookout.endpoints_arg() })),
    ];
    for clients in [1usize, 16, 64] {
        let mut g = c.benchmark_group(format!("cluster3-put/{clients}-clients"));
        g.sample_size(10).measurement_time(Duration::from_secs(8));
        g.throughput(criterion::Throughput::Elements(1));
        for (name, eps) in &targets {
            let eps: Vec<String> = eps.split(',').map(str::to_string).collect();
            let mut round = 0u64;
            g.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    round += 1;
                    rt.block_on(puts(&eps, clients, iters, &format!("{clients}-{round}")))
                })
            });
        }
        g.finish();
    }
    drop(etcd);
    drop(lookout);
}

criterion_group!(benches, bench);
criterion_main!(benches);
