//! The store's `/metrics` and `/health` (`lookout store`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use lookout_consensus::Store;

use super::grpc::GrpcMetrics;
use super::process::render_process;

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
