//! Bad and greedy clients: TLS handshakes cut short or garbled (store and
//! gateway listeners), slow request heads, connections, watchers and
//! bytes past their limits. Each test checks the offender is refused or
//! closed and that a well-behaved client is served meanwhile.

use std::path::Path;
use std::time::{Duration, Instant};

use lookout_proto::pb::{PutRequest, RangeRequest, kv_client::KvClient, watch_request};
use lookout_testkit::certs::TestCa;
use lookout_testkit::{EtcdServer, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

use crate::harness::{TestGateway, WAIT, WatchStream, b, channel, config, prefix_watch};
use crate::tls::{spawn, tls_store_args, wait_tls_ready};

/// The first flight of a real TLS client (rustls), for cutting short.
fn client_hello(ca: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "localhost".try_into().unwrap())
            .unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

use rustls::pki_types::pem::PemObject;

/// What one bad client sends before it goes quiet (or hangs up).
fn junk(hello: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut v = Vec::new();
    for cut in [0, 1, 3, 5, 6, 40, hello.len() / 2, hello.len() - 1] {
        v.push((hello[..cut].to_vec(), false));
        v.push((hello[..cut].to_vec(), true));
    }
    // A record header claiming 16 KiB that never comes.
    v.push((vec![0x16, 0x03, 0x01, 0x40, 0x00], false));
    // Garbage, plain HTTP on a TLS port, a flipped ClientHello.
    v.push((
        (0..2048u32).map(|i| (i * 7919 % 251) as u8).collect(),
        false,
    ));
    v.push((b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false));
    let mut flipped = hello.to_vec();
    flipped[hello.len() / 3] ^= 0xff;
    v.push((flipped, false));
    v
}

/// Opens one connection per junk message; each sends its bytes and then
/// holds the connection (or closes its write side).
async fn send_junk(addr: &str, hello: &[u8], copies: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..copies {
        for (bytes, hang_up) in junk(hello) {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let _ = s.write_all(&bytes).await;
            if hang_up {
                let _ = s.shutdown().await;
            }
            held.push(s);
        }
    }
    held
}

async fn tls_channel(url: &str, ca: &Path, cert: &Path, key: &Path) -> Channel {
    let tls = lookout_consensus::tls::client_config(Some(ca), Some((cert, key))).unwrap();
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("TLS connect")
}

/// `n` puts and linearizable gets through `ch`, each on its own timing;
/// returns the slowest.
async fn serve_good_client(ch: Channel, n: usize, tag: &str) -> Duration {
    let mut kv = KvClient::new(ch);
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        kv.put(PutRequest {
            key: b(&format!("good/{tag}/{i}")),
            value: b("v"),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("good client's put {i} failed: {e}"));
        let r = kv
            .range(RangeRequest {
                key: b(&format!("good/{tag}/{i}")),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("good client's get {i} failed: {e}"))
            .into_inner();
        assert_eq!(r.kvs.len(), 1);
        worst = worst.max(t.elapsed());
    }
    worst
}

/// True once the server has closed `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A TLS alert or an HTTP error answer: keep reading until EOF.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_cut_short_never_stop_the_store_or_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(d, "main");
    let server = ca.issue_server("server");
    let alice = ca.issue_client("alice");
    let gw_client = ca.issue_client("gateway");

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut store = spawn(d, "store", &tls_store_args(d, port, &server, &ca.ca_file));
    wait_tls_ready(&url, &ca.ca_file, &alice, &mut store).await;
    let gport = free_port();
    let gurl = format!("https://127.0.0.1:{gport}");
    let mut gw = spawn(
        d,
        "gateway",
        &[
            "gateway".into(),
            format!("--listen-addr=127.0.0.1:{gport}"),
            format!("--endpoints=127.0.0.1:{port}"),
            format!("--cacert={}", ca.ca_file.display()),
            format!("--cert={}", gw_client.cert.display()),
            format!("--key={}", gw_client.key.display()),
            format!("--cert-file={}", server.cert.display()),
            format!("--key-file={}", server.key.display()),
            format!("--trusted-ca-file={}", ca.ca_file.display()),
            "--client-cert-auth".into(),
            "--tls-handshake-timeout=1s".into(),
        ],
    );
    wait_tls_ready(&gurl, &ca.ca_file, &alice, &mut gw).await;

    let hello = client_hello(&ca.ca_file);
    assert!(
        hello.len() > 100 && hello[0] == 0x16,
        "a TLS handshake record"
    );
    for (name, target) in [("store", &url), ("gateway", &gurl)] {
        let addr = target.trim_start_matches("https://").to_string();
        // Junk first, so the good client's handshake queues behind it.
        let mut held = send_junk(&addr, &hello, 3).await;
        let ch = tls_channel(target, &ca.ca_file, &alice.cert, &alice.key).await;
        let worst = serve_good_client(ch, 20, name).await;
        assert!(
            worst < Duration::from_secs(2),
            "{name}: a good client waited {worst:?} behind {} bad handshakes",
            held.len()
        );
        if name == "gateway" {
            // --tls-handshake-timeout=1s: every silent one is closed soon.
            for (i, s) in held.iter_mut().enumerate() {
                assert!(
                    closed_by_server(s, Duration::from_secs(5)).await,
                    "gateway kept bad handshake {i} open"
                );
            }
        }
    }
    assert!(store.is_running(), "store died:\n{}", store.log_text());
    assert!(gw.is_running(), "gateway died:\n{}", gw.log_text());
    let log = gw.log_text();
    assert!(log.contains("TLS handshake timed out"), "{log}");
    assert!(log.contains("TLS handshake refused"), "{log}");
}

/// A gateway in front of a real etcd with `f` applied to its config.
async fn gateway_with(
    etcd: &EtcdServer,
    f: impl FnOnce(&mut lookout_gateway::GatewayConfig),
) -> TestGateway {
    let mut cfg = config(&[etcd.endpoint.as_str()]);
    f(&mut cfg);
    TestGateway::start_with(cfg).await
}

/// A counter from `/metrics`; `None` while the scrape cannot get a
/// connection (a gateway at `--max-connections` refuses it too).
async fn try_metric(endpoint: &str, name: &str) -> Option<f64> {
    let (_, body) = crate::harness::http_get(endpoint, "/metrics").await?;
    let v = body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok());
    assert!(v.is_some(), "no {name} in /metrics");
    v
}

async fn metric(endpoint: &str, name: &str) -> f64 {
    try_metric(endpoint, name).await.expect("metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_and_others_are_served() {
    let etcd = EtcdServer::start().await;
    let gw = gateway_with(&etcd, |c| {
        c.listener.max_connections = 40;
        c.listener.request_header_timeout = Duration::from_secs(30);
    })
    .await;
    // 40 connections that did their part (the HTTP/2 preface) and idle.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let mut idle = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(&gw.endpoint).await.unwrap();
        s.write_all(preface).await.unwrap();
        idle.push(s);
    }
    lookout_testkit::wait_for("40 connections open", WAIT, || {
        let ep = gw.endpoint.clone();
        async move {
            // The scrape needs a connection too: it gets in only while the
            // idle ones are not all admitted yet, so ask the gauge directly
            // through the refusal: a 41st connection is closed.
            let mut s = TcpStream::connect(&ep).await.ok()?;
            closed_by_server(&mut s, Duration::from_millis(300))
                .await
                .then_some(())
        }
    })
    .await;
    // Past the limit: closed at once.
    let mut extra = TcpStream::connect(&gw.endpoint).await.unwrap();
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(5)).await,
        "a connection past --max-connections was kept"
    );
    // One idle client leaves: a real client gets its place.
    drop(idle.pop());
    // (The server frees the slot once it reads the close.)
    let ch = lookout_testkit::wait_for("a good client gets in", WAIT, || {
        let ep = gw.endpoint.clone();
        async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
                .ok()?
                .connect_timeout(Duration::from_secs(1))
                .connect()
                .await
                .ok()?;
            let mut kv = KvClient::new(ch.clone());
            kv.range(RangeRequest {
                key: b("probe"),
                ..Default::default()
            })
            .await
            .ok()?;
            Some(ch)
        }
    })
    .await;
    let worst = serve_good_client(ch, 5, "conn").await;
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    drop(idle);
    lookout_testkit::wait_for("metrics after the flood", WAIT, || {
        let ep = gw.endpoint.clone();
        async move {
            // The idle connections' slots free as the server reads their
            // closes; until then the scrape itself may be refused.
            let refused = try_metric(&ep, "lookout_connections_refused_total").await?;
            (refused >= 1.0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_request_heads_are_closed() {
    let etcd = EtcdServer::start().await;
    let gw = gateway_with(&etcd, |c| {
        c.listener.request_header_timeout = Duration::from_millis(500);
        c.listener.max_header_bytes = 8 * 1024;
    })
    .await;
    // Silent, trickling, and a head that never ends.
    let mut silent = TcpStream::connect(&gw.endpoint).await.unwrap();
    let mut trickle = TcpStream::connect(&gw.endpoint).await.unwrap();
    let mut preface_half = TcpStream::connect(&gw.endpoint).await.unwrap();
    preface_half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut huge = TcpStream::connect(&gw.endpoint).await.unwrap();
    let t = Instant::now();
    let drip = tokio::spawn(async move {
        let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for c in head.iter().chain(b"aaaaaaaaaaaaaaaaaaaaaaaa".iter()) {
            if trickle.write_all(&[*c]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed_by_server(&mut trickle, Duration::from_secs(5)).await
    });
    let mut big = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'a', 16 * 1024));
    let _ = huge.write_all(&big).await;
    for (name, s) in [
        ("silent", &mut silent),
        ("half a preface", &mut preface_half),
        ("oversized head", &mut huge),
    ] {
        assert!(
            closed_by_server(s, Duration::from_secs(5)).await,
            "{name} connection kept open"
        );
    }
    assert!(drip.await.unwrap(), "trickling head kept open");
    assert!(t.elapsed() < Duration::from_secs(8));
    // Well-formed clients are untouched (gRPC and curl-style HTTP/1.1).
    let worst = serve_good_client(channel(&gw.endpoint).await, 5, "slow").await;
    assert!(worst < Duration::from_secs(2));
    let (status, _) = crate::harness::http_get(&gw.endpoint, "/health")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(metric(&gw.endpoint, "lookout_connections_slow_total").await >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_past_the_stream_limit_are_refused_and_the_stream_goes_on() {
    let etcd = EtcdServer::start().await;
    let gw = gateway_with(&etcd, |c| c.max_watchers_per_stream = 3).await;
    let ws = WatchStream::open(&gw.endpoint).await;
    for id in 1..=3 {
        ws.watch(id, prefix_watch(&format!("w{id}/"), 0)).await;
        ws.wait_created(id).await;
    }
    ws.watch(4, prefix_watch("w4/", 0)).await;
    lookout_testkit::wait_for("the fourth create refused", WAIT, || {
        let r = ws.raw_refusals();
        async move { r.filter(|r| r.contains("too many watchers")) }
    })
    .await;
    // A cancel frees a place; the stream and its watchers carry on.
    ws.send(watch_request::RequestUnion::CancelRequest(
        lookout_proto::pb::WatchCancelRequest { watch_id: 2 },
    ))
    .await;
    lookout_testkit::wait_for("the cancel answered", WAIT, || {
        let c = ws.log(2).canceled;
        async move { c.then_some(()) }
    })
    .await;
    ws.watch(5, prefix_watch("w5/", 0)).await;
    ws.wait_created(5).await;
    let mut kv = KvClient::new(channel(&gw.endpoint).await);
    let rev = crate::harness::put(&mut kv, "w1/a", "x").await;
    ws.wait_until(1, rev).await;
    assert!(metric(&gw.endpoint, "lookout_watchers_refused_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_headers_are_refused_with_etcds_errors() {
    let etcd = EtcdServer::start().await;
    let gw = gateway_with(&etcd, |_| {}).await;
    let mut kv = KvClient::new(channel(&gw.endpoint).await);
    // Over --max-request-bytes but within gRPC's framing room: the store
    // answers as etcd does.
    let e = kv
        .put(PutRequest {
            key: b("big"),
            value: vec![b'x'; 1600 * 1024].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("request is too large"),
        "{:?} {}",
        e.code(),
        e.message()
    );
    // Past the framing room: refused before any work.
    let e = kv
        .put(PutRequest {
            key: b("huge"),
            value: vec![b'x'; 3 << 20].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "{:?} {}",
        e.code(),
        e.message()
    );
    // A header list past --max-header-bytes.
    let mut req = tonic::Request::new(RangeRequest {
        key: b("k"),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-big", "a".repeat(100 * 1024).parse().unwrap());
    assert!(kv.range(req).await.is_err());
    // And the connection still serves well-formed requests.
    let worst = serve_good_client(channel(&gw.endpoint).await, 5, "big").await;
    assert!(worst < Duration::from_secs(2));
}
