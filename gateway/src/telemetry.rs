//! Observability shared by every process: the gRPC request metrics
//! (go-grpc-prometheus' `grpc_server_*` families and etcd's
//! `etcd_network_client_grpc_*_bytes_total`), the process metrics
//! (`process_*`, as the Prometheus Go client exports them), the store's
//! `/metrics` and `/health`, and the log/trace setup (`--log-format`,
//! `--otlp-endpoint`).
//!
//! ```text
//!  request ─> GrpcMetricsLayer: started{service,method,type} += 1
//!                │ request body: messages and payload bytes received
//!                │ response body: messages and payload bytes sent;
//!                v grpc-status in headers (trailers-only) or trailers
//!             handled{service,method,type,code} += 1 when the body ends
//!             (a body dropped before its trailers counts as Canceled),
//!             handling_seconds observed then (--metrics=extensive)
//!  tracing ─> fmt layer (text | json) ─> stderr
//!          └> tracing-opentelemetry ─> OTLP/gRPC batch exporter (only with --otlp-endpoint)
//! ```
//!
//! Counting never blocks a request: every method etcd serves has its
//! counters preallocated (as go-grpc-prometheus initialises them, so
//! every series exists at 0 from the start), and a request adds to them
//! with relaxed atomics; only paths outside etcd's services take a short
//! mutex section.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body::{Body, Frame};
use lookout_consensus::Store;
use lookout_consensus::metrics::{DEFAULT_BUCKETS, Histogram, header as family_header, sample};

// === gRPC metrics ===

/// etcd's gRPC methods: (service, method, go-grpc-prometheus type).
/// Every one has its series from the start, at 0.
pub const GRPC_METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
];

/// go-grpc-prometheus' names for the status codes, by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

fn code_index(code: i32) -> usize {
    usize::try_from(code)
        .ok()
        .filter(|c| *c < CODE_NAMES.len())
        .unwrap_or(2)
}

/// "/service/method" -> index into [`GRPC_METHODS`].
fn method_index(path: &str) -> Option<usize> {
    static INDEX: OnceLock<HashMap<String, usize>> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            GRPC_METHODS
                .iter()
                .enumerate()
                .map(|(i, (s, m, _))| (format!("/{s}/{m}"), i))
                .collect()
        })
        .get(path)
        .copied()
}

/// The counters of one method.
#[derive(Debug)]
struct MethodCounts {
    started: AtomicU64,
    handled: [AtomicU64; 17],
    msg_received: AtomicU64,
    msg_sent: AtomicU64,
    /// `grpc_server_handling_seconds` (observed with --metrics=extensive).
    handling: Histogram,
}

impl Default for MethodCounts {
    fn default() -> Self {
        Self {
            started: AtomicU64::new(0),
            handled: std::array::from_fn(|_| AtomicU64::new(0)),
            msg_received: AtomicU64::new(0),
            msg_sent: AtomicU64::new(0),
            handling: Histogram::new(DEFAULT_BUCKETS),
        }
    }
}

/// Which counters a request adds to.
#[derive(Debug, Clone)]
enum Key {
    /// One of etcd's methods.
    Known(usize),
    /// Anything else under a gRPC content type (an unknown service).
    Other(Arc<MethodCounts>),
}

/// gRPC request metrics of one server (one per listener group).
#[derive(Debug)]
pub struct GrpcMetrics {
    known: Box<[MethodCounts]>,
    /// Requests to paths outside [`GRPC_METHODS`]. A std Mutex: a map
    /// update per such request, never held across an await.
    other: std::sync::Mutex<HashMap<(String, String), Arc<MethodCounts>>>,
    /// Payload bytes of gRPC messages received and sent
    /// (`etcd_network_client_grpc_*_bytes_total`, counted as etcd's codec
    /// counts them: marshalled message bytes, without gRPC's 5-byte frame).
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    /// etcd's `--metrics=extensive`: also `grpc_server_handling_seconds`.
    extensive: AtomicBool,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        Self {
            known: GRPC_METHODS
                .iter()
                .map(|_| MethodCounts::default())
                .collect(),
            other: Default::default(),
            received_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            extensive: AtomicBool::new(false),
        }
    }
}

/// etcd's `--metrics`: `basic` or `extensive` (adds the per-method gRPC
/// latency histogram `grpc_server_handling_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MetricsLevel {
    #[default]
    Basic,
    Extensive,
}

/// A renderer of more metric families, called on every scrape.
#[derive(Clone)]
pub struct ExtraMetrics(pub Arc<dyn Fn(&mut String) + Send + Sync>);

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtraMetrics")
    }
}

impl GrpcMetrics {
    /// Metrics at `level`.
    pub fn new(level: MetricsLevel) -> Self {
        let m = Self::default();
        m.extensive.store(level == MetricsLevel::Extensive, Relaxed);
        m
    }

    /// Switches the handling-time histogram on or off.
    pub fn set_level(&self, level: MetricsLevel) {
        self.extensive
            .store(level == MetricsLevel::Extensive, Relaxed);
    }

    fn key(&self, req: &Request) -> Option<Key> {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if !grpc {
            return None;
        }
        let path = req.uri().path();
        if let Some(i) = method_index(path) {
            return Some(Key::Known(i));
        }
        let (svc, method) = path.strip_prefix('/')?.split_once('/')?;
        let c = self
            .other
            .lock()
            .expect("grpc metrics")
            .entry((svc.to_string(), method.to_string()))
            .or_default()
            .clone();
        Some(Key::Other(c))
    }

    fn with<R>(&self, key: &Key, f: impl FnOnce(&MethodCounts) -> R) -> R {
        match key {
            Key::Known(i) => f(&self.known[*i]),
            Key::Other(c) => f(c),
        }
    }

    fn started(&self, key: &Key) {
        self.with(key, |c| c.started.fetch_add(1, Relaxed));
    }

    fn handled(&self, key: &Key, code: i32, started: Instant) {
        let extensive = self.extensive.load(Relaxed);
        self.with(key, |c| {
            c.handled[code_index(code)].fetch_add(1, Relaxed);
            if extensive {
                c.handling.since(started);
            }
        });
    }

    fn messages(&self, key: &Key, sent: bool, msgs: u64, bytes: u64) {
        if msgs > 0 {
            self.with(key, |c| {
                let n = if sent { &c.msg_sent } else { &c.msg_received };
                n.fetch_add(msgs, Relaxed);
            });
        }
        if bytes > 0 {
            let b = if sent {
                &self.sent_bytes
            } else {
                &self.received_bytes
            };
            b.fetch_add(bytes, Relaxed);
        }
    }

    /// How many calls of `method` (e.g. "Range") ended with `code` ("OK").
    pub fn handled_count(&self, method: &str, code: &str) -> u64 {
        let Some(ci) = CODE_NAMES.iter().position(|c| *c == code) else {
            return 0;
        };
        let known: u64 = GRPC_METHODS
            .iter()
            .zip(self.known.iter())
            .filter(|((_, m, _), _)| *m == method)
            .map(|(_, c)| c.handled[ci].load(Relaxed))
            .sum();
        let other: u64 = self
            .other
            .lock()
            .expect("grpc metrics")
            .iter()
            .filter(|((_, m), _)| m == method)
            .map(|(_, c)| c.handled[ci].load(Relaxed))
            .sum();
        known + other
    }

    /// Prometheus text for the `grpc_server_*` families and etcd's
    /// `etcd_network_client_grpc_*_bytes_total`.
    pub fn render(&self, out: &mut String) {
        let mut rows: Vec<(&str, &str, &str, Arc<MethodCounts>)> = Vec::new();
        let other: Vec<((String, String), Arc<MethodCounts>)> = {
            let m = self.other.lock().expect("grpc metrics");
            m.iter().map(|(k, c)| (k.clone(), c.clone())).collect()
        };
        for ((svc, method), c) in &other {
            rows.push((svc, method, "unary", c.clone()));
        }
        // Sorted by label values in label-name order (method, service),
        // as the Prometheus Go client writes them.
        let mut known: Vec<(&str, &str, &str, &MethodCounts)> = GRPC_METHODS
            .iter()
            .zip(self.known.iter())
            .map(|((s, m, t), c)| (*s, *m, *t, c))
            .collect();
        known.extend(rows.iter().map(|(s, m, t, c)| (*s, *m, *t, &**c)));
        known.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        let labels = |s: &str, m: &str, t: &str| {
            format!("grpc_method=\"{m}\",grpc_service=\"{s}\",grpc_type=\"{t}\"")
        };
        family_header(
            out,
            "grpc_server_started_total",
            "counter",
            "Total number of RPCs started on the server.",
        );
        for (s, m, t, c) in &known {
            let v = c.started.load(Relaxed) as f64;
            sample(out, "grpc_server_started_total", &labels(s, m, t), v);
        }
        family_header(
            out,
            "grpc_server_handled_total",
            "counter",
            "Total number of RPCs completed on the server, regardless of success or failure.",
        );
        let mut by_code: Vec<usize> = (0..CODE_NAMES.len()).collect();
        by_code.sort_by_key(|i| CODE_NAMES[*i]);
        for ci in by_code {
            for (s, m, t, c) in &known {
                let v = c.handled[ci].load(Relaxed) as f64;
                let l = format!("grpc_code=\"{}\",{}", CODE_NAMES[ci], labels(s, m, t));
                sample(out, "grpc_server_handled_total", &l, v);
            }
        }
        family_header(
            out,
            "grpc_server_msg_received_total",
            "counter",
            "Total number of RPC stream messages received on the server.",
        );
        for (s, m, t, c) in &known {
            let v = c.msg_received.load(Relaxed) as f64;
            sample(out, "grpc_server_msg_received_total", &labels(s, m, t), v);
        }
        family_header(
            out,
            "grpc_server_msg_sent_total",
            "counter",
            "Total number of gRPC stream messages sent by the server.",
        );
        for (s, m, t, c) in &known {
            let v = c.msg_sent.load(Relaxed) as f64;
            sample(out, "grpc_server_msg_sent_total", &labels(s, m, t), v);
        }
        if self.extensive.load(Relaxed) {
            family_header(
                out,
                "grpc_server_handling_seconds",
                "histogram",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            );
            for (s, m, t, c) in &known {
                c.handling
                    .render(out, "grpc_server_handling_seconds", &labels(s, m, t));
            }
        }
        lookout_consensus::metrics::single(
            out,
            "etcd_network_client_grpc_received_bytes_total",
            "counter",
            "The total number of bytes received from grpc clients.",
            self.received_bytes.load(Relaxed) as f64,
        );
        lookout_consensus::metrics::single(
            out,
            "etcd_network_client_grpc_sent_bytes_total",
            "counter",
            "The total number of bytes sent to grpc clients.",
            self.sent_bytes.load(Relaxed) as f64,
        );
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
        let Some(key) = self.metrics.key(&req) else {
            return Box::pin(self.inner.call(req));
        };
        let metrics = self.metrics.clone();
        let started = Instant::now();
        metrics.started(&key);
        let req = req.map(|body| {
            axum::body::Body::new(CountingBody {
                inner: body,
                frames: Frames::default(),
                metrics: metrics.clone(),
                key: key.clone(),
                sent: false,
                done: None,
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            crate::error::oversized_as_grpc_go(resp.headers_mut());
            if let Some(code) = status_of(resp.headers()) {
                metrics.handled(&key, code, started);
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let body = CountingBody {
                inner: body,
                frames: Frames::default(),
                metrics: metrics.clone(),
                key,
                sent: true,
                done: Some(started),
            };
            Ok(Response::from_parts(parts, axum::body::Body::new(body)))
        })
    }
}

/// Follows gRPC's length-prefixed framing (1 flag byte, 4 length bytes,
/// the message) across body chunks.
#[derive(Debug, Default)]
struct Frames {
    /// Header bytes seen of the current frame (0 = between frames).
    header: u8,
    len: u32,
    /// Message bytes still to come in the current frame.
    remaining: u64,
}

impl Frames {
    /// Feeds one chunk: (messages started in it, message bytes in it).
    fn feed(&mut self, mut b: &[u8]) -> (u64, u64) {
        let (mut msgs, mut bytes) = (0, 0);
        while !b.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(b.len());
                self.remaining -= n as u64;
                bytes += n as u64;
                b = &b[n..];
                continue;
            }
            if self.header > 0 {
                self.len = (self.len << 8) | u32::from(b[0]);
            }
            self.header += 1;
            b = &b[1..];
            if self.header == 5 {
                msgs += 1;
                self.remaining = u64::from(self.len);
                self.header = 0;
                self.len = 0;
            }
        }
        (msgs, bytes)
    }
}

/// A request or response body that counts gRPC messages and their bytes;
/// a response body also records its grpc-status from the trailers (or
/// Canceled when dropped before them).
struct CountingBody {
    inner: axum::body::Body,
    frames: Frames,
    metrics: Arc<GrpcMetrics>,
    key: Key,
    /// A response (sent) body rather than a request body.
    sent: bool,
    /// For a response: when the call started, until it is recorded.
    done: Option<Instant>,
}

impl CountingBody {
    fn finish(&mut self, code: i32) {
        if let Some(started) = self.done.take() {
            self.metrics.handled(&self.key, code, started);
        }
    }
}

impl Body for CountingBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &mut r
            && let Some(t) = f.trailers_mut()
        {
            crate::error::oversized_as_grpc_go(t);
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let this = &mut *self;
                    let (msgs, bytes) = this.frames.feed(d);
                    this.metrics.messages(&this.key, this.sent, msgs, bytes);
                } else if let Some(code) = f.trailers_ref().and_then(status_of) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(2),
            // Ended without trailers: tonic always sends them, so the
            // stream was cut; count it as gRPC would see it.
            Poll::Ready(None) => self.finish(14),
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
        self.finish(1);
    }
}

// === process_* ===

/// The Prometheus Go client's process collector, read from /proc/self
/// (user HZ 100, as Go's procfs assumes). Families that cannot be read
/// are left out rather than reported as 0.
pub fn render_process(out: &mut String) {
    use lookout_consensus::metrics::single;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which sits in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    const HZ: f64 = 100.0;
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        single(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (u + s) / HZ,
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let limit = |name: &str| {
        limits.lines().find(|l| l.starts_with(name)).and_then(|l| {
            let soft = l[name.len()..].split_whitespace().next()?;
            if soft == "unlimited" {
                Some(u64::MAX as f64)
            } else {
                soft.parse::<f64>().ok()
            }
        })
    };
    if let Some(v) = limit("Max open files") {
        single(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            v,
        );
    }
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        single(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            d.count() as f64,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    if let Some(kb) = rss {
        single(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kb * 1024.0,
        );
    }
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(b), Some(start)) = (btime, field(22)) {
        single(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            b + start / HZ,
        );
    }
    if let Some(v) = field(23) {
        single(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            v,
        );
    }
    if let Some(v) = limit("Max address space") {
        single(
            out,
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes.",
            v,
        );
    }
}

// === the store's /metrics and /health ===

/// What the store's ops endpoints read.
#[derive(Debug)]
pub(crate) struct StoreOps {
    pub(crate) store: Store,
    grpc: Arc<GrpcMetrics>,
    http: Arc<crate::http::HttpMetrics>,
}

/// `/metrics`, `/health`, `/livez`, `/readyz` for `lookout store`.
pub(crate) fn store_ops_router(
    store: Store,
    grpc: Arc<GrpcMetrics>,
    http: Arc<crate::http::HttpMetrics>,
) -> Router {
    let checks = crate::health::store_checks(&store);
    Router::new()
        .route("/metrics", get(store_metrics))
        .route("/health", get(store_health))
        .with_state(Arc::new(StoreOps { store, grpc, http }))
        .merge(checks)
}

/// The text `lookout store` serves on `/metrics`: etcd's families, the
/// gRPC and process families, and Lookout's HTTP counter.
pub(crate) fn render_store(
    store: &Store,
    grpc: &GrpcMetrics,
    http: &crate::http::HttpMetrics,
) -> String {
    let mut o = String::with_capacity(64 * 1024);
    store.render_metrics(&mut o);
    grpc.render(&mut o);
    render_process(&mut o);
    lookout_consensus::metrics::single(
        &mut o,
        "lookout_http_requests_total",
        "counter",
        "HTTP/JSON API requests answered.",
        http.requests.load(Relaxed) as f64,
    );
    o
}

/// The Prometheus text format's content type.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn store_metrics(State(s): State<Arc<StoreOps>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        render_store(&s.store, &s.grpc, &s.http),
    )
}

/// etcd's /health: a leader exists. Counted in
/// `etcd_server_health_success` / `_failures` as etcd counts it.
async fn store_health(State(s): State<Arc<StoreOps>>) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    let m = s.store.metrics();
    if s.store.leader_id().is_none() {
        m.health_failures.fetch_add(1, Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            r#"{"health":"false","reason":"no leader"}"#,
        );
    }
    m.health_success.fetch_add(1, Relaxed);
    (StatusCode::OK, json, r#"{"health":"true"}"#)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_followed_across_chunks() {
        // Two messages (3 and 0 bytes) and the start of a third (2 of 4).
        let wire = [
            0, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, b'x', b'y',
        ];
        for split in 0..wire.len() {
            let mut f = Frames::default();
            let (m1, b1) = f.feed(&wire[..split]);
            let (m2, b2) = f.feed(&wire[split..]);
            assert_eq!((m1 + m2, b1 + b2), (3, 5), "split at {split}");
            assert_eq!(f.remaining, 2);
        }
    }

    #[test]
    fn every_etcd_method_exists_from_the_start() {
        let m = GrpcMetrics::default();
        let mut o = String::new();
        m.render(&mut o);
        assert!(o.contains(
            "grpc_server_handled_total{grpc_code=\"Unavailable\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 0\n"
        ));
        assert!(o.contains(
            "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0\n"
        ));
        assert!(o.contains("etcd_network_client_grpc_sent_bytes_total 0\n"));
        assert!(!o.contains("grpc_server_handling_seconds"));
        m.set_level(MetricsLevel::Extensive);
        let key = Key::Known(method_index("/etcdserverpb.KV/Put").unwrap());
        m.started(&key);
        m.handled(&key, 0, Instant::now());
        m.handled(&key, 99, Instant::now());
        let mut o = String::new();
        m.render(&mut o);
        assert!(o.contains(
            "grpc_server_handling_seconds_count{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n"
        ));
        assert_eq!(m.handled_count("Put", "OK"), 1);
        assert_eq!(m.handled_count("Put", "Unknown"), 1);
    }
}
