//! Other clients' latency while one client floods the gateway, against the
//! same clients without the flood, in one run; and the gateway's memory.
//!
//! ```sh
//! cargo build --release -p lookout-gateway --bin lookout -p lookout-loadtest --example floods
//! target/release/examples/floods target/release/lookout 20
//! #                              the binary measured, seconds per phase
//! ```
//!
//! A one-member `lookout store` and a `lookout gateway` in front of it
//! (child processes, PIDs kept). Good clients: 4 gRPC connections, each a
//! put then a linearizable get of the same key, 100 pairs/s per client.
//! For every flood kind the run alternates a quiet phase and a flood
//! phase of the same length; the flood comes from a child process (this
//! example with `flood <kind> <addr> <seconds>`), so its own CPU is not
//! this process's and the good clients' timings measure the gateway.
//!
//! The gateway runs with smaller limits than its defaults (a 2-core test
//! machine cannot open 65,536 connections): the flood kinds push each past
//! its limit, which is what is shown.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use lookout_loadtest::procstat;
use lookout_proto::pb::{
    PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient,
    watch_client::WatchClient, watch_request,
};
use lookout_testkit::{ChildGuard, free_port, spawn_logged, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

const GOOD_CLIENTS: usize = 4;
const PAIRS_PER_SECOND: u64 = 100;
const MAX_CONNECTIONS: usize = 1000;
const MAX_STREAMS: u32 = 1000;
const MAX_WATCHERS: usize = 10_000;
const HEADER_TIMEOUT: &str = "2s";
const KINDS: &[&str] = &[
    "connections",
    "slowloris",
    "big-heads",
    "big-requests",
    "streams",
    "watchers",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("flood") {
        let secs: u64 = args[4].parse().expect("seconds");
        flood(&args[2], &args[3], Duration::from_secs(secs)).await;
        return;
    }
    let bin = args
        .get(1)
        .cloned()
        .unwrap_or("target/release/lookout".into());
    let secs: u64 = args.get(2).map_or(20, |s| s.parse().expect("seconds"));
    let only: Option<Vec<String>> = args
        .get(3)
        .map(|s| s.split(',').map(String::from).collect());
    let phase = Duration::from_secs(secs);

    let dir = tempfile::tempdir().expect("tempdir");
    let sport = free_port();
    let pport = free_port();
    let surl = format!("http://127.0.0.1:{sport}");
    let purl = format!("http://127.0.0.1:{pport}");
    let mut store_cmd = Command::new(&bin);
    store_cmd.args([
        "store".to_string(),
        "--name=s".into(),
        format!("--data-dir={}", dir.path().join("store").display()),
        format!("--listen-client-urls={surl}"),
        format!("--advertise-client-urls={surl}"),
        format!("--listen-peer-urls={purl}"),
        format!("--initial-advertise-peer-urls={purl}"),
        format!("--initial-cluster=s={purl}"),
    ]);
    let _store = spawn_logged(store_cmd, &dir.path().join("store.log")).expect("spawn store");
    let gport = free_port();
    let addr = format!("127.0.0.1:{gport}");
    let mut gw_cmd = Command::new(&bin);
    gw_cmd.args([
        "gateway".to_string(),
        format!("--listen-addr={addr}"),
        format!("--endpoints=127.0.0.1:{sport}"),
        format!("--max-connections={MAX_CONNECTIONS}"),
        format!("--max-concurrent-streams={MAX_STREAMS}"),
        format!("--max-watchers-per-stream={MAX_WATCHERS}"),
        format!("--request-header-timeout={HEADER_TIMEOUT}"),
    ]);
    let gw: ChildGuard =
        spawn_logged(gw_cmd, &dir.path().join("gateway.log")).expect("spawn gateway");
    let gw_pid = gw.pid();
    let mut good = Vec::new();
    for _ in 0..GOOD_CLIENTS {
        let ch = wait_for("gateway serves", Duration::from_secs(60), || {
            let a = addr.clone();
            async move {
                let ch = channel(&a).await?;
                KvClient::new(ch.clone())
                    .put(PutRequest {
                        key: Bytes::from_static(b"probe"),
                        value: Bytes::from_static(b"1"),
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                Some(ch)
            }
        })
        .await;
        good.push(ch);
    }
    let rss0 = procstat::sample(gw_pid).expect("gateway stats").rss_bytes;
    println!(
        "gateway limits: --max-connections={MAX_CONNECTIONS} --max-concurrent-streams={MAX_STREAMS} \
         --max-watchers-per-stream={MAX_WATCHERS} --request-header-timeout={HEADER_TIMEOUT}; \
         {GOOD_CLIENTS} good clients x {PAIRS_PER_SECOND} put+get pairs/s; {secs} s per phase; \
         gateway RSS at start {:.1} MiB",
        mib(rss0)
    );
    println!(
        "| flood | quiet p50 ms | quiet p99 ms | flood p50 ms | flood p99 ms | p99 ratio | good errors (quiet/flood) | gateway RSS peak quiet / flood / after MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe().expect("own path");
    for kind in KINDS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|k| k == kind)) {
            continue;
        }
        let quiet = measure(&good, phase, gw_pid).await;
        let mut cmd = Command::new(&exe);
        cmd.args(["flood", kind, &addr, &secs.to_string()]);
        let mut flooder = spawn_logged(cmd, &dir.path().join(format!("flood-{kind}.log")))
            .expect("spawn flooder");
        let flooded = measure(&good, phase, gw_pid).await;
        // The flooder stops on its own at the deadline; make sure.
        let _ = flooder.terminate(Duration::from_secs(5));
        let flood_log = flooder.log_text();
        // The gateway lets go of what the flood held.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = procstat::sample(gw_pid).expect("gateway stats").rss_bytes;
        println!(
            "| {kind} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {}/{} | {:.1} / {:.1} / {:.1} |",
            ms(quiet.hist.value_at_quantile(0.5)),
            ms(quiet.hist.value_at_quantile(0.99)),
            ms(flooded.hist.value_at_quantile(0.5)),
            ms(flooded.hist.value_at_quantile(0.99)),
            flooded.hist.value_at_quantile(0.99) as f64
                / quiet.hist.value_at_quantile(0.99).max(1) as f64,
            quiet.errors,
            flooded.errors,
            mib(quiet.peak_rss),
            mib(flooded.peak_rss),
            mib(after),
        );
        for l in flood_log.lines().filter(|l| l.starts_with("flood:")) {
            println!("    {l}");
        }
    }
    let mut gw = gw;
    let _ = gw.terminate(Duration::from_secs(10));
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

async fn channel(addr: &str) -> Option<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .ok()
}

struct Phase {
    hist: Histogram<u64>,
    errors: u64,
    peak_rss: u64,
}

/// The good clients for `len`: every put and get timed (microseconds),
/// paced from a schedule so a slow answer delays only its own client.
async fn measure(good: &[Channel], len: Duration, gw_pid: u32) -> Phase {
    let stop = Instant::now() + len;
    let mut tasks = Vec::new();
    for (c, ch) in good.iter().enumerate() {
        let mut kv = KvClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
            let mut errors = 0u64;
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / PAIRS_PER_SECOND));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            while Instant::now() < stop {
                tick.tick().await;
                let key = Bytes::from(format!("good/{c}/{}", i % 100));
                i += 1;
                let t = Instant::now();
                let put = kv
                    .put(PutRequest {
                        key: key.clone(),
                        value: Bytes::from_static(b"value"),
                        ..Default::default()
                    })
                    .await;
                let _ = hist.record(t.elapsed().as_micros() as u64);
                if put.is_err() {
                    errors += 1;
                }
                let t = Instant::now();
                let get = kv
                    .range(RangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await;
                let _ = hist.record(t.elapsed().as_micros() as u64);
                if !get.is_ok_and(|r| r.into_inner().kvs.len() == 1) {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let mut peak = 0u64;
    while Instant::now() < stop {
        if let Ok(s) = procstat::sample(gw_pid) {
            peak = peak.max(s.rss_bytes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.expect("good client");
        hist.add(h).expect("same bounds");
        errors += e;
    }
    Phase {
        hist,
        errors,
        peak_rss: peak,
    }
}

/// The flooding child: `kind` against `addr` for `len`, then a line of
/// counts (`flood: ...`) on stdout.
async fn flood(kind: &str, addr: &str, len: Duration) {
    let stop = Instant::now() + len;
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let workers = match kind {
        "connections" => 2 * MAX_CONNECTIONS,
        "slowloris" => MAX_CONNECTIONS / 2,
        "big-heads" | "big-requests" => 8,
        "streams" => 1,
        "watchers" => 1,
        other => panic!("unknown flood {other}"),
    };
    for w in 0..workers {
        let (addr, done, sent, refused) = (
            addr.to_string(),
            done.clone(),
            sent.clone(),
            refused.clone(),
        );
        let kind = kind.to_string();
        tasks.push(tokio::spawn(async move {
            match kind.as_str() {
                "connections" => connections(&addr, &done, &sent, &refused).await,
                "slowloris" => slowloris(&addr, &done, &sent, &refused).await,
                "big-heads" => big_heads(&addr, &done, &sent, &refused).await,
                "big-requests" => big_requests(&addr, w, &done, &sent, &refused).await,
                "streams" => streams(&addr, &done, &sent, &refused).await,
                _ => watchers(&addr, &done, &sent, &refused).await,
            }
        }));
    }
    tokio::time::sleep(stop.saturating_duration_since(Instant::now())).await;
    done.store(true, Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    println!(
        "flood: {kind}: {} sent, {} refused or closed by the gateway",
        sent.load(Relaxed),
        refused.load(Relaxed)
    );
}

/// Reads until the server closes (true) or `within` passes (false).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Twice --max-connections workers, each holding one idle HTTP/2
/// connection and opening another as soon as the gateway closes it.
async fn connections(addr: &str, done: &AtomicBool, sent: &AtomicU64, refused: &AtomicU64) {
    while !done.load(Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        sent.fetch_add(1, Relaxed);
        let _ = s.write_all(PREFACE).await;
        // Held until closed or the flood ends.
        while !done.load(Relaxed) {
            if closed_within(&mut s, Duration::from_millis(200)).await {
                refused.fetch_add(1, Relaxed);
                break;
            }
        }
    }
}

/// Connections that trickle an HTTP/1.1 head one byte every 300 ms.
async fn slowloris(addr: &str, done: &AtomicBool, sent: &AtomicU64, refused: &AtomicU64) {
    let head =
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    while !done.load(Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        sent.fetch_add(1, Relaxed);
        for c in head.iter().cycle() {
            if done.load(Relaxed) {
                return;
            }
            if s.write_all(&[*c]).await.is_err()
                || closed_within(&mut s, Duration::from_millis(300)).await
            {
                refused.fetch_add(1, Relaxed);
                break;
            }
        }
    }
}

/// HTTP/1.1 request heads of 256 KiB (past --max-header-bytes), back to
/// back.
async fn big_heads(addr: &str, done: &AtomicBool, sent: &AtomicU64, refused: &AtomicU64) {
    let mut head = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..256 {
        head.extend_from_slice(format!("X-Big-{i:03}: ").as_bytes());
        head.extend(std::iter::repeat_n(b'a', 1000));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    while !done.load(Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        sent.fetch_add(1, Relaxed);
        let _ = s.write_all(&head).await;
        if closed_within(&mut s, Duration::from_secs(5)).await {
            refused.fetch_add(1, Relaxed);
        }
    }
}

/// gRPC puts past --max-request-bytes: 1.6 MiB (the store's own check
/// answers) and 3 MiB (refused while decoding), alternately.
async fn big_requests(
    addr: &str,
    w: usize,
    done: &AtomicBool,
    sent: &AtomicU64,
    refused: &AtomicU64,
) {
    let Some(ch) = channel(addr).await else {
        return;
    };
    let mut kv = KvClient::new(ch).max_encoding_message_size(16 << 20);
    let mid = Bytes::from(vec![b'x'; 1600 * 1024]);
    let huge = Bytes::from(vec![b'x'; 3 << 20]);
    let mut i = 0u64;
    while !done.load(Relaxed) {
        i += 1;
        let value = if i.is_multiple_of(2) {
            mid.clone()
        } else {
            huge.clone()
        };
        sent.fetch_add(1, Relaxed);
        let r = kv
            .put(PutRequest {
                key: Bytes::from(format!("flood/{w}")),
                value,
                ..Default::default()
            })
            .await;
        if r.is_err() {
            refused.fetch_add(1, Relaxed);
        }
    }
}

fn create(key: String) -> WatchRequest {
    let end = {
        let mut e = key.clone().into_bytes();
        *e.last_mut().expect("non-empty") += 1;
        e
    };
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: key.into_bytes().into(),
                range_end: end.into(),
                ..Default::default()
            },
        )),
    }
}

/// One connection opening 3x --max-concurrent-streams watch streams, a
/// watcher on each.
async fn streams(addr: &str, done: &AtomicBool, sent: &AtomicU64, refused: &AtomicU64) {
    let Some(ch) = channel(addr).await else {
        return;
    };
    let opened = Arc::new(AtomicU64::new(0));
    let mut held = Vec::new();
    for i in 0..3 * MAX_STREAMS as usize {
        if done.load(Relaxed) {
            break;
        }
        let mut wc = WatchClient::new(ch.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx.send(create(format!("flood/s{i}/"))).await;
        sent.fetch_add(1, Relaxed);
        let opened = opened.clone();
        held.push((
            tx,
            tokio::spawn(async move {
                if let Ok(resp) = wc
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    let mut s = resp.into_inner();
                    if let Ok(Some(_)) = s.message().await {
                        opened.fetch_add(1, Relaxed);
                    }
                    while let Ok(Some(_)) = s.message().await {}
                }
            }),
        ));
    }
    while !done.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Streams the gateway had not opened by the end (queued by the
    // client's HTTP/2 past --max-concurrent-streams, or refused).
    refused.fetch_add(sent.load(Relaxed) - opened.load(Relaxed), Relaxed);
    for (_, t) in &held {
        t.abort();
    }
}

/// One watch stream asking for 5x --max-watchers-per-stream watchers.
async fn watchers(addr: &str, done: &AtomicBool, sent: &AtomicU64, refused: &AtomicU64) {
    let Some(ch) = channel(addr).await else {
        return;
    };
    let mut wc = WatchClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let Ok(resp) = wc
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut s = resp.into_inner();
    let reader = async {
        while let Ok(Some(r)) = s.message().await {
            if r.canceled && r.created {
                refused.fetch_add(1, Relaxed);
            }
        }
    };
    let writer = async {
        for i in 0..5 * MAX_WATCHERS {
            if done.load(Relaxed) || tx.send(create(format!("flood/w{i}/"))).await.is_err() {
                break;
            }
            sent.fetch_add(1, Relaxed);
        }
        while !done.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
}
