//! `/metrics` (Prometheus text), `/health` (etcd's JSON), `/livez` and
//! `/readyz` (etcd 3.5's text checks, see `health.rs`), served on the
//! client port and on `--metrics-addr`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::shared::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let checks = crate::health::gateway_checks(&shared);
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(shared)
        .merge(checks)
}

/// The gateway's families (`lookout_*`), the gRPC and process families,
/// and whatever the configuration adds (`lookout dev`: its store's
/// `etcd_*`).
async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let mut body = crate::metrics::render(
        s.cache.metrics(),
        &s.metrics,
        s.read_index
            .probes
            .load(std::sync::atomic::Ordering::Relaxed),
        s.cache.is_ready(),
    );
    s.grpc.render(&mut body);
    crate::telemetry::render_process(&mut body);
    if let Some(extra) = &s.config.extra_metrics {
        (extra.0)(&mut body);
    }
    (
        [(header::CONTENT_TYPE, crate::telemetry::PROMETHEUS_TEXT)],
        body,
    )
}

/// 200 `{"health":"true"}` once the cache has listed the store and while
/// the gateway is not stopping; 503 `{"health":"false",...}` otherwise, so a
/// load balancer sends no client to a gateway that cannot answer yet.
async fn health(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    if s.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            r#"{"health":"false","reason":"shutting down"}"#.to_string(),
        );
    }
    if !s.cache.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            r#"{"health":"false","reason":"cache not synced with the store yet"}"#.to_string(),
        );
    }
    (StatusCode::OK, json, r#"{"health":"true"}"#.to_string())
}
