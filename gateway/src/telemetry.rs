//! Observability shared by every process: the gRPC request counters
//! (`grpc_server_started_total` / `grpc_server_handled_total`, the names
//! etcd's go-grpc-prometheus exports), the store's `/metrics`, `/health`
//! and `/readyz`, and the log/trace setup (`--log-format`,
//! `--otlp-endpoint`).
//!
//! ```text
//!  request ─> GrpcMetricsLayer: started{service,method,type} += 1
//!                │ response: grpc-status in headers (trailers-only) or trailers
//!                v
//!             handled{service,method,type,code} += 1 when the body ends
//!             (a body dropped before its trailers counts as Canceled)
//!  tracing ─> fmt layer (text | json) ─> stderr
//!          └> tracing-opentelemetry ─> OTLP/gRPC batch exporter (only with --otlp-endpoint)
//! ```
//!
//! Counting never blocks a request: one short mutex section per request
//! start and end, nothing held across an await.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body::{Body, Frame};
use lookout_consensus::Store;

// === gRPC counters ===

/// (service, method) -> counts; codes by name.
#[derive(Debug, Default)]
pub struct GrpcMetrics {
    /// A std Mutex: a map update per request start/end, never held across
    /// an await; contention is bounded by the request rate.
    inner: std::sync::Mutex<HashMap<(String, String), MethodCounts>>,
}

#[derive(Debug, Default, Clone)]
struct MethodCounts {
    started: u64,
    handled: HashMap<&'static str, u64>,
}

/// go-grpc-prometheus' names for the status codes.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// The RPC type label, as etcd's services declare them.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") => "server_stream",
        _ => "unary",
    }
}

impl GrpcMetrics {
    fn started(&self, key: &(String, String)) {
        let mut m = self.inner.lock().expect("grpc metrics");
        m.entry(key.clone()).or_default().started += 1;
    }

    fn handled(&self, key: &(String, String), code: i32) {
        let mut m = self.inner.lock().expect("grpc metrics");
        *m.entry(key.clone())
            .or_default()
            .handled
            .entry(code_name(code))
            .or_default() += 1;
    }

    /// How many calls of `method` (e.g. "Range") ended with `code` ("OK").
    pub fn handled_count(&self, method: &str, code: &str) -> u64 {
        let m = self.inner.lock().expect("grpc metrics");
        m.iter()
            .filter(|((_, me), _)| me == method)
            .map(|(_, c)| c.handled.get(code).copied().unwrap_or(0))
            .sum()
    }

    /// Prometheus text for both families.
    pub fn render(&self, out: &mut String) {
        let snapshot: Vec<((String, String), MethodCounts)> = {
            let m = self.inner.lock().expect("grpc metrics");
            let mut v: Vec<_> = m.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let _ = writeln!(
            out,
            "# HELP grpc_server_started_total Total number of RPCs started on the server.\n# TYPE grpc_server_started_total counter"
        );
        for ((svc, method), c) in &snapshot {
            let t = grpc_type(svc, method);
            let _ = writeln!(
                out,
                "grpc_server_started_total{{grpc_method=\"{method}\",grpc_service=\"{svc}\",grpc_type=\"{t}\"}} {}",
                c.started
            );
        }
        let _ = writeln!(
            out,
            "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n# TYPE grpc_server_handled_total counter"
        );
        for ((svc, method), c) in &snapshot {
            let t = grpc_type(svc, method);
            let mut codes: Vec<_> = c.handled.iter().collect();
            codes.sort();
            for (code, n) in codes {
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"{svc}\",grpc_type=\"{t}\"}} {n}"
                );
            }
        }
    }
}

/// Counts every gRPC request of the router it wraps (HTTP requests pass
/// untouched).
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer(pub Arc<GrpcMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

fn grpc_key(req: &Request) -> Option<(String, String)> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        return None;
    }
    let path = req.uri().path().strip_prefix('/')?;
    let (svc, method) = path.split_once('/')?;
    Some((svc.to_string(), method.to_string()))
}

fn status_of(h: &http::HeaderMap) -> Option<i32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<S> tower::Service<Request> for GrpcMetricsService<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let key = grpc_key(&req);
        let fut = self.inner.call(req);
        let Some(key) = key else {
            return Box::pin(fut);
        };
        let metrics = self.metrics.clone();
        metrics.started(&key);
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(code) = status_of(resp.headers()) {
                metrics.handled(&key, code);
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let body = CountingBody {
                inner: body,
                done: Some((metrics, key)),
            };
            Ok(Response::from_parts(parts, axum::body::Body::new(body)))
        })
    }
}

/// A response body that records its grpc-status from the trailers (or
/// Canceled when dropped before them).
struct CountingBody {
    inner: axum::body::Body,
    done: Option<(Arc<GrpcMetrics>, (String, String))>,
}

impl Body for CountingBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(code) = f.trailers_ref().and_then(status_of)
                    && let Some((m, k)) = self.done.take()
                {
                    m.handled(&k, code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some((m, k)) = self.done.take() {
                    m.handled(&k, 2);
                }
            }
            Poll::Ready(None) => {
                // Ended without trailers: tonic always sends them, so the
                // stream was cut; count it as gRPC would see it.
                if let Some((m, k)) = self.done.take() {
                    m.handled(&k, 14);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        if let Some((m, k)) = self.done.take() {
            m.handled(&k, 1);
        }
    }
}

// === the store's /metrics, /health, /readyz ===

/// What the store's ops endpoints read.
#[derive(Debug)]
pub(crate) struct StoreOps {
    store: Store,
    grpc: Arc<GrpcMetrics>,
    http: Arc<crate::http::HttpMetrics>,
    /// Leader changes this member saw (counted from openraft's metrics).
    leader_changes: Arc<std::sync::atomic::AtomicU64>,
}

/// `/metrics`, `/health`, `/readyz` for `lookout store` (etcd's metric
/// names where the meaning is the same).
pub(crate) fn store_ops_router(
    store: Store,
    grpc: Arc<GrpcMetrics>,
    http: Arc<crate::http::HttpMetrics>,
) -> Router {
    let leader_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut rx = store.raft().metrics();
    let counter = leader_changes.clone();
    tokio::spawn(async move {
        let mut last = rx.borrow().current_leader;
        if last.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        while rx.changed().await.is_ok() {
            let now = rx.borrow().current_leader;
            if now.is_some() && now != last {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            last = now;
        }
    });
    Router::new()
        .route("/metrics", get(store_metrics))
        .route("/health", get(store_health))
        .route("/readyz", get(store_ready))
        .with_state(Arc::new(StoreOps {
            store,
            grpc,
            http,
            leader_changes,
        }))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

async fn store_metrics(State(s): State<Arc<StoreOps>>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let st = s.store.snapshot();
    let m = s.store.raft().metrics().borrow().clone();
    let mut o = String::with_capacity(4096);
    let leader = s.store.leader_id();
    family(
        &mut o,
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        f64::from(u8::from(leader.is_some())),
    );
    family(
        &mut o,
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        f64::from(u8::from(s.store.is_leader())),
    );
    family(
        &mut o,
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        s.leader_changes.load(Relaxed) as f64,
    );
    family(
        &mut o,
        "etcd_server_proposals_committed_total",
        "gauge",
        "The total number of consensus proposals committed (raft log index).",
        m.last_log_index.unwrap_or(0) as f64,
    );
    family(
        &mut o,
        "etcd_server_proposals_applied_total",
        "gauge",
        "The total number of consensus proposals applied.",
        m.last_applied.map_or(0, |l| l.index) as f64,
    );
    family(
        &mut o,
        "etcd_server_id",
        "gauge",
        "Server or member ID in hexadecimal format (as the label).",
        1.0,
    );
    // etcd puts the ID in a label; rewrite the sample line accordingly.
    if let Some(pos) = o.rfind("etcd_server_id 1") {
        o.replace_range(
            pos..pos + "etcd_server_id 1".len(),
            &format!(
                "etcd_server_id{{server_id=\"{:x}\"}} 1",
                s.store.member_id()
            ),
        );
    }
    family(
        &mut o,
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        s.store.db_size() as f64,
    );
    family(
        &mut o,
        "etcd_debugging_mvcc_keys_total",
        "gauge",
        "Total number of keys.",
        st.keys.len() as f64,
    );
    family(
        &mut o,
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current revision of store.",
        st.rev as f64,
    );
    family(
        &mut o,
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        st.compact_rev as f64,
    );
    family(
        &mut o,
        "etcd_debugging_lease_total",
        "gauge",
        "The number of leases granted and not expired.",
        st.leases.len() as f64,
    );
    family(
        &mut o,
        "lookout_http_requests_total",
        "counter",
        "HTTP/JSON API requests answered.",
        s.http.requests.load(Relaxed) as f64,
    );
    s.grpc.render(&mut o);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o,
    )
}

/// etcd's /health: a leader exists (and, for us, answers a read index).
async fn store_health(State(s): State<Arc<StoreOps>>) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    if s.store.leader_id().is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            r#"{"health":"false","reason":"no leader"}"#,
        );
    }
    (StatusCode::OK, json, r#"{"health":"true"}"#)
}

/// Ready: a leader confirmed by a quorum, and this member has applied
/// everything committed up to that moment (a read index round).
async fn store_ready(State(s): State<Arc<StoreOps>>) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    match tokio::time::timeout(Duration::from_secs(2), s.store.read_index()).await {
        Ok(Ok(())) => (StatusCode::OK, json, r#"{"ready":"true"}"#.to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            serde_json::json!({"ready": "false", "reason": e.to_string()}).to_string(),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            r#"{"ready":"false","reason":"read index timed out"}"#.to_string(),
        ),
    }
}

// === logs and traces ===

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Keeps the OTLP exporter alive; flushes it on drop.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber: text or JSON lines on stderr, plus
/// OTLP trace export when `otlp_endpoint` is set. Call once, inside a
/// tokio runtime when exporting (the batch exporter runs on it).
///
/// # Errors
/// The OTLP exporter could not be built (a bad endpoint URL).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<TelemetryGuard, String> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft narrates every membership step at info; operators want
        // our own lines (leader changes, snapshots) and openraft's warnings.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut guard = TelemetryGuard::default();
    let otel = match otlp_endpoint {
        Some(ep) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(ep)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| format!("--otlp-endpoint {ep:?}: {e}"))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("lookout")
                        .build(),
                )
                .build();
            let tracer = provider.tracer("lookout");
            guard.provider = Some(provider);
            // Traces keep their own level: a quiet RUST_LOG for the logs
            // must not switch off the request spans.
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::EnvFilter::new(
                        "info,openraft=warn,h2=warn,hyper=warn,tonic=warn,tower=warn",
                    )),
            )
        }
        None => None,
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(guard)
}
