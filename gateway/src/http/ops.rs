//! `/metrics` (Prometheus text), `/health` (etcd's JSON) and `/readyz`,
//! served on the client port and on `--metrics-addr`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let body = crate::metrics::render(
        s.cache.metrics(),
        &s.metrics,
        s.read_index
            .probes
            .load(std::sync::atomic::Ordering::Relaxed),
        s.cache.is_ready(),
    );
    let mut body = body;
    s.grpc.render(&mut body);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
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

/// Ready = caught up with the upstream: the store's current revision
/// (one linearizable probe, shared with concurrent reads) is applied in
/// the cache within a short bound. 503 while listing, stopping, or behind.
async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let json = || [(header::CONTENT_TYPE, "application/json")];
    let not = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json(),
            serde_json::json!({"ready": "false", "reason": reason}).to_string(),
        )
    };
    if s.is_shutting_down() {
        return not("shutting down".into());
    }
    if !s.cache.is_ready() {
        return not("cache not synced with the store yet".into());
    }
    let bound = std::time::Duration::from_secs(2);
    let rev = match tokio::time::timeout(bound, s.read_index.current_revision(s.cache.upstream()))
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return not(format!("upstream: {}", e.message())),
        Err(_) => return not("upstream revision probe timed out".into()),
    };
    match s.cache.wait_for_revision(rev, bound).await {
        Ok(_) => (StatusCode::OK, json(), r#"{"ready":"true"}"#.to_string()),
        Err(e) => not(format!("cache behind the store revision {rev}: {e}")),
    }
}
