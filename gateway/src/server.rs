//! [`Gateway`] and [`run_gateway`]: the cache, the gRPC services, the HTTP
//! port, and the shutdown sequence.
//!
//! ```text
//!   Gateway::start ─> EtcdUpstream + Cache::start (lists in the background)
//!   Gateway::run   ─> tonic (gRPC + /metrics,/health over HTTP/1.1) on the client listener
//!                  └> axum (/metrics, /health) on --metrics-addr
//!   shutdown ─> stop accepting, end watch and keep-alive streams (Unavailable,
//!               so clients resume elsewhere), drain; abort after shutdown_timeout
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lookout_cache::{Cache, EtcdUpstream};
use lookout_proto::pb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::admission::Gate;
use crate::config::{GatewayConfig, member_id};
use crate::error::GatewayError;
use crate::keepalive::KeepAliveHub;
use crate::metrics::GatewayMetrics;
use crate::readindex::ReadIndex;
use crate::shared::Shared;

/// A started gateway: the cache is listing, nothing is served until
/// [`Gateway::run`].
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
    /// The client listener's TLS (reloads its files while serving).
    tls: Option<Arc<lookout_consensus::tls::ReloadingTls>>,
    /// Keeps the copy of the store's auth state fresh (ends with the
    /// gateway).
    auth_refresher: AbortOnDrop,
}

impl Gateway {
    /// Binds the metrics port (if configured) and starts the cache on
    /// `listener`'s behalf. Call within a tokio runtime.
    ///
    /// # Errors
    /// [`GatewayError::Bind`] or [`GatewayError::BadFlag`] for the metrics
    /// address; the listener's own address cannot be read.
    pub async fn start(config: GatewayConfig, listener: TcpListener) -> Result<Self, GatewayError> {
        let local_addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: "client listener".into(),
            source,
        })?;
        let metrics_listener = match &config.metrics_addr {
            Some(a) => {
                let addr = host_port(a, "--metrics-addr")?;
                Some(
                    TcpListener::bind(&addr)
                        .await
                        .map_err(|source| GatewayError::Bind { addr, source })?,
                )
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let tls = match &config.tls {
            Some(f) => Some(lookout_consensus::tls::ReloadingTls::new(
                f.clone(),
                "client",
            )?),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise_url = config
            .advertise_client_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{local_addr}"));
        let member_id = member_id(&advertise_url);
        let upstream = Arc::new(EtcdUpstream::new(config.upstream.clone()));
        let auth = Arc::new(crate::auth::GatewayAuth::new(
            &config.auth_settings(),
            upstream.clone(),
            config.read_timeout,
        )?);
        let cache = Cache::start(upstream.clone(), config.cache_config(member_id));
        let shared = Arc::new(Shared {
            cache,
            upstream,
            member_id,
            advertise_url,
            metrics: GatewayMetrics::default(),
            shutdown: CancellationToken::new(),
            upstream_status: parking_lot::Mutex::new(None),
            read_index: Arc::new(ReadIndex::default()),
            lists: Gate::new("lists", config.lists),
            catchups: Gate::new("catch-ups", config.catchups),
            keepalive: KeepAliveHub::default(),
            resolver_lease: std::sync::atomic::AtomicI64::new(0),
            grpc: Arc::new(crate::telemetry::grpc::GrpcMetrics::new(config.metrics)),
            auth,
            config,
        });
        let mirror = shared.auth.mirror().clone();
        let stop = shared.stopping();
        let auth_refresher = AbortOnDrop(tokio::spawn(async move { mirror.run(stop).await }));
        Ok(Self {
            shared,
            listener,
            local_addr,
            metrics_listener,
            metrics_addr,
            tls,
            auth_refresher,
        })
    }

    /// The client (gRPC) address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `--metrics-addr` address actually bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn cache(&self) -> &Cache {
        &self.shared.cache
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.shared.metrics
    }

    /// This gateway's member id (headers, MemberList, Status).
    pub fn member_id(&self) -> u64 {
        self.shared.member_id
    }

    /// Serves until `shutdown` resolves, then stops accepting, ends every
    /// watch and keep-alive stream with Unavailable (clients resume on
    /// another endpoint) and waits at most `shutdown_timeout` for
    /// connections to close.
    ///
    /// # Errors
    /// The gRPC or HTTP server failed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), GatewayError> {
        let Gateway {
            shared,
            listener,
            local_addr,
            metrics_listener,
            metrics_addr,
            tls,
            auth_refresher: _auth_refresher,
        } = self;
        let router = client_router(&shared);

        // Stops the servers once the streams have been told to end; also
        // when `run` itself is dropped (an aborted task), as dropping the
        // old stop sender did.
        let stop = CancellationToken::new();
        let _stop_on_drop = stop.clone().drop_guard();
        let mut grpc = serve_clients(
            &shared,
            listener,
            tls.as_ref(),
            router,
            stop.clone().cancelled_owned(),
        );
        // Aborted with `run` (a killed gateway stops renewing and drops out
        // of MemberList when its lease expires); revoked on a clean stop.
        let registration = shared
            .config
            .resolver_prefix
            .clone()
            .map(|p| AbortOnDrop(tokio::spawn(crate::register::run(shared.clone(), p))));
        let mut http = metrics_listener.map(|l| {
            let app = crate::http::ops::router(shared.clone());
            tokio::spawn(
                axum::serve(l, app)
                    .with_graceful_shutdown(stop.clone().cancelled_owned())
                    .into_future(),
            )
        });
        tracing::info!(
            addr = %local_addr,
            metrics = ?metrics_addr,
            advertise = %shared.advertise_url,
            member = %format!("{:x}", shared.member_id),
            "gateway serving etcd v3 gRPC and HTTP/JSON"
        );

        let early = tokio::select! {
            _ = shutdown => None,
            r = &mut grpc => Some(r),
        };
        if let Some(r) = early {
            // The server ended by itself: report why, stop the rest.
            shared.shutdown.cancel();
            shared.cache.shutdown();
            if let Some(h) = http.take() {
                h.abort();
            }
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(GatewayError::Signal(std::io::Error::other(e))),
            };
        }
        tracing::info!("gateway shutting down");
        shared.shutdown.cancel();
        if let Some(r) = registration {
            drop(r);
            crate::register::deregister(&shared).await;
        }
        shared.cache.shutdown();
        stop.cancel();
        let timeout = shared.config.shutdown_timeout;
        let drain = async {
            let g = (&mut grpc).await;
            if let Some(h) = http.as_mut() {
                let _ = h.await;
            }
            g
        };
        match tokio::time::timeout(timeout, drain).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Err(e)) => return Err(GatewayError::Signal(std::io::Error::other(e))),
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "connections did not close in time; closing anyway"
                );
                grpc.abort();
                if let Some(h) = http {
                    h.abort();
                }
            }
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// The client port's routes: every gRPC service, Lock/Election, the
/// HTTP/JSON API, and the ops endpoints, counted by the gRPC metrics layer.
fn client_router(shared: &Arc<Shared>) -> axum::Router {
    let max_recv = shared.config.max_decoding_bytes();
    let mut routes = tonic::service::Routes::builder();
    let kv = crate::kv::KvService::new(shared.clone());
    routes.add_service(KvServer::new(kv).max_decoding_message_size(max_recv));
    routes
        .add_service(crate::watch::WatchServer::new(shared.clone(), max_recv))
        .add_service(
            LeaseServer::new(crate::lease::LeaseService::new(shared.clone()))
                .max_decoding_message_size(max_recv),
        )
        .add_service(
            MaintenanceServer::new(crate::maintenance::MaintenanceService::new(shared.clone()))
                .max_decoding_message_size(max_recv),
        )
        .add_service(
            ClusterServer::new(crate::cluster::ClusterService::new(shared.clone()))
                .max_decoding_message_size(max_recv),
        )
        .add_service(
            AuthServer::new(crate::auth::AuthService::new(shared.clone()))
                .max_decoding_message_size(max_recv),
        );
    let api = crate::api::GatewayApi::new(shared.clone());
    let routes = crate::concurrency::add_routes(routes.routes(), &api, max_recv);
    // etcd serves /metrics and /health on its client port too; curl
    // speaks HTTP/1.1 there, gRPC clients HTTP/2.
    // The HTTP/JSON API (etcd's /v3 paths, the readable /v1) shares
    // the port too, served from the cache like the gRPC services.
    let http_api = crate::http::router(
        api,
        crate::http::HttpConfig {
            max_request_bytes: shared.config.max_request_bytes,
            access: shared.config.http_access.clone(),
            ..Default::default()
        },
        shared.metrics.http.clone(),
        shared.shutdown.clone(),
    );
    let router = crate::http::with_fallback(
        routes
            .into_axum_router()
            .merge(crate::http::ops::router(shared.clone()))
            .merge(http_api),
    );
    router.layer(crate::telemetry::GrpcMetricsLayer(shared.grpc.clone()))
}

/// Serves `router` on `listener` (TLS when `tls` is set) until `stop`
/// resolves.
fn serve_clients(
    shared: &Arc<Shared>,
    listener: TcpListener,
    tls: Option<&Arc<lookout_consensus::tls::ReloadingTls>>,
    router: axum::Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let limits = shared.config.listener;
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(Some(shared.config.max_concurrent_streams))
        .http2_max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .trace_fn(|req| tracing::info_span!("grpc", method = %req.uri().path()))
        .add_routes(tonic::service::Routes::from(router));
    // Every connection holds a --max-connections permit from accept
    // (before TLS) until it closes, and must send its first request
    // head in time (`listener.rs`).
    let lm = shared.metrics.listener.clone();
    let gate = crate::listener::ConnGate::new(limits.max_connections, lm.clone());
    let admitted = crate::listener::admitted(listener, gate);
    match tls {
        Some(t) => {
            let incoming = t
                .handshakes(admitted, limits.tls_handshake_timeout)
                .map(move |r| {
                    r.map(|s| crate::listener::FirstRequest::new(s, &limits, lm.clone()))
                });
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop))
        }
        None => {
            let incoming = admitted.map(move |(s, _)| {
                Ok::<_, std::io::Error>(crate::listener::FirstRequest::new(s, &limits, lm.clone()))
            });
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop))
        }
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a gateway on `listener` until `shutdown` resolves (see
/// [`Gateway::run`]).
///
/// # Errors
/// As [`Gateway::start`] and [`Gateway::run`].
pub async fn run_gateway(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    Gateway::start(config, listener).await?.run(shutdown).await
}

/// "http://host:port", "https://host:port", "host:port" -> "host:port".
pub(crate) fn host_port(s: &str, what: &'static str) -> Result<String, GatewayError> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s)
        .trim_end_matches('/');
    if rest.contains("://") || rest.contains('/') || !rest.contains(':') {
        return Err(GatewayError::BadFlag {
            what,
            value: s.to_string(),
            hint: "use host:port or http://host:port",
        });
    }
    Ok(rest.replacen("localhost:", "127.0.0.1:", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_etcd_spellings() {
        assert_eq!(
            host_port("http://localhost:6633", "x").unwrap(),
            "127.0.0.1:6633"
        );
        assert_eq!(host_port("127.0.0.1:1/", "x").unwrap(), "127.0.0.1:1");
        assert_eq!(host_port("https://a:1", "x").unwrap(), "a:1");
        assert!(host_port("nohost", "x").is_err());
    }
}
