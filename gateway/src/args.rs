//! `lookout gateway` flags (clap), named as etcd grpc-proxy names them,
//! turned into a [`GatewayConfig`].

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;

use crate::admission::GateConfig;
use crate::config::GatewayConfig;
use crate::error::GatewayError;

/// `lookout gateway` flags.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Address to serve the etcd v3 API on.
    #[arg(long, default_value = "127.0.0.1:23790")]
    pub listen_addr: String,
    /// The store's client endpoints, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Client URL MemberList advertises (default: `http://` + the listen address).
    #[arg(long)]
    pub advertise_client_url: Option<String>,
    /// Also serve /metrics, /health, /livez and /readyz here (host:port or
    /// http://host:port).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// HTTP API: origins allowed by CORS, comma separated (`*`: any).
    /// None by default: etcd defaults to `*`, which lets any web page a
    /// user visits read the cluster through the user's browser.
    #[arg(long, value_delimiter = ',')]
    pub cors: Vec<String>,
    /// HTTP API over plain HTTP: accepted Host names (`*`: any), against
    /// DNS rebinding.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub host_whitelist: Vec<String>,
    /// `basic`, or `extensive` for per-method gRPC latency histograms
    /// (`grpc_server_handling_seconds`), as etcd's `--metrics`.
    #[arg(long, value_enum, default_value = "basic")]
    pub metrics: crate::telemetry::MetricsLevel,
    /// Cache only keys under this prefix (repeatable; default: all keys).
    #[arg(long = "prefix")]
    pub prefixes: Vec<String>,
    /// History ring bound in events.
    #[arg(long, default_value_t = 100_000)]
    pub history_events: usize,
    /// History ring bound in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    pub history_bytes: usize,
    /// How long a linearizable read waits for the cache before Unavailable.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// How long a write's response waits for the cache to apply it.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub write_wait_timeout: Duration,
    /// Interval of progress notifications to idle `progress_notify` watchers.
    #[arg(long = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = parse_duration)]
    pub progress_notify_interval: Duration,
    /// Largest gRPC message accepted from a client, in bytes (a cap on top
    /// of --max-request-bytes).
    #[arg(long, default_value_t = i32::MAX as usize)]
    pub max_recv_bytes: usize,
    /// Largest client request in bytes (etcd's flag): gRPC messages past
    /// it plus 512 KiB are refused before any work, JSON bodies past twice
    /// it get 413.
    #[arg(long, default_value_t = lookout_consensus::config::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// HTTP/2 streams one client connection may have open at a time
    /// (etcd's flag; etcd's default is unlimited).
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// Watchers one watch stream may hold; past it a create is answered
    /// created + canceled with a reason.
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_WATCHERS_PER_STREAM)]
    pub max_watchers_per_stream: usize,
    /// Open client connections (TLS handshakes included); past it new
    /// connections are closed at once.
    #[arg(long, default_value_t = crate::listener::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Longest a client's TLS handshake may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// Longest from connect (or the TLS handshake) to a complete first
    /// HTTP/1.1 request head or the HTTP/2 preface (slowloris).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_header_timeout: Duration,
    /// Largest HTTP/1.1 request head and HTTP/2 header list, in bytes.
    #[arg(long, default_value_t = crate::listener::DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// How long SIGTERM waits for connections to close.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Register under this prefix (with a lease) and list every registered
    /// gateway in MemberList, as etcd grpc-proxy does. Off by default.
    #[arg(long)]
    pub resolver_prefix: Option<String>,
    /// TTL in seconds of the registration lease.
    #[arg(long, default_value_t = 60)]
    pub resolver_ttl: u64,
    /// Lists (multi-key Ranges) served at once; more wait in a queue.
    #[arg(long, default_value_t = 8)]
    pub max_concurrent_lists: usize,
    /// Lists waiting for their turn; past this they get ResourceExhausted.
    #[arg(long, default_value_t = 4096)]
    pub max_queued_lists: usize,
    /// Watch creates replaying history (catch-ups) handled at once.
    #[arg(long, default_value_t = 64)]
    pub max_concurrent_catchups: usize,
    /// Catch-ups waiting for their turn; past this they are refused.
    #[arg(long, default_value_t = 16384)]
    pub max_queued_catchups: usize,
    /// Initial states (`initial_state` watches) streamed at once; more wait
    /// their turn (each one in flight pins up to a send buffer of pages).
    /// One whose client stops reading stops counting after a second.
    #[arg(long, default_value_t = 8)]
    pub max_concurrent_initial_states: usize,
    /// Longest a queued list or catch-up waits before it is refused.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub storm_queue_timeout: Duration,
    /// Retry hint (`grpc-retry-pushback-ms`) sent with a refusal.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub storm_retry_after: Duration,
    /// TLS on the client listener (etcd's client-side flags).
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Client certificate (PEM) presented to the upstream (grpc-proxy's name).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA that signs the upstream's certificate; with it (or --cert) the
    /// upstream is dialled over TLS.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Roles declared on the gateway, bound to client certificate CNs or
    /// bearer tokens (YAML or TOML; see the README).
    #[arg(long)]
    pub auth_config: Option<PathBuf>,
    /// The gateway's own user at the store, `NAME[:PASSWORD]` (etcdctl's
    /// flag): it lists, watches and reads users and roles as this user,
    /// which needs the root role once auth is on.
    #[arg(long)]
    pub user: Option<String>,
    /// The password of --user (when it is not after a colon there).
    #[arg(long)]
    pub password: Option<String>,
    /// The store's token kind, as its own `--auth-token`: with
    /// `jwt,pub-key=FILE,sign-method=RS256` the gateway verifies JWTs
    /// itself; otherwise it asks the store about each token once.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// A simple token's TTL at the store in seconds (its
    /// `--auth-token-ttl`; a lookout store also tells the gateway).
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// How often the copy of the store's users, roles and permissions is
    /// refreshed (changes made through this gateway hold at once).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub auth_refresh_interval: Duration,
    /// A secondary index, `NAME[@PREFIX]=json:/pointer` or
    /// `NAME[@PREFIX]=key:REGEX` (one capture group); repeatable. Range and
    /// Watch then take `index`/`value` filters (see the README). One per
    /// LOOKOUT_INDEX; several in a --config file as a list.
    #[arg(long = "index", value_parser = parse_index)]
    pub indexes: Vec<lookout_cache::IndexDef>,
}

/// etcd's client-side TLS flags, shared by `lookout gateway` and `lookout
/// store` (and so by their environment variables and config file keys).
#[derive(Debug, Clone, Args)]
pub struct ClientTlsArgs {
    /// TLS certificate (PEM) of the client listener; with it clients
    /// connect over TLS (https:// client URLs).
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// TLS key (PEM) of the client listener.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// CA that signs client certificates.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long)]
    pub client_cert_auth: bool,
    /// How often certificate files are checked for changes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

impl ClientTlsArgs {
    /// The client listener's TLS files, if any were given.
    ///
    /// # Errors
    /// Half-given flags (a certificate without its key, client
    /// authentication without a CA, ...).
    pub fn files(
        &self,
    ) -> Result<Option<lookout_consensus::tls::TlsFiles>, lookout_consensus::tls::TlsError> {
        Ok(lookout_consensus::tls::TlsFiles::from_flags(
            self.cert_file.as_deref(),
            self.key_file.as_deref(),
            self.trusted_ca_file.as_deref(),
            self.client_cert_auth,
            [
                "--cert-file",
                "--key-file",
                "--trusted-ca-file",
                "--client-cert-auth",
            ],
        )?
        .map(|f| lookout_consensus::tls::TlsFiles {
            reload_interval: self.tls_reload_interval,
            ..f
        }))
    }
}

impl GatewayArgs {
    /// The configuration these flags describe, with the TLS flags checked.
    ///
    /// # Errors
    /// [`GatewayError::Tls`] for half-given TLS flags.
    pub fn to_checked_config(&self) -> Result<GatewayConfig, GatewayError> {
        let mut c = self.to_config();
        c.tls = self.tls.files()?;
        if self.cert.is_some() != self.key.is_some() {
            return Err(GatewayError::BadFlag {
                what: "flags",
                value: "--cert/--key".into(),
                hint: "--cert and --key go together",
            });
        }
        if self.cacert.is_some() || self.cert.is_some() {
            c.upstream.tls = Some(lookout_cache::UpstreamTls {
                cacert: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            });
        }
        c.auth_config = self.auth_config.clone();
        c.upstream.credentials = match (&self.user, &self.password) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(GatewayError::BadFlag {
                    what: "flags",
                    value: "--password".into(),
                    hint: "--password goes with --user",
                });
            }
            (Some(u), p) => {
                let (user, inline) = match u.split_once(':') {
                    Some((user, pw)) => (user.to_string(), Some(pw.to_string())),
                    None => (u.clone(), None),
                };
                let password = p.clone().or(inline).ok_or(GatewayError::BadFlag {
                    what: "--user",
                    value: user.clone(),
                    hint: "give the password as NAME:PASSWORD or with --password",
                })?;
                Some(lookout_cache::UpstreamCredentials::Password { user, password })
            }
        };
        c.auth_jwt = match lookout_consensus::auth::parse_auth_token(&self.auth_token) {
            Ok(lookout_consensus::auth::TokenKind::Jwt(j)) => Some(*j),
            Ok(lookout_consensus::auth::TokenKind::Simple) => None,
            Err(e) => {
                return Err(GatewayError::BadFlag {
                    what: "--auth-token",
                    value: e,
                    hint: "simple, or jwt,pub-key=FILE,sign-method=RS256 as the store's",
                });
            }
        };
        c.cache.indexes = lookout_cache::IndexSet::new(self.indexes.clone()).map_err(|e| {
            GatewayError::BadFlag {
                what: "--index",
                value: e.to_string(),
                hint: "give each index its own name",
            }
        })?;
        Ok(c)
    }

    /// The configuration these flags describe (without TLS).
    pub fn to_config(&self) -> GatewayConfig {
        let mut c = GatewayConfig::new(self.endpoints.iter().cloned());
        c.advertise_client_url = self.advertise_client_url.clone();
        c.metrics_addr = self.metrics_addr.clone();
        c.http_access = crate::http::Access {
            cors: self.cors.clone(),
            host_whitelist: self.host_whitelist.clone(),
        };
        c.metrics = self.metrics;
        c.prefixes = self
            .prefixes
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        c.cache.history_events = self.history_events;
        c.cache.history_bytes = self.history_bytes;
        c.cache.progress_notify_interval = self.progress_notify_interval;
        c.cache.indexes = first_of_each_name(&self.indexes);
        c.cache.max_concurrent_initial = self.max_concurrent_initial_states;
        c.read_timeout = self.read_timeout;
        c.write_wait_timeout = self.write_wait_timeout;
        c.max_recv_bytes = self.max_recv_bytes;
        c.max_request_bytes = self.max_request_bytes;
        c.max_concurrent_streams = self.max_concurrent_streams.max(1);
        c.max_watchers_per_stream = self.max_watchers_per_stream.max(1);
        c.listener = crate::listener::ListenerLimits {
            max_connections: self.max_connections.max(1),
            tls_handshake_timeout: self.tls_handshake_timeout,
            request_header_timeout: self.request_header_timeout,
            max_header_bytes: self.max_header_bytes.max(1024),
        };
        c.shutdown_timeout = self.shutdown_timeout;
        c.resolver_prefix = self.resolver_prefix.clone().filter(|p| !p.is_empty());
        c.resolver_ttl = Duration::from_secs(self.resolver_ttl.max(1));
        c.auth_token_ttl = Duration::from_secs(self.auth_token_ttl.max(1));
        c.auth_refresh_interval = self.auth_refresh_interval.max(Duration::from_millis(10));
        c.lists = GateConfig {
            permits: self.max_concurrent_lists,
            queue: self.max_queued_lists,
            max_wait: self.storm_queue_timeout,
            retry_after: self.storm_retry_after,
        };
        c.catchups = GateConfig {
            permits: self.max_concurrent_catchups,
            queue: self.max_queued_catchups,
            max_wait: self.storm_queue_timeout,
            retry_after: self.storm_retry_after,
        };
        c
    }

    /// `--listen-addr` as a socket address string (`localhost` -> 127.0.0.1).
    ///
    /// # Errors
    /// [`GatewayError::BadFlag`] for anything but host:port.
    pub fn listen(&self) -> Result<String, GatewayError> {
        crate::server::host_port(&self.listen_addr, "--listen-addr")
    }
}

/// `--index` values (checked when the flags are parsed).
///
/// # Errors
/// The declaration's problem, as clap shows it.
pub fn parse_index(s: &str) -> Result<lookout_cache::IndexDef, lookout_cache::IndexSpecError> {
    lookout_cache::IndexDef::parse(s)
}

/// The indexes, a repeated name keeping its first declaration (the checked
/// configuration refuses repeats instead).
fn first_of_each_name(defs: &[lookout_cache::IndexDef]) -> lookout_cache::IndexSet {
    let mut kept: Vec<lookout_cache::IndexDef> = Vec::new();
    for d in defs {
        if !kept.iter().any(|k| k.name() == d.name()) {
            kept.push(d.clone());
        }
    }
    lookout_cache::IndexSet::new(kept).expect("names are unique")
}

/// Parses Go-style durations as etcd's flags take them ("10m", "500ms").
///
/// # Errors
/// [`GatewayError::BadFlag`] for anything else.
pub fn parse_duration(s: &str) -> Result<Duration, GatewayError> {
    let bad = || GatewayError::BadFlag {
        what: "duration",
        value: s.to_string(),
        hint: "use e.g. 500ms, 10s, 10m, 1h",
    };
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        gw: GatewayArgs,
    }

    #[test]
    fn flags_use_grpc_proxy_names() {
        let c = Cli::try_parse_from([
            "x",
            "--listen-addr",
            "127.0.0.1:0",
            "--endpoints",
            "a:1,b:2",
            "--prefix",
            "/cilium/",
            "--prefix",
            "/calico/",
            "--metrics-addr",
            "http://127.0.0.1:6633",
            "--read-timeout",
            "250ms",
        ])
        .unwrap();
        let cfg = c.gw.to_config();
        assert_eq!(cfg.upstream.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(cfg.prefixes.len(), 2);
        assert_eq!(cfg.read_timeout, Duration::from_millis(250));
        assert_eq!(cfg.metrics_addr.as_deref(), Some("http://127.0.0.1:6633"));
        assert_eq!(c.gw.listen().unwrap(), "127.0.0.1:0");
        assert!(parse_duration("10").is_err());
        let c = Cli::try_parse_from([
            "x",
            "--index",
            "node=json:/spec/nodeName",
            "--index",
            "ns@/registry/pods/=key:^/registry/pods/([^/]+)/",
        ])
        .unwrap();
        let set = c.gw.to_checked_config().unwrap().cache.indexes;
        assert_eq!(set.names(), "known: node, ns");
        assert!(Cli::try_parse_from(["x", "--index", "node=yaml:/x"]).is_err());
        let dup =
            Cli::try_parse_from(["x", "--index", "a=json:/x", "--index", "a=json:/y"]).unwrap();
        assert!(dup.gw.to_checked_config().is_err());
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
    }
}
