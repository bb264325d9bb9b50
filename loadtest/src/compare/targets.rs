//! The systems a comparison runs against, each started fresh per matrix cell
//! on loopback ephemeral ports with temp data dirs, and killed (by PID, via
//! the testkit guards) when dropped.

use std::path::{Path, PathBuf};

use lookout_testkit::{EtcdServer, ExtraGateway, GrpcProxy, LookoutStack};

use crate::watch::http::HttpApi;

/// Which system.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A real etcd 3.4, clients talk to it directly.
    Etcd,
    /// `etcd grpc-proxy start` in front of a real etcd.
    GrpcProxy,
    /// `lookout gateway` in front of `lookout store`.
    Lookout,
}

impl TargetKind {
    pub fn label(self) -> &'static str {
        match self {
            TargetKind::Etcd => "etcd",
            TargetKind::GrpcProxy => "grpc-proxy",
            TargetKind::Lookout => "lookout",
        }
    }

    /// One line on what the target is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            TargetKind::Etcd => "etcd 3.4 (Debian package), clients connect directly",
            TargetKind::GrpcProxy => {
                "`etcd grpc-proxy start` in front of a separate etcd 3.4; clients connect to the proxy"
            }
            TargetKind::Lookout => {
                "`lookout gateway` in front of a one-node `lookout store`; clients connect to the gateway"
            }
        }
    }
}

/// A started target. Fields drop in order: front ends before the store.
/// With `alt`, a second front end on the same store is started too.
#[derive(Debug)]
pub struct Running {
    pub kind: TargetKind,
    /// What clients connect to.
    pub endpoint: String,
    /// The store behind it (the checker's truth).
    pub truth_endpoint: String,
    /// HTTP watch API and "host:port", when the target serves one.
    pub http: Option<(HttpApi, String)>,
    /// Processes to measure; the first is the front end.
    pub pids: Vec<(String, u32)>,
    /// Prometheus endpoints of the front end (Lookout serves /metrics on
    /// its client port): (label, host:port).
    pub metrics: Vec<(String, String)>,
    /// A second front end on the same store, when asked for (failover
    /// cells): another gateway or proxy; etcd itself for etcd direct.
    pub alt_endpoint: Option<String>,
    _alt_proxy: Option<GrpcProxy>,
    _alt_gateway: Option<ExtraGateway>,
    _proxy: Option<GrpcProxy>,
    _etcd: Option<EtcdServer>,
    _lookout: Option<LookoutStack>,
}

/// How to start targets.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    pub lookout_bin: PathBuf,
}

/// Starts `kind` fresh.
///
/// # Errors
/// Why the target cannot run (missing binary, unsupported flags, or a child
/// that exits or never serves), as text for the report.
pub async fn start(kind: TargetKind, opts: &TargetOptions, alt: bool) -> Result<Running, String> {
    match kind {
        TargetKind::Etcd => {
            let etcd = start_etcd().await?;
            Ok(Running {
                alt_endpoint: alt.then(|| etcd.endpoint.clone()),
                _alt_proxy: None,
                _alt_gateway: None,
                kind,
                endpoint: etcd.endpoint.clone(),
                truth_endpoint: etcd.endpoint.clone(),
                http: Some((HttpApi::Etcd, etcd.endpoint.clone())),
                pids: vec![("etcd".into(), etcd.pid())],
                metrics: Vec::new(),
                _proxy: None,
                _etcd: Some(etcd),
                _lookout: None,
            })
        }
        TargetKind::GrpcProxy => {
            let etcd = start_etcd().await?;
            let proxy = GrpcProxy::try_start(&etcd.endpoint).await?;
            let alt_proxy = if alt {
                Some(GrpcProxy::try_start(&etcd.endpoint).await?)
            } else {
                None
            };
            Ok(Running {
                alt_endpoint: alt_proxy.as_ref().map(|p| p.endpoint.clone()),
                _alt_proxy: alt_proxy,
                _alt_gateway: None,
                kind,
                endpoint: proxy.endpoint.clone(),
                truth_endpoint: etcd.endpoint.clone(),
                // The 3.4 proxy serves gRPC only.
                http: None,
                pids: vec![
                    ("grpc-proxy".into(), proxy.pid()),
                    ("etcd".into(), etcd.pid()),
                ],
                metrics: Vec::new(),
                _proxy: Some(proxy),
                _etcd: Some(etcd),
                _lookout: None,
            })
        }
        TargetKind::Lookout => {
            let stack = LookoutStack::try_start(&opts.lookout_bin).await?;
            let alt_gateway = if alt {
                Some(
                    ExtraGateway::try_start(
                        &opts.lookout_bin,
                        &stack.store_endpoint,
                        stack.dir.path(),
                        &[],
                    )
                    .await?,
                )
            } else {
                None
            };
            Ok(Running {
                alt_endpoint: alt_gateway.as_ref().map(|g| g.endpoint.clone()),
                _alt_proxy: None,
                _alt_gateway: alt_gateway,
                kind,
                endpoint: stack.gateway_endpoint.clone(),
                truth_endpoint: stack.store_endpoint.clone(),
                http: Some((HttpApi::Lookout, stack.gateway_endpoint.clone())),
                pids: vec![
                    ("lookout-gateway".into(), stack.gateway_pid()),
                    ("lookout-store".into(), stack.store_pid()),
                ],
                metrics: vec![("lookout-gateway".into(), stack.gateway_endpoint.clone())],
                _proxy: None,
                _etcd: None,
                _lookout: Some(stack),
            })
        }
    }
}

/// Probes whether `kind` can run at all before the matrix starts.
///
/// # Errors
/// The reason it will be skipped.
pub fn probe(kind: TargetKind, opts: &TargetOptions) -> Result<(), String> {
    match kind {
        TargetKind::Etcd | TargetKind::GrpcProxy => which("etcd").map(|_| ()),
        TargetKind::Lookout => lookout_testkit::lookout_stack::probe(&opts.lookout_bin),
    }
}

/// `EtcdServer::start` panics on failure; run it in a task so a failed
/// start becomes a skip reason instead of ending the comparison.
async fn start_etcd() -> Result<EtcdServer, String> {
    tokio::spawn(EtcdServer::start())
        .await
        .map_err(|e| format!("etcd did not start: {e}"))
}

fn which(bin: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(bin))
                .find(|p| Path::new(p).is_file())
        })
        .ok_or_else(|| format!("`{bin}` is not on PATH (apt-get install etcd-server)"))
}
