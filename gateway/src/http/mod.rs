//! HTTP/JSON for curl users, served on the same port as gRPC.
//!
//! Two APIs over one [`EtcdApi`] (the store's methods on `lookout store`,
//! the cache on the gateway):
//!
//! - etcd 3.4's JSON gateway paths, exactly as etcd serves them
//!   (`POST /v3/kv/range`, ..., `/v3/watch`): the proto3 JSON the
//!   generated serde impls write (base64 bytes, int64 as strings), etcd's
//!   error bodies and HTTP statuses;
//! - a readable API under `/v1`: raw values, text keys, watches as NDJSON
//!   or Server-Sent Events, resumable by revision.
//!
//! ```text
//!  listener ──> tonic server (HTTP/1.1 + h2c) ──> axum router
//!                 ├─ /etcdserverpb.*/...   gRPC services (tonic Routes)
//!                 ├─ POST /v3/...          v3.rs ──┐
//!                 ├─ /v1/kv/...            v1.rs ──┼─> EtcdApi (Store | gateway)
//!                 ├─ /v3/watch, /v1/watch  watch.rs┘     └─ watch replies ─> JSON lines
//!                 └─ anything else         404 + the API listing (gRPC: Unimplemented)
//! ```
//!
//! It must never hold a watcher for a client that has gone (a dropped
//! response body ends the request stream the backend watches with), never
//! write an event twice or skip one on resume (SSE ids are the revision of
//! the last event of a revision), and never encode an event per watcher
//! when the backend shares encodings (the gateway's `CachedEvent`s).

mod access;
pub(crate) mod body;
mod error;
mod login;
pub(crate) mod ops;
pub(crate) mod request;
mod serve;
pub(crate) mod text;
pub(crate) mod v1;
mod v3;
mod version;
mod watch;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use tokio_util::sync::CancellationToken;

pub use crate::api::{
    ApiResult, EtcdApi, KeepAlives, StoreApi, WatchEvent, WatchReplies, WatchReply,
};
pub use access::Access;
pub use error::{HttpError, http_status};
pub use serve::{fallback, serve, serve_store, serve_store_tls, with_fallback};
pub use text::event_line;
pub use version::{ETCD_SERVER_VERSION, etcd_cluster_version, version_json};

/// Limits and timings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The backend's largest request (`--max-request-bytes`). JSON bodies
    /// may be up to twice that plus 64 KiB (base64 inflates values by a
    /// third), so a request the backend would refuse gets the backend's
    /// own error ("etcdserver: request is too large"), and only bodies
    /// past that get 413.
    pub max_request_bytes: usize,
    /// A `/v1/watch` stream with no event for this long asks for progress
    /// and writes a progress line carrying the revision.
    pub progress_interval: Duration,
    /// `--cors` and `--host-whitelist` (etcd's defaults: any).
    pub access: Access,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: lookout_consensus::config::DEFAULT_MAX_REQUEST_BYTES,
            progress_interval: Duration::from_secs(10),
            access: Access::default(),
        }
    }
}

impl HttpConfig {
    /// Largest JSON body accepted.
    pub fn json_limit(&self) -> usize {
        self.max_request_bytes.saturating_mul(2) + 64 * 1024
    }

    /// Largest raw value accepted by `PUT /v1/kv/<key>`.
    pub fn value_limit(&self) -> usize {
        self.max_request_bytes + 64 * 1024
    }
}

/// Live numbers of the HTTP layer (plain atomics, relaxed).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Gauge: open HTTP watch streams (`/v1/watch` and `/v3/watch`); a
    /// stream leaves it when its client disconnects or the server stops.
    pub watch_streams: AtomicI64,
    /// Counter: events written to HTTP watch streams.
    pub watch_events: AtomicU64,
    /// Counter: HTTP API requests answered (any status).
    pub requests: AtomicU64,
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct HttpState<A> {
    pub(crate) api: A,
    /// Lock and Election over the same backend.
    pub(crate) lock: crate::concurrency::LockService<A>,
    pub(crate) election: crate::concurrency::ElectionService<A>,
    pub(crate) cfg: HttpConfig,
    pub(crate) metrics: Arc<HttpMetrics>,
    /// Cancelled when the server stops: open streams end on it.
    pub(crate) stop: CancellationToken,
    /// `/v1` Basic logins.
    pub(crate) logins: login::Logins,
}

/// The HTTP API routes (`/v3/...`, `/v1/...`, the listing at `/`) over
/// `api`, without a fallback: merge them with the gRPC routes and then set
/// [`fallback`] (as [`with_fallback`] does). Streams end when `stop`
/// is cancelled.
pub fn router<A: EtcdApi>(
    api: A,
    cfg: HttpConfig,
    metrics: Arc<HttpMetrics>,
    stop: CancellationToken,
) -> Router {
    let access = Arc::new(cfg.access.clone());
    let state = Arc::new(HttpState {
        lock: crate::concurrency::LockService::new(api.clone()),
        election: crate::concurrency::ElectionService::new(api.clone()),
        api,
        cfg,
        metrics: metrics.clone(),
        stop,
        logins: Default::default(),
    });
    v3::routes::<A>()
        .merge(v1::routes::<A>())
        .with_state(state)
        .layer(axum::middleware::from_fn(move |req, next| {
            access::check(access.clone(), req, next)
        }))
        .layer(axum::middleware::map_response(move |r| {
            let m = metrics.clone();
            async move { finish(&m, r) }
        }))
}

/// Every HTTP answer is counted (CORS headers: `access.rs`).
fn finish(metrics: &HttpMetrics, r: Response) -> Response {
    metrics
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    r
}

/// Every HTTP path, for the listing at `/` and in 404 answers: etcd's
/// JSON gateway paths under `/v3` (also served under `/v3beta` and
/// `/v3alpha`), the readable `/v1` API and `/version`.
pub fn api_paths() -> Vec<String> {
    let mut v: Vec<String> = v3::PATHS.iter().map(|p| format!("POST /v3{p}")).collect();
    v.push(format!(
        "(every /v3 path also under {})",
        v3::PREFIXES[1..].join(" and ")
    ));
    v.extend(
        [
            "GET /v1/kv/<key>[?rev=N&serializable=true]",
            "GET /v1/kv/<prefix>?prefix=true[&rev=N&limit=N&keys_only=true&count_only=true]",
            "PUT /v1/kv/<key>[?lease=ID&prev_kv=true]",
            "DELETE /v1/kv/<key>[?prefix=true&prev_kv=true]",
            "GET /v1/watch/<key>[?prefix=true&rev=N] (NDJSON; Accept: text/event-stream for SSE)",
            "GET /version",
            "GET /health, /livez, /readyz, /metrics",
        ]
        .map(String::from),
    );
    v
}
