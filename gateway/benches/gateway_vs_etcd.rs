//! The gateway against etcd direct, on the same machine in the same run,
//! over real gRPC on loopback:
//!
//! - `range/serializable` and `range/linearizable`: one client reading 100
//!   keys under a prefix;
//! - `fanout/put_to_all`: 1,000 prefix watchers (10 streams of 100 on 10
//!   connections); one iteration is one put and the wait until every
//!   watcher has its event.
//!
//! Each pair prints the gateway's time as a ratio of etcd's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use lookout_gateway::{Gateway, GatewayConfig};
use lookout_proto::pb::{
    PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient,
    watch_client::WatchClient, watch_request,
};
use lookout_testkit::EtcdServer;
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tonic::transport::Channel;

const WATCHERS_PER_STREAM: usize = 100;
const STREAMS: usize = 10;

async fn channel(ep: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Watchers that count deliveries; `arrived` wakes when a put reached all.
struct Fanout {
    received: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn fanout(ep: &str) -> Fanout {
    let received = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let mut created = Vec::new();
    for _ in 0..STREAMS {
        let (tx, rx) = tokio::sync::mpsc::channel(WATCHERS_PER_STREAM + 1);
        for _ in 0..WATCHERS_PER_STREAM {
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: Bytes::from_static(b"fan/"),
                        range_end: Bytes::from_static(b"fan0"),
                        ..Default::default()
                    },
                )),
            })
            .await
            .unwrap();
        }
        let mut stream = WatchClient::new(channel(ep).await)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (received, arrived) = (received.clone(), arrived.clone());
        let (ctx, crx) = tokio::sync::oneshot::channel();
        created.push(crx);
        tasks.push(tokio::spawn(async move {
            let _keep = tx;
            let mut ctx = Some(ctx);
            let mut n_created = 0;
            while let Ok(Some(r)) = stream.message().await {
                if r.created {
                    n_created += 1;
                    if n_created == WATCHERS_PER_STREAM
                        && let Some(c) = ctx.take()
                    {
                        let _ = c.send(());
                    }
                }
                if !r.events.is_empty() {
                    let n = received.fetch_add(r.events.len(), Relaxed) + r.events.len();
                    if n % (STREAMS * WATCHERS_PER_STREAM) == 0 {
                        arrived.notify_one();
                    }
                }
            }
        }));
    }
    for c in created {
        c.await.unwrap();
    }
    Fanout {
        received,
        arrived,
        _tasks: tasks,
    }
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let (etcd, gateway_ep, _stop) = rt.block_on(async {
        let etcd = EtcdServer::start().await;
        let mut kv = KvClient::new(channel(&etcd.endpoint).await);
        for i in 0..100 {
            kv.put(PutRequest {
                key: Bytes::from(format!("r/{i:03}")),
                value: Bytes::from(vec![b'v'; 256]),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = Gateway::start(GatewayConfig::new([etcd.endpoint.clone()]), listener)
            .await
            .unwrap();
        gw.cache()
            .wait_ready(Duration::from_secs(30))
            .await
            .unwrap();
        let ep = gw.local_addr().to_string();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        (etcd, ep, stop)
    });

    let mut means = Vec::new();
    for serializable in [true, false] {
        let name = if serializable {
            "serializable"
        } else {
            "linearizable"
        };
        let mut g = c.benchmark_group(format!("range/{name}"));
        for (who, ep) in [
            ("etcd", etcd.endpoint.clone()),
            ("gateway", gateway_ep.clone()),
        ] {
            let mut kv = rt.block_on(async { KvClient::new(channel(&ep).await) });
            let req = RangeRequest {
                key: Bytes::from_static(b"r/"),
                range_end: Bytes::from_static(b"r0"),
                serializable,
                ..Default::default()
            };
            let mut total = Duration::ZERO;
            let mut n = 0u32;
            g.bench_function(who, |b| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    rt.block_on(async {
                        for _ in 0..iters {
                            let r = kv.range(req.clone()).await.unwrap().into_inner();
                            assert_eq!(r.kvs.len(), 100);
                        }
                    });
                    let e = t.elapsed();
                    total += e;
                    n += iters as u32;
                    e
                })
            });
            means.push((format!("range/{name}/{who}"), total / n.max(1)));
        }
        g.finish();
    }

    let mut g = c.benchmark_group("fanout/put_to_all");
    g.sample_size(20);
    for (who, ep) in [
        ("etcd", etcd.endpoint.clone()),
        ("gateway", gateway_ep.clone()),
    ] {
        let f = rt.block_on(fanout(&ep));
        let mut kv = rt.block_on(async { KvClient::new(channel(&etcd.endpoint).await) });
        let mut total = Duration::ZERO;
        let mut n = 0u32;
        g.bench_function(who, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                rt.block_on(async {
                    for i in 0..iters {
                        let notified = f.arrived.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        kv.put(PutRequest {
                            key: Bytes::from(format!("fan/{}", i % 10)),
                            value: Bytes::from(vec![b'x'; 256]),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                        tokio::time::timeout(Duration::from_secs(30), notified)
                            .await
                            .expect("every watcher got the put");
                    }
                });
                let e = t.elapsed();
                total += e;
                n += iters as u32;
                e
            })
        });
        assert_eq!(
            f.received.load(Relaxed) % (STREAMS * WATCHERS_PER_STREAM),
            0
        );
        means.push((format!("fanout/{who}"), total / n.max(1)));
    }
    g.finish();

    println!("\ngateway time as a ratio of etcd direct (same run, same machine):");
    for pair in means.chunks(2) {
        let (e, gw) = (&pair[0], &pair[1]);
        println!(
            "  {:<28} etcd {:>10.1?}  gateway {:>10.1?}  ratio {:.2}",
            gw.0.trim_end_matches("/gateway"),
            e.1,
            gw.1,
            gw.1.as_secs_f64() / e.1.as_secs_f64()
        );
    }
    drop(etcd);
}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
