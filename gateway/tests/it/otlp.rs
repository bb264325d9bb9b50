//! `--otlp-endpoint`: a gateway process exports its request spans over
//! OTLP/gRPC to a collector (a minimal in-test TraceService endpoint that
//! records what it receives); `--log-format json` writes JSON lines.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use parking_lot::Mutex;

use crate::harness::*;
use lookout_testkit::LookoutProcess;

use crate::support::lookout_bin;

/// Serves `TraceService/Export` on a loopback port, keeping each request
/// body; answers an empty ExportTraceServiceResponse.
async fn collector() -> (String, Arc<Mutex<Vec<Bytes>>>, tokio::task::JoinHandle<()>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        axum::routing::post(move |body: Bytes| {
            let g = g.clone();
            async move {
                g.lock().push(body);
                // One empty gRPC message; status OK in the headers as a
                // trailers-only answer would not carry the message.
                (
                    [("content-type", "application/grpc"), ("grpc-status", "0")],
                    Bytes::from_static(&[0, 0, 0, 0, 0]),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(app))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await;
    });
    (format!("http://{addr}"), got, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_collector_and_logs_are_json() {
    let etcd = lookout_testkit::EtcdServer::start().await;
    let (url, got, _task) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("127.0.0.1:{}", lookout_testkit::free_port());
    // Through env(1): this child logs at info (LookoutProcess defaults to warn).
    let args: Vec<String> = vec![
        "RUST_LOG=info".into(),
        lookout_bin().display().to_string(),
        "gateway".into(),
        format!("--listen-addr={endpoint}"),
        format!("--endpoints={}", etcd.endpoint),
        format!("--otlp-endpoint={url}"),
        "--log-format=json".into(),
    ];
    let gw = LookoutProcess::spawn(
        std::path::Path::new("/usr/bin/env"),
        &args,
        &endpoint,
        &dir.path().join("gw.log"),
    )
    .await;
    lookout_testkit::wait_for("gateway ready", WAIT, || {
        let ep = endpoint.clone();
        async move { health_ok(&ep).await.then_some(()) }
    })
    .await;
    let mut c = kv(&gw.endpoint).await;
    put(&mut c, "traced", "1").await;
    // The batch exporter sends within its interval (5 s by default).
    lookout_testkit::wait_for("spans exported", Duration::from_secs(30), || {
        let found = got
            .lock()
            .iter()
            .any(|b| b.windows(5).any(|w| w == b"/etcd") || b.windows(4).any(|w| w == b"grpc"));
        async move { found.then_some(()) }
    })
    .await;
    let log = gw.child.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("gateway serving"))
        .expect("start line");
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("gateway serving")
    );
}
