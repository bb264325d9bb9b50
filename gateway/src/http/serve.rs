//! One listener for gRPC and HTTP: tonic's server with HTTP/1.1 accepted
//! beside HTTP/2 (h2c), routing by path. gRPC paths
//! (`/etcdserverpb.KV/Range`) and HTTP paths (`/v3/kv/range`) never
//! overlap, so one axum router holds both; unknown paths get gRPC's
//! Unimplemented when the request is gRPC and a 404 listing the API
//! otherwise.
//!
//! ```text
//!  TcpListener ─(nodelay)─> tonic Server (accept_http1) ─> axum Router
//!                                                          ├─ tonic Routes (h2 gRPC)
//!                                                          ├─ HTTP API (router())
//!                                                          └─ fallback()
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use lookout_consensus::Store;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use super::error::readable_json;
use super::{HttpConfig, HttpMetrics, api_paths, router};

#[derive(Serialize)]
struct Listing<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
    api: Vec<String>,
    grpc: &'a str,
}

const GRPC: &str = "etcd v3 gRPC (etcdserverpb.KV, Watch, Lease, Cluster, Maintenance, Auth; v3lockpb.Lock; v3electionpb.Election) on this port over HTTP/2";

/// `GET /`: what this port serves.
pub(crate) async fn listing() -> Response {
    readable_json(
        StatusCode::OK,
        &Listing {
            error: None,
            code: None,
            api: api_paths(),
            grpc: GRPC,
        },
    )
}

/// Answer for a path nothing else matched: gRPC's Unimplemented for gRPC
/// requests (as tonic would), else 404 with the list of API paths.
pub async fn fallback(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return crate::error::unimplemented_path()
            .into_http::<axum::body::Body>()
            .into_response();
    }
    let uri: &Uri = req.uri();
    readable_json(
        StatusCode::NOT_FOUND,
        &Listing {
            error: Some(format!("no such path: {}", uri.path())),
            code: Some(tonic::Code::NotFound as i32),
            api: api_paths(),
            grpc: GRPC,
        },
    )
}

/// `app` with [`fallback`] as its fallback (replacing tonic's).
pub fn with_fallback(app: Router) -> Router {
    app.fallback(fallback)
}

/// Serves `grpc` and `http` on `listener` until `shutdown` resolves, then
/// lets open requests finish (HTTP watch streams end on their own stop
/// signal, see [`router`]).
///
/// # Errors
/// The server failed (not a client's error).
pub async fn serve(
    listener: TcpListener,
    grpc: tonic::service::Routes,
    http: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let app = with_fallback(grpc.into_axum_router().merge(http));
    serve_app(listener, app, shutdown).await
}

async fn serve_app(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Small unary answers must not wait for Nagle, as etcd's sockets don't.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    server()
        .add_routes(tonic::service::Routes::from(app))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// `lookout store`'s client port: the store's gRPC services and the HTTP
/// API over the same [`Store`], on one listener.
///
/// # Errors
/// As [`serve`].
pub async fn serve_store(
    listener: TcpListener,
    store: Store,
    cfg: HttpConfig,
    metrics: Arc<HttpMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_store_tls(
        listener,
        None,
        store,
        cfg,
        metrics,
        Arc::default(),
        shutdown,
    )
    .await
}

/// [`serve_store`] behind TLS when `tls` is given, with `/metrics`,
/// `/health` and `/readyz` and gRPC request counting into `grpc`.
///
/// # Errors
/// As [`serve`].
pub async fn serve_store_tls(
    listener: TcpListener,
    tls: Option<Arc<lookout_consensus::tls::ReloadingTls>>,
    store: Store,
    cfg: HttpConfig,
    metrics: Arc<HttpMetrics>,
    grpc_metrics: Arc<crate::telemetry::GrpcMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let stop = CancellationToken::new();
    let api = crate::api::StoreApi::new(store.clone());
    let grpc = crate::concurrency::add_routes(
        lookout_consensus::routes(&store),
        &api,
        store.config().max_request_bytes + lookout_consensus::config::GRPC_OVERHEAD_BYTES,
    );
    let ops =
        crate::telemetry::store_ops_router(store.clone(), grpc_metrics.clone(), metrics.clone());
    let http = router(api, cfg, metrics, stop.clone()).merge(ops);
    let shutdown = async move {
        shutdown.await;
        // HTTP watch streams end first, so the graceful drain can finish.
        stop.cancel();
    };
    let app = with_fallback(grpc.into_axum_router().merge(http))
        .layer(crate::telemetry::GrpcMetricsLayer(grpc_metrics));
    match tls {
        Some(t) => {
            server()
                .add_routes(tonic::service::Routes::from(app))
                .serve_with_incoming_shutdown(t.incoming(listener), shutdown)
                .await
        }
        None => serve_app(listener, app, shutdown).await,
    }
}

fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        // curl speaks HTTP/1.1; gRPC clients speak HTTP/2 (h2c or h2 over
        // TLS) on the same port, told apart by hyper's preface check.
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
}
