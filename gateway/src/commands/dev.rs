//! `lookout dev`: a one-node store on an internal loopback port and a
//! gateway in front of it, in one process.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lookout_consensus::{Store, StoreConfig};
use tokio_util::sync::CancellationToken;

use super::{CommandError, bind, listen_addr, shutdown_signal};
use crate::config::GatewayConfig;
use crate::error::GatewayError;

/// `lookout dev` flags.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Path to the data directory.
    #[arg(long, default_value = "lookout-data")]
    pub data_dir: PathBuf,
    /// Client URL to listen on.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Secondary indexes of the gateway, as `lookout gateway --index`.
    #[arg(long = "index", value_parser = crate::parse_index)]
    pub indexes: Vec<lookout_cache::IndexDef>,
    /// `basic`, or `extensive` for per-method gRPC latency histograms, as
    /// etcd's `--metrics`. `/metrics` on the client port carries the
    /// gateway's families and the store's `etcd_*` ones.
    #[arg(long, value_enum, default_value = "basic")]
    pub metrics: crate::telemetry::MetricsLevel,
}

/// Runs `lookout dev`: a one-node store on an internal loopback port and a
/// gateway in front of it on `--listen-client-urls` (127.0.0.1:2379), so
/// clients get the cache's reads and watches and the store's writes.
///
/// # Errors
/// As [`run_store`](super::run_store) and [`run_gateway`](super::run_gateway).
pub async fn run_dev(a: DevArgs) -> Result<(), CommandError> {
    run_dev_until(a, shutdown_signal()).await
}

/// Runs `lookout dev` until `shutdown` resolves (a test's own stop instead
/// of a signal); an `Err` from it ends the run with that error.
///
/// # Errors
/// As [`run_dev`].
pub async fn run_dev_until(
    a: DevArgs,
    shutdown: impl Future<Output = Result<(), CommandError>> + Send,
) -> Result<(), CommandError> {
    let addr = listen_addr(&a.listen_client_urls)?;
    let gateway_listener = bind(&addr).await?;
    let store_listener = bind("127.0.0.1:0").await?;
    let store_addr = store_listener
        .local_addr()
        .map_err(|source| CommandError::Listen {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    let mut cfg = StoreConfig::new(a.data_dir);
    cfg.name = "dev".into();
    cfg.client_urls = vec![format!("http://{store_addr}")];
    // The gateway in this process is root to the store, whatever users a
    // developer adds and whether auth is on: it holds a token the store
    // alone knows, made for this run.
    let gateway_token = lookout_consensus::auth::new_gateway_token();
    cfg.auth.gateway_token = Some(gateway_token.clone());
    let store = Store::open(cfg)?;
    // Store first, gateway second, each stopped on its own; an early
    // return stops both, as dropping their stop senders did.
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let mut store_task = tokio::spawn(lookout_consensus::serve(
        store_listener,
        store.clone(),
        stop.clone().cancelled_owned(),
    ));
    tracing::info!(store = %store_addr, "dev store serving on an internal port");

    let mut gcfg = GatewayConfig::new([store_addr.to_string()]);
    gcfg.upstream.credentials = Some(lookout_cache::UpstreamCredentials::Token(gateway_token));
    gcfg.advertise_client_url = Some(a.listen_client_urls.clone());
    gcfg.shutdown_timeout = Duration::from_secs(5);
    gcfg.metrics = a.metrics;
    // One port, both sets: the store's etcd_* families beside the
    // gateway's (the gRPC families are the gateway's, whose port clients use).
    let metered = store.clone();
    gcfg.extra_metrics = Some(crate::telemetry::ExtraMetrics(std::sync::Arc::new(
        move |out: &mut String| metered.render_metrics(out),
    )));
    gcfg.cache.indexes = lookout_cache::IndexSet::new(a.indexes.clone()).map_err(|e| {
        CommandError::from(GatewayError::BadFlag {
            what: "--index",
            value: e.to_string(),
            hint: "give each index its own name",
        })
    })?;
    let gw_stop = CancellationToken::new();
    let _gw_stop_on_return = gw_stop.clone().drop_guard();
    let mut gateway = tokio::spawn(crate::run_gateway(
        gcfg,
        gateway_listener,
        gw_stop.clone().cancelled_owned(),
    ));

    let early = tokio::select! {
        r = shutdown => {
            r?;
            None
        }
        r = &mut gateway => Some(r.map_err(|e| CommandError::Signal(std::io::Error::other(e)))
            .and_then(|r| r.map_err(CommandError::from))),
        r = &mut store_task => Some(r.map_err(|e| CommandError::Signal(std::io::Error::other(e)))
            .and_then(|r| r.map_err(CommandError::from))),
    };
    tracing::info!("shutting down");
    // The gateway first: its clients' streams end while the store still
    // answers, then the store.
    gw_stop.cancel();
    if !gateway.is_finished() {
        match tokio::time::timeout(Duration::from_secs(10), &mut gateway).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gateway stopped with an error"),
            Ok(_) => {}
            Err(_) => gateway.abort(),
        }
    }
    stop.cancel();
    if !store_task.is_finished()
        && tokio::time::timeout(Duration::from_secs(5), &mut store_task)
            .await
            .is_err()
    {
        tracing::warn!("store streams did not finish in 5s; closing anyway");
        store_task.abort();
    }
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(|e| CommandError::Signal(std::io::Error::other(e)))?;
    tracing::info!("stopped");
    match early {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}
