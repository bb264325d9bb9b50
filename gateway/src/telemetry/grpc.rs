//! The gRPC request counters: go-grpc-prometheus' `grpc_server_*`
//! families and etcd's `etcd_network_client_grpc_*_bytes_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use axum::extract::Request;
use axum::http::header;
use lookout_consensus::metrics::{DEFAULT_BUCKETS, Histogram, header as family_header, sample};

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
pub(super) struct MethodCounts {
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
pub(super) enum Key {
    /// One of etcd's methods.
    Known(usize),
    /// Anything else under a gRPC content type (an unknown service).
    Other(Arc<MethodCounts>),
}

/// gRPC request metrics of one server (one per listener group).
#[derive(Debug)]
pub struct GrpcMetrics {
    known: Box<[MethodCounts]>,
    /// Requests to paths outside [`GRPC_METHODS`]. A blocking mutex: a map
    /// update per such request, never held across an await.
    other: parking_lot::Mutex<HashMap<(String, String), Arc<MethodCounts>>>,
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

    pub(super) fn key(&self, req: &Request) -> Option<Key> {
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

    pub(super) fn started(&self, key: &Key) {
        self.with(key, |c| c.started.fetch_add(1, Relaxed));
    }

    pub(super) fn handled(&self, key: &Key, code: i32, started: Instant) {
        let extensive = self.extensive.load(Relaxed);
        self.with(key, |c| {
            c.handled[code_index(code)].fetch_add(1, Relaxed);
            if extensive {
                c.handling.since(started);
            }
        });
    }

    pub(super) fn messages(&self, key: &Key, sent: bool, msgs: u64, bytes: u64) {
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
            let m = self.other.lock();
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

#[cfg(test)]
mod tests {
    use super::*;

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
