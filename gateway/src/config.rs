//! [`GatewayConfig`]: everything `run_gateway` needs, independent of how it
//! was spelled on the command line.

use std::time::Duration;

use bytes::Bytes;
use lookout_cache::{CacheConfig, EtcdUpstreamConfig, KeyRange};

use crate::admission::GateConfig;

/// How one gateway runs. `GatewayConfig::new(endpoints)` gives the defaults
/// `lookout gateway` uses.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The store's client endpoints (`host:port` or `http://host:port`).
    pub upstream: EtcdUpstreamConfig,
    /// Cache tuning: history ring bounds, queue budgets, key ranges
    /// (`ranges` is set from [`GatewayConfig::prefixes`]).
    pub cache: CacheConfig,
    /// Prefixes to cache; empty caches every key. Requests outside them are
    /// forwarded (reads) or refused (watches).
    pub prefixes: Vec<Bytes>,
    /// The URL MemberList advertises for this gateway (default: `http://`
    /// plus the bound listen address).
    pub advertise_client_url: Option<String>,
    /// Where to serve `/metrics` and `/health` besides the client port.
    pub metrics_addr: Option<String>,
    /// `--cors` and `--host-whitelist` of the HTTP API.
    pub http_access: crate::http::Access,
    /// Longest a linearizable read waits for the cache to reach the store's
    /// revision before answering Unavailable.
    pub read_timeout: Duration,
    /// Longest a write's response waits for the cache to apply it (the
    /// write has happened either way; past this the response goes out and
    /// a counter records it).
    pub write_wait_timeout: Duration,
    /// Longest SIGTERM/Ctrl-C waits for connections to finish.
    pub shutdown_timeout: Duration,
    /// Largest request message accepted from a client (etcd grpc-proxy's
    /// `--max-recv-bytes`): a cap on top of `max_request_bytes`.
    pub max_recv_bytes: usize,
    /// etcd's `--max-request-bytes`: gRPC messages are decoded up to this
    /// plus etcd's 512 KiB of framing room (past it: refused before any
    /// work), so a request the store would refuse gets the store's own
    /// error; JSON bodies up to twice this (base64).
    pub max_request_bytes: usize,
    /// etcd's `--max-concurrent-streams`: HTTP/2 streams one connection may
    /// have open (clients wait for a free one; extra ones are refused).
    pub max_concurrent_streams: u32,
    /// Watchers one watch stream may hold (gRPC and HTTP); a create past
    /// it is answered created + canceled with a reason, and the stream
    /// stays usable.
    pub max_watchers_per_stream: usize,
    /// Connections, TLS handshake and first-request deadlines, header bytes.
    pub listener: crate::listener::ListenerLimits,
    /// Register this gateway under `<prefix>/<advertise url>` with a lease
    /// and list every registered gateway in MemberList (etcd grpc-proxy's
    /// `--resolver-prefix`; off by default so a gateway never writes into
    /// the user's keyspace unasked).
    pub resolver_prefix: Option<String>,
    /// TTL of the registration lease (`--resolver-ttl`).
    pub resolver_ttl: Duration,
    /// Storm control for lists (Ranges over more than one key).
    pub lists: GateConfig,
    /// Storm control for watch creates that replay history.
    pub catchups: GateConfig,
    /// TLS on the client listener (`--cert-file`, `--key-file`,
    /// `--trusted-ca-file`, `--client-cert-auth`).
    pub tls: Option<lookout_consensus::tls::TlsFiles>,
    /// `--auth-config`: roles declared on the gateway and the certificate
    /// names and tokens bound to them (see `auth/config.rs`).
    pub auth_config: Option<std::path::PathBuf>,
    /// `--auth-token`: with a JWT key, the gateway verifies the store's
    /// JWTs itself (`None`: it asks the store about each token once).
    pub auth_jwt: Option<lookout_consensus::auth::JwtConfig>,
    /// `--auth-token-ttl`: a simple token's TTL at the store, as far as the
    /// gateway knows before the store tells it (etcd never does).
    pub auth_token_ttl: Duration,
    /// `--auth-refresh-interval`: how often the copy of the store's users
    /// and roles is refreshed.
    pub auth_refresh_interval: Duration,
    /// etcd's `--metrics`: `extensive` adds `grpc_server_handling_seconds`.
    pub metrics: crate::telemetry::MetricsLevel,
    /// More families for `/metrics` (`lookout dev` adds its store's).
    pub extra_metrics: Option<crate::telemetry::ExtraMetrics>,
}

/// Default `--max-concurrent-streams`. etcd's is unlimited (2^32 - 1);
/// a bound keeps one connection from holding unbounded memory, and etcd
/// clients queue streams past it rather than fail.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 10_000;
/// Default `--max-watchers-per-stream` (~250 B each: 25 MB per stream).
pub const DEFAULT_MAX_WATCHERS_PER_STREAM: usize = 100_000;

impl GatewayConfig {
    /// The largest gRPC message decoded from a client.
    pub(crate) fn max_decoding_bytes(&self) -> usize {
        self.max_request_bytes
            .saturating_add(lookout_consensus::config::GRPC_OVERHEAD_BYTES)
            .min(self.max_recv_bytes)
    }

    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            upstream: EtcdUpstreamConfig::new(endpoints),
            cache: CacheConfig::default(),
            prefixes: Vec::new(),
            advertise_client_url: None,
            metrics_addr: None,
            http_access: Default::default(),
            read_timeout: Duration::from_secs(5),
            write_wait_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            max_recv_bytes: i32::MAX as usize,
            max_request_bytes: lookout_consensus::config::DEFAULT_MAX_REQUEST_BYTES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_watchers_per_stream: DEFAULT_MAX_WATCHERS_PER_STREAM,
            listener: Default::default(),
            resolver_prefix: None,
            resolver_ttl: Duration::from_secs(60),
            lists: GateConfig {
                permits: 8,
                queue: 4096,
                max_wait: Duration::from_secs(10),
                retry_after: Duration::from_secs(1),
            },
            catchups: GateConfig {
                permits: 64,
                queue: 16384,
                max_wait: Duration::from_secs(10),
                retry_after: Duration::from_secs(1),
            },
            tls: None,
            auth_config: None,
            auth_jwt: None,
            auth_token_ttl: lookout_consensus::auth::DEFAULT_TTL,
            auth_refresh_interval: Duration::from_millis(500),
            metrics: Default::default(),
            extra_metrics: None,
        }
    }

    /// How the gateway learns and checks identities.
    pub(crate) fn auth_settings(&self) -> crate::auth::AuthSettings {
        crate::auth::AuthSettings {
            config: self.auth_config.clone(),
            jwt: self.auth_jwt.clone(),
            token_ttl: self.auth_token_ttl,
            refresh_interval: self.auth_refresh_interval,
            cert_users: self.tls.as_ref().is_some_and(|t| t.client_cert_auth),
        }
    }

    /// The cache configuration with the key ranges from `prefixes`.
    pub(crate) fn cache_config(&self, member_id: u64) -> CacheConfig {
        let mut c = self.cache.clone();
        c.ranges = if self.prefixes.is_empty() {
            vec![KeyRange::all()]
        } else {
            self.prefixes
                .iter()
                .cloned()
                .map(KeyRange::prefix)
                .collect()
        };
        c.member_id = Some(member_id);
        c
    }
}

/// A member ID for this gateway: FNV-1a of its advertised URL, so the same
/// gateway keeps its ID across restarts and two gateways differ. Never 0
/// (etcd treats 0 as "no member").
pub(crate) fn member_id(advertise_url: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in advertise_url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_stable_and_distinct() {
        assert_eq!(
            member_id("http://127.0.0.1:23790"),
            member_id("http://127.0.0.1:23790")
        );
        assert_ne!(
            member_id("http://127.0.0.1:23790"),
            member_id("http://127.0.0.1:23791")
        );
        assert_ne!(member_id(""), 0);
    }

    #[test]
    fn prefixes_become_cache_ranges() {
        let mut c = GatewayConfig::new(["127.0.0.1:2379"]);
        assert_eq!(c.cache_config(7).ranges, vec![KeyRange::all()]);
        c.prefixes = vec![Bytes::from_static(b"a/"), Bytes::from_static(b"b/")];
        let cc = c.cache_config(7);
        assert_eq!(cc.ranges[1], KeyRange::prefix(Bytes::from_static(b"b/")));
        assert_eq!(cc.member_id, Some(7));
    }
}
