//! The `lookout` command line: one clap subcommand per mode, each a small
//! function that turns flags into a library configuration and runs it.
//!
//! ```text
//!   lookout store --name n --data-dir d --listen-client-urls ...  -> one store member
//!     (a one-member raft cluster; with --initial-cluster a=http://..,b=..,c=..
//!      and --listen-peer-urls, one member of a 3- or 5-member cluster)
//!   lookout gateway --listen-addr a --endpoints h1:p1,h2:p2        -> watch-cache gateway
//!   lookout dev [--data-dir ./lookout-data]                       -> store on an internal
//!                      loopback port + gateway on 127.0.0.1:2379, one process
//! ```
//!
//! Each mode is a variant of [`Command`]; the gateway's flags and its
//! configuration live in the library (`lookout_gateway::GatewayArgs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lookout_consensus::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS};
use lookout_consensus::{Store, StoreConfig};
use lookout_gateway::{GatewayArgs, GatewayConfig, GatewayError};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why a subcommand stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("store: {0}")]
    Store(#[from] lookout_consensus::Error),
    #[error("bad URL {0:?}: only http://host:port is supported")]
    BadUrl(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("bad duration {0:?} (use e.g. 500ms, 10s, 10m, 1h)")]
    BadDuration(String),
    #[error("gateway: {0}")]
    Gateway(#[from] GatewayError),
    #[error("bad flag: {0}")]
    BadFlag(String),
    #[error("TLS: {0}")]
    Tls(#[from] lookout_consensus::tls::TlsError),
    #[error("config: {0}")]
    Config(#[from] lookout_gateway::config_file::ConfigFileError),
}

#[derive(Debug, Parser)]
#[command(
    name = "lookout",
    version,
    about = "etcd-v3-compatible watch cache and revision store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Config file (YAML, or TOML when it ends in .toml) whose keys are
    /// flag names; precedence: flag > `LOOKOUT_<FLAG>` env > file > default.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: lookout_gateway::telemetry::LogFormat,
    /// Export traces over OTLP/gRPC to this collector (e.g.
    /// http://127.0.0.1:4317); off when unset.
    #[arg(long, global = true)]
    pub otlp_endpoint: Option<String>,
}

// Parsed once at start; boxing the large store flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one store node (etcd's flag names).
    Store(StoreArgs),
    /// Run a watch-cache gateway in front of a store or etcd cluster
    /// (etcd grpc-proxy's flag names).
    Gateway(GatewayArgs),
    /// Run a one-node store and a gateway in front of it on 127.0.0.1:2379,
    /// in one process, for development.
    Dev(DevArgs),
    /// Restore a member's data dir from `etcdctl snapshot save` output.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `lookout snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Check a snapshot file's sha256 and write a new member data dir from
    /// it; start the member with `lookout store --data-dir DIR` and its
    /// (new) `--initial-cluster`.
    Restore(RestoreArgs),
}

/// `lookout snapshot restore` flags.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The file `etcdctl snapshot save` wrote from a `lookout store`.
    pub file: PathBuf,
    /// The member data dir to create (must not exist yet).
    #[arg(long)]
    pub data_dir: PathBuf,
}

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
    pub tls: lookout_gateway::ClientTlsArgs,
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
    pub metrics: lookout_gateway::telemetry::MetricsLevel,
}

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
    #[arg(long = "index", value_parser = lookout_gateway::parse_index)]
    pub indexes: Vec<lookout_cache::IndexDef>,
    /// `basic`, or `extensive` for per-method gRPC latency histograms, as
    /// etcd's `--metrics`. `/metrics` on the client port carries the
    /// gateway's families and the store's `etcd_*` ones.
    #[arg(long, value_enum, default_value = "basic")]
    pub metrics: lookout_gateway::telemetry::MetricsLevel,
}

/// Go-style durations as etcd's flags take them ("10m", "500ms"), the
/// gateway's parser, except that zero is refused: the store's intervals
/// and timeouts must be positive.
///
/// # Errors
/// [`CliError::BadDuration`] for anything else.
pub fn parse_duration(s: &str) -> Result<Duration, CliError> {
    match lookout_gateway::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(CliError::BadDuration(s.to_string())),
    }
}

/// "http://host:port" or "https://host:port" -> "host:port" (localhost
/// means IPv4 loopback).
fn listen_addr(url: &str) -> Result<String, CliError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| CliError::BadUrl(url.to_string()))?;
    let hostport = rest.trim_end_matches('/');
    if !hostport.contains(':') || hostport.contains('/') {
        return Err(CliError::BadUrl(url.to_string()));
    }
    Ok(hostport.replacen("localhost:", "127.0.0.1:", 1))
}

/// Entry point called by `main`.
pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = match lookout_gateway::config_file::prepare(Cli::command(), &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lookout: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::from_arg_matches(&cmd.get_matches_from(&args)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lookout: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Inside the runtime: the OTLP exporter runs on it.
        let _telemetry =
            match lookout_gateway::telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref()) {
                Ok(g) => g,
                Err(e) => return Err(CliError::BadFlag(e)),
            };
        match cli.command {
            Command::Store(a) => run_store(a).await,
            Command::Gateway(a) => run_gateway(a).await,
            Command::Dev(a) => run_dev(a).await,
            Command::Snapshot(SnapshotCommand::Restore(a)) => {
                let r = lookout_consensus::snapshot_stream::restore(&a.file, &a.data_dir)?;
                println!(
                    "restored {} revision records and {} leases at revision {} into {}",
                    r.kv_records,
                    r.leases,
                    r.revision,
                    a.data_dir.display()
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "lookout stopped");
            eprintln!("lookout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() -> Result<(), CliError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CliError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.map_err(CliError::Signal)?,
    }
    Ok(())
}

/// Runs `lookout store` until SIGTERM/Ctrl-C.
///
/// # Errors
/// Bad flags, an unusable data dir, or a listener that cannot bind.
pub async fn run_store(a: StoreArgs) -> Result<(), CliError> {
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
        return Err(CliError::BadFlag(
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
    let access = lookout_gateway::http::Access {
        cors: a.cors.clone(),
        host_whitelist: a.host_whitelist.clone(),
    };
    cfg.auth = lookout_consensus::auth::AuthConfig {
        token: lookout_consensus::auth::parse_auth_token(&a.auth_token)
            .map_err(|e| CliError::BadFlag(format!("--auth-token: {e}")))?,
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
    serve_member(cfg, client_tls, access, &addrs, &peer_addrs, a.metrics).await
}

/// etcd's `--auto-compaction-mode` / `--auto-compaction-retention`: a
/// periodic retention without a unit is in hours; 0 disables.
fn parse_auto_compaction(
    mode: &str,
    retention: &str,
) -> Result<Option<lookout_consensus::config::AutoCompaction>, CliError> {
    use lookout_consensus::config::AutoCompaction;
    let bad = || CliError::BadFlag(format!("--auto-compaction-retention {retention:?}"));
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

/// Runs `lookout gateway` until SIGTERM/Ctrl-C.
///
/// # Errors
/// Bad flags, a listener that cannot bind, or a server failure.
pub async fn run_gateway(a: GatewayArgs) -> Result<(), CliError> {
    let addr = a.listen()?;
    let listener = bind(&addr).await?;
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel();
    let signal = tokio::spawn(async move {
        let r = shutdown_signal().await;
        let _ = signal_tx.send(());
        r
    });
    let result = lookout_gateway::run_gateway(a.to_checked_config()?, listener, async move {
        let _ = signal_rx.await;
    })
    .await;
    signal.abort();
    result.map_err(CliError::from)
}

/// Runs `lookout dev`: a one-node store on an internal loopback port and a
/// gateway in front of it on `--listen-client-urls` (127.0.0.1:2379), so
/// clients get the cache's reads and watches and the store's writes.
///
/// # Errors
/// As [`run_store`] and [`run_gateway`].
pub async fn run_dev(a: DevArgs) -> Result<(), CliError> {
    let addr = listen_addr(&a.listen_client_urls)?;
    let gateway_listener = bind(&addr).await?;
    let store_listener = bind("127.0.0.1:0").await?;
    let store_addr = store_listener
        .local_addr()
        .map_err(|source| CliError::Listen {
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut store_task = tokio::spawn(lookout_consensus::serve(
        store_listener,
        store.clone(),
        stopped(stop_rx.clone()),
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
    gcfg.extra_metrics = Some(lookout_gateway::telemetry::ExtraMetrics(
        std::sync::Arc::new(move |out: &mut String| metered.render_metrics(out)),
    ));
    gcfg.cache.indexes = lookout_cache::IndexSet::new(a.indexes.clone()).map_err(|e| {
        CliError::from(GatewayError::BadFlag {
            what: "--index",
            value: e.to_string(),
            hint: "give each index its own name",
        })
    })?;
    let (gw_stop_tx, gw_stop_rx) = watch::channel(false);
    let mut gateway = tokio::spawn(lookout_gateway::run_gateway(
        gcfg,
        gateway_listener,
        stopped(gw_stop_rx),
    ));

    let early = tokio::select! {
        r = shutdown_signal() => {
            r?;
            None
        }
        r = &mut gateway => Some(r.map_err(|e| CliError::Signal(std::io::Error::other(e)))
            .and_then(|r| r.map_err(CliError::from))),
        r = &mut store_task => Some(r.map_err(|e| CliError::Signal(std::io::Error::other(e)))
            .and_then(|r| r.map_err(CliError::from))),
    };
    tracing::info!("shutting down");
    // The gateway first: its clients' streams end while the store still
    // answers, then the store.
    let _ = gw_stop_tx.send(true);
    if !gateway.is_finished() {
        match tokio::time::timeout(Duration::from_secs(10), &mut gateway).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gateway stopped with an error"),
            Ok(_) => {}
            Err(_) => gateway.abort(),
        }
    }
    let _ = stop_tx.send(true);
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
        .map_err(|e| CliError::Signal(std::io::Error::other(e)))?;
    tracing::info!("stopped");
    match early {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

async fn bind(addr: &str) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Listen {
            addr: addr.to_string(),
            source,
        })
}

async fn bind_all(addrs: &[String]) -> Result<Vec<TcpListener>, CliError> {
    let mut listeners = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| CliError::Listen {
                addr: addr.clone(),
                source,
            })?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Serves one store member: the etcd API on `addrs`, the peer protocol
/// on `peer_addrs`, until SIGTERM/Ctrl-C.
async fn serve_member(
    cfg: StoreConfig,
    client_tls: Option<lookout_consensus::tls::TlsFiles>,
    access: lookout_gateway::http::Access,
    addrs: &[String],
    peer_addrs: &[String],
    level: lookout_gateway::telemetry::MetricsLevel,
) -> Result<(), CliError> {
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for l in peer_listeners {
        let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(addr = %local, "serving peer protocol");
        let mut rx = stop_rx.clone();
        let store = store.clone();
        let tls = peer_tls.clone();
        servers.spawn(async move {
            lookout_consensus::serve_peer_tls(l, tls, store, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        });
    }
    let http_metrics = std::sync::Arc::new(lookout_gateway::http::HttpMetrics::default());
    let grpc_metrics = std::sync::Arc::new(lookout_gateway::telemetry::GrpcMetrics::new(level));
    for l in listeners {
        let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(addr = %local, member = %format!("{:x}", store.member_id()), "serving etcd v3 gRPC and HTTP/JSON");
        let mut rx = stop_rx.clone();
        let store = store.clone();
        let http = lookout_gateway::http::HttpConfig {
            max_request_bytes: store.config().max_request_bytes,
            access: access.clone(),
            ..Default::default()
        };
        let metrics = http_metrics.clone();
        let grpc = grpc_metrics.clone();
        let tls = client_tls.clone();
        // gRPC and the HTTP/JSON API (curl) share the client port.
        servers.spawn(async move {
            lookout_gateway::http::serve_store_tls(l, tls, store, http, metrics, grpc, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        });
    }
    tokio::select! {
        r = shutdown_signal() => {
            r?;
            tracing::info!("shutting down");
        }
        Some(r) = servers.join_next() => {
            // A server ended on its own: that is an error worth reporting.
            let _ = stop_tx.send(true);
            let closing = store.clone();
            let _ = tokio::task::spawn_blocking(move || closing.close()).await;
            return match r {
                Ok(res) => res.map_err(CliError::from),
                Err(e) => Err(CliError::Signal(std::io::Error::other(e))),
            };
        }
    }
    let _ = stop_tx.send(true);
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
        .map_err(|e| CliError::Signal(std::io::Error::other(e)))?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_urls_parse_like_etcd() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10").is_err());
        assert_eq!(
            listen_addr("http://localhost:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert_eq!(listen_addr("http://127.0.0.1:1/").unwrap(), "127.0.0.1:1");
        assert_eq!(listen_addr("https://x:1").unwrap(), "x:1");
        assert!(listen_addr("unix://x:1").is_err());
    }

    #[test]
    fn gateway_subcommand_takes_grpc_proxy_flags() {
        let c = Cli::try_parse_from([
            "lookout",
            "gateway",
            "--listen-addr=127.0.0.1:0",
            "--endpoints=127.0.0.1:1,127.0.0.1:2",
            "--prefix=/a/",
        ])
        .unwrap();
        let Command::Gateway(a) = c.command else {
            panic!("gateway")
        };
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.to_config().prefixes.len(), 1);
        let d = Cli::try_parse_from(["lookout", "dev"]).unwrap();
        let Command::Dev(d) = d.command else {
            panic!("dev")
        };
        assert_eq!(d.listen_client_urls, "http://127.0.0.1:2379");
    }

    #[test]
    fn flags_use_etcd_names_and_defaults() {
        let c =
            Cli::try_parse_from(["lookout", "store", "--name", "n1", "--max-txn-ops=3"]).unwrap();
        let Command::Store(a) = c.command else {
            panic!("store")
        };
        assert_eq!(a.name, "n1");
        assert_eq!(a.max_txn_ops, 3);
        assert_eq!(a.max_request_bytes, 1536 * 1024);
        assert_eq!(a.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(a.heartbeat_interval, 100);
        assert_eq!(a.election_timeout, 1000);
        assert_eq!(a.initial_cluster_state, "new");
        assert!(a.peer_append_stream);
        let c = Cli::try_parse_from([
            "lookout",
            "store",
            "--experimental-peer-append-stream=false",
        ])
        .unwrap();
        let Command::Store(a) = c.command else {
            panic!("store")
        };
        assert!(!a.peer_append_stream);
    }

    #[test]
    fn cluster_flags_parse_like_etcd() {
        let c = Cli::try_parse_from([
            "lookout",
            "store",
            "--name=a",
            "--initial-cluster=a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            "--initial-cluster-state=existing",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--quota-backend-bytes=-1",
        ])
        .unwrap();
        let Command::Store(a) = c.command else {
            panic!("store")
        };
        assert_eq!(a.initial_cluster_state, "existing");
        assert_eq!(a.quota_backend_bytes, -1);
        assert_eq!(
            parse_auto_compaction(&a.auto_compaction_mode, &a.auto_compaction_retention).unwrap(),
            Some(lookout_consensus::config::AutoCompaction::Revision(1000))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "2").unwrap(),
            Some(lookout_consensus::config::AutoCompaction::Periodic(
                Duration::from_secs(7200)
            ))
        );
        assert_eq!(parse_auto_compaction("periodic", "0").unwrap(), None);
        assert!(Cli::try_parse_from(["lookout", "store", "--initial-cluster-state=old"]).is_err());
    }

    #[test]
    fn config_file_values_are_defaults_under_flags() {
        use clap::{CommandFactory, FromArgMatches};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gw.yaml");
        std::fs::write(
            &f,
            "prefix: [/a/, /b/]\nclient-cert-auth: true\ncert-file: c.pem\nkey-file: k.pem\ntrusted-ca-file: ca.pem\nread-timeout: 2s\nlog-format: json\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut args: Vec<std::ffi::OsString> = vec!["lookout".into(), "gateway".into()];
            args.push("--config".into());
            args.push(f.clone().into());
            args.extend(extra.iter().map(Into::into));
            let cmd = lookout_gateway::config_file::prepare(Cli::command(), &args).unwrap();
            Cli::from_arg_matches(&cmd.try_get_matches_from(&args).unwrap()).unwrap()
        };
        let c = parse(&[]);
        assert_eq!(c.log_format, lookout_gateway::telemetry::LogFormat::Json);
        let Command::Gateway(g) = c.command else {
            panic!("gateway")
        };
        assert_eq!(g.prefixes, vec!["/a/", "/b/"]);
        assert!(g.tls.client_cert_auth);
        assert_eq!(g.read_timeout, Duration::from_secs(2));
        assert!(g.to_checked_config().unwrap().tls.is_some());
        let Command::Gateway(g) = parse(&["--read-timeout=3s", "--prefix=/c/"]).command else {
            panic!("gateway")
        };
        assert_eq!(g.read_timeout, Duration::from_secs(3));
        assert_eq!(g.prefixes, vec!["/c/"]);
    }

    #[test]
    fn indexes_come_from_flags_files_and_the_environment() {
        use clap::{CommandFactory, FromArgMatches};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gw.yaml");
        std::fs::write(
            &f,
            "index:\n  - node@/calico/=json:/spec/nodeName\n  - 'ns=key:^/registry/pods/([^/]+)/'\n",
        )
        .unwrap();
        let args: Vec<std::ffi::OsString> = vec![
            "lookout".into(),
            "gateway".into(),
            "--config".into(),
            f.clone().into(),
        ];
        let cmd = lookout_gateway::config_file::prepare(Cli::command(), &args).unwrap();
        let c = Cli::from_arg_matches(&cmd.try_get_matches_from(&args).unwrap()).unwrap();
        let Command::Gateway(g) = c.command else {
            panic!("gateway")
        };
        let set = g.to_checked_config().unwrap().cache.indexes;
        assert_eq!(set.names(), "known: node, ns");
        // A bad declaration in the file is refused when the flags parse.
        std::fs::write(&f, "index: node=xml:/x\n").unwrap();
        let cmd = lookout_gateway::config_file::prepare(Cli::command(), &args).unwrap();
        assert!(cmd.try_get_matches_from(&args).is_err());
        // The environment variable carries one index.
        let cmd = lookout_gateway::config_file::with_env(Cli::command());
        let arg = cmd
            .find_subcommand("gateway")
            .unwrap()
            .get_arguments()
            .find(|a| a.get_long() == Some("index"))
            .unwrap()
            .get_env()
            .map(|e| e.to_string_lossy().into_owned());
        assert_eq!(arg.as_deref(), Some("LOOKOUT_INDEX"));
    }
}
