//! `lookout store`: one store member (etcd's flag names), serving the
//! etcd API on its client URLs and the peer protocol on its peer URLs.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lookout_consensus::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS};
use lookout_consensus::{Store, StoreConfig};
use tokio_util::sync::CancellationToken;

use super::{CommandError, bind_all, listen_addr, parse_duration, shutdown_signal};

/// `lookout store` flags, named as etcd names them.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: `<name>.etcd`, as etcd).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "http://localhost:2379")]
    pub listen_client_urls: Vec<String>,
    /// Client URLs to advertise (default: the listen URLs).
    #[arg(long, value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// Peer URLs this member advertises (its member ID derives from them).
    #[arg(long, value_delimiter = ',', default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: Vec<String>,
    /// URLs to listen on for peer (raft) traffic (default: the advertised
    /// peer URLs).
    #[arg(long, value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,
    /// Initial cluster, `name=peer-url,...` (default: this member alone).
    #[arg(long, default_value = "")]
    pub initial_cluster: String,
    /// `new` to bootstrap a cluster, `existing` to join one (after
    /// `etcdctl member add`).
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Token that makes member and cluster IDs unique to this cluster.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Raft election timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Applied entries between snapshots (the raft log is purged behind
    /// each one).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for slow followers.
    #[arg(
        long = "experimental-snapshot-catchup-entries",
        default_value_t = 5_000
    )]
    pub snapshot_catchup_entries: u64,
    /// `periodic` (retention is a duration such as 1h or a number of
    /// hours) or `revision` (retention is a number of revisions).
    #[arg(long, default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,
    /// Auto-compaction retention; 0 disables auto-compaction.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Backend size that raises the NOSPACE alarm (0 = 2 GiB, negative =
    /// no quota).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// Largest client request the store accepts, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Most operations in one txn branch.
    #[arg(long, default_value_t = DEFAULT_MAX_TXN_OPS)]
    pub max_txn_ops: usize,
    /// Serve the streamed append rpc to leaders (`=false` answers it
    /// Unimplemented like a member from before it; leaders then send one
    /// unary call per append).
    #[arg(
        long = "experimental-peer-append-stream",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub peer_append_stream: bool,
    /// Interval of watch progress notifications.
    #[arg(long = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = parse_duration)]
    pub progress_notify_interval: Duration,
    /// TLS on the client URLs (etcd's client-side flags).
    #[command(flatten)]
    pub tls: crate::ClientTlsArgs,
    /// Peer TLS certificate (PEM), also this member's client identity
    /// towards the other members.
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS key (PEM).
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// CA that signs the members' peer certificates.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse members without a peer certificate signed by
    /// --peer-trusted-ca-file.
    #[arg(long)]
    pub peer_client_cert_auth: bool,
    /// Auth token kind and options: `simple`, or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m` (etcd's).
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Lifetime of a simple token after its last use, in seconds.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of password hashes (4 to 31).
    #[arg(long, default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// HTTP API: origins allowed by CORS, comma separated (`*`: any).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub cors: Vec<String>,
    /// HTTP API over plain HTTP: accepted Host names (`*`: any), against
    /// DNS rebinding.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub host_whitelist: Vec<String>,
    /// `basic`, or `extensive` for per-method gRPC latency histograms
    /// (`grpc_server_handling_seconds`), as etcd's `--metrics`.
    #[arg(long, value_enum, default_value = "basic")]
    pub metrics: crate::telemetry::MetricsLevel,
}

/// Runs `lookout store` until SIGTERM/Ctrl-C.
///
/// # Errors
/// Bad flags, an unusable data dir, or a listener that cannot bind.
pub async fn run_store(a: StoreArgs) -> Result<(), CommandError> {
    run_store_until(a, shutdown_signal()).await
}

/// Runs `lookout store` until `shutdown` resolves (a test's own stop
/// instead of a signal); an `Err` from it ends the run with that error.
///
/// # Errors
/// As [`run_store`].
pub async fn run_store_until(
    a: StoreArgs,
    shutdown: impl Future<Output = Result<(), CommandError>> + Send,
) -> Result<(), CommandError> {
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", a.name)));
    let addrs = a
        .listen_client_urls
        .iter()
        .map(|u| listen_addr(u))
        .collect::<Result<Vec<_>, _>>()?;
    let advertise = if a.advertise_client_urls.is_empty() {
        a.listen_client_urls.clone()
    } else {
        a.advertise_client_urls.clone()
    };
    let listen_peer = if a.listen_peer_urls.is_empty() {
        a.initial_advertise_peer_urls.clone()
    } else {
        a.listen_peer_urls.clone()
    };
    // A lone member needs no peer listener; a cluster member does.
    let peer_addrs = if a.initial_cluster.is_empty() && a.initial_cluster_state == "new" {
        if a.listen_peer_urls.is_empty() {
            Vec::new()
        } else {
            listen_peer
                .iter()
                .map(|u| listen_addr(u))
                .collect::<Result<_, _>>()?
        }
    } else {
        listen_peer
            .iter()
            .map(|u| listen_addr(u))
            .collect::<Result<_, _>>()?
    };
    let mut cfg = StoreConfig::new(data_dir);
    cfg.name = a.name;
    cfg.client_urls = advertise;
    cfg.peer_urls = a.initial_advertise_peer_urls;
    cfg.max_request_bytes = a.max_request_bytes;
    cfg.max_txn_ops = a.max_txn_ops;
    cfg.progress_notify_interval = a.progress_notify_interval;
    cfg.initial_cluster = lookout_consensus::cluster::parse_initial_cluster(&a.initial_cluster)?;
    cfg.initial_cluster_new = a.initial_cluster_state == "new";
    cfg.cluster_token = a.initial_cluster_token;
    cfg.heartbeat_interval = Duration::from_millis(a.heartbeat_interval);
    cfg.election_timeout = Duration::from_millis(a.election_timeout);
    if a.election_timeout < 5 * a.heartbeat_interval {
        return Err(CommandError::BadFlag(
            "--election-timeout must be at least 5 times --heartbeat-interval".into(),
        ));
    }
    // etcd: the minimum lease TTL follows the election timeout.
    cfg.min_lease_ttl = ((a.election_timeout as i64 * 3 + 1999) / 2000).max(1);
    cfg.snapshot_count = a.snapshot_count;
    cfg.snapshot_catchup_entries = a.snapshot_catchup_entries;
    cfg.serve_append_stream = a.peer_append_stream;
    cfg.quota_backend_bytes = match a.quota_backend_bytes {
        0 => lookout_consensus::config::DEFAULT_QUOTA_BYTES,
        n if n < 0 => u64::MAX,
        n => n as u64,
    };
    cfg.auto_compaction =
        parse_auto_compaction(&a.auto_compaction_mode, &a.auto_compaction_retention)?;
    let client_tls = a.tls.files()?;
    let access = crate::http::Access {
        cors: a.cors.clone(),
        host_whitelist: a.host_whitelist.clone(),
    };
    cfg.auth = lookout_consensus::auth::AuthConfig {
        token: lookout_consensus::auth::parse_auth_token(&a.auth_token)
            .map_err(|e| CommandError::BadFlag(format!("--auth-token: {e}")))?,
        simple_ttl: Duration::from_secs(a.auth_token_ttl),
        bcrypt_cost: a.bcrypt_cost,
        client_cert_auth: a.tls.client_cert_auth,
        gateway_token: None,
    };
    cfg.peer_tls = lookout_consensus::tls::TlsFiles::from_flags(
        a.peer_cert_file.as_deref(),
        a.peer_key_file.as_deref(),
        a.peer_trusted_ca_file.as_deref(),
        a.peer_client_cert_auth,
        [
            "--peer-cert-file",
            "--peer-key-file",
            "--peer-trusted-ca-file",
            "--peer-client-cert-auth",
        ],
    )?
    .map(|f| lookout_consensus::tls::TlsFiles {
        reload_interval: a.tls.tls_reload_interval,
        ..f
    });
    serve_member(
        cfg,
        client_tls,
        access,
        &addrs,
        &peer_addrs,
        a.metrics,
        shutdown,
    )
    .await
}

/// etcd's `--auto-compaction-mode` / `--auto-compaction-retention`: a
/// periodic retention without a unit is in hours; 0 disables.
pub fn parse_auto_compaction(
    mode: &str,
    retention: &str,
) -> Result<Option<lookout_consensus::config::AutoCompaction>, CommandError> {
    use lookout_consensus::config::AutoCompaction;
    let bad = || CommandError::BadFlag(format!("--auto-compaction-retention {retention:?}"));
    if retention.trim() == "0" || retention.is_empty() {
        return Ok(None);
    }
    match mode {
        "revision" => {
            let n: i64 = retention.parse().map_err(|_| bad())?;
            Ok((n > 0).then_some(AutoCompaction::Revision(n)))
        }
        _ => {
            let d = match retention.parse::<u64>() {
                Ok(h) => Duration::from_secs(h * 3600),
                Err(_) => parse_duration(retention).map_err(|_| bad())?,
            };
            Ok(Some(AutoCompaction::Periodic(d)))
        }
    }
}

/// Serves one store member: the etcd API on `addrs`, the peer protocol
/// on `peer_addrs`, until `shutdown` resolves.
async fn serve_member(
    cfg: StoreConfig,
    client_tls: Option<lookout_consensus::tls::TlsFiles>,
    access: crate::http::Access,
    addrs: &[String],
    peer_addrs: &[String],
    level: crate::telemetry::MetricsLevel,
    shutdown: impl Future<Output = Result<(), CommandError>> + Send,
) -> Result<(), CommandError> {
    use lookout_consensus::tls::ReloadingTls;
    let listeners = bind_all(addrs).await?;
    let peer_listeners = bind_all(peer_addrs).await?;
    // Loaded before anything serves: bad files stop the start here.
    let client_tls = client_tls
        .map(|f| ReloadingTls::new(f, "client"))
        .transpose()?;
    let peer_tls = cfg
        .peer_tls
        .clone()
        .map(|f| ReloadingTls::new(f, "peer"))
        .transpose()?;
    let store = Store::start(cfg).await?;
    let stop = CancellationToken::new();
    // Any early return stops the servers too, as dropping a stop sender did.
    let _stop_on_return = stop.clone().drop_guard();
    let mut servers = tokio::task::JoinSet::new();
    for l in peer_listeners {
        let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(addr = %local, "serving peer protocol");
        let stopped = stop.clone().cancelled_owned();
        let store = store.clone();
        let tls = peer_tls.clone();
        servers
            .spawn(async move { lookout_consensus::serve_peer_tls(l, tls, store, stopped).await });
    }
    let http_metrics = std::sync::Arc::new(crate::http::HttpMetrics::default());
    let grpc_metrics = std::sync::Arc::new(crate::telemetry::GrpcMetrics::new(level));
    for l in listeners {
        let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(addr = %local, member = %format!("{:x}", store.member_id()), "serving etcd v3 gRPC and HTTP/JSON");
        let stopped = stop.clone().cancelled_owned();
        let store = store.clone();
        let http = crate::http::HttpConfig {
            max_request_bytes: store.config().max_request_bytes,
            access: access.clone(),
            ..Default::default()
        };
        let metrics = http_metrics.clone();
        let grpc = grpc_metrics.clone();
        let tls = client_tls.clone();
        // gRPC and the HTTP/JSON API (curl) share the client port.
        servers.spawn(async move {
            crate::http::serve_store_tls(l, tls, store, http, metrics, grpc, stopped).await
        });
    }
    tokio::select! {
        r = shutdown => {
            r?;
            tracing::info!("shutting down");
        }
        Some(r) = servers.join_next() => {
            // A server ended on its own: that is an error worth reporting.
            stop.cancel();
            let closing = store.clone();
            let _ = tokio::task::spawn_blocking(move || closing.close()).await;
            return match r {
                Ok(res) => res.map_err(CommandError::from),
                Err(e) => Err(CommandError::Signal(std::io::Error::other(e))),
            };
        }
    }
    stop.cancel();
    // Bounded drain: long-lived watch streams would otherwise hold the
    // servers open forever.
    let drain = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("open streams did not finish in 5s; closing anyway");
        servers.abort_all();
    }
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(|e| CommandError::Signal(std::io::Error::other(e)))?;
    tracing::info!("stopped");
    Ok(())
}
