//! The gateway's one error type, mapped to a `tonic::Status` once, here.

use lookout_cache::CacheError;

/// Everything the gateway itself can fail with. Cache and upstream errors
/// keep their own status (etcd's code and message) through [`CacheError`].
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// A flag value that is not an address, URL or duration we understand.
    #[error("bad {what} {value:?}: {hint}")]
    BadFlag {
        what: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    Http(std::io::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    /// The gateway is stopping; clients should use another endpoint.
    #[error("lookout: gateway is shutting down")]
    ShuttingDown,
    /// The TLS files of a listener are not usable.
    #[error("TLS: {0}")]
    Tls(#[from] lookout_consensus::tls::TlsError),
    /// `--auth-config` could not be loaded.
    #[error("auth config: {0}")]
    Authz(#[from] crate::auth::AuthzError),
    /// A watch on keys this gateway does not cache (its `--prefix` flags).
    #[error("lookout: key range is outside the prefixes this gateway caches")]
    OutOfScope,
    /// An index filter on keys this gateway does not cache.
    #[error("lookout: an index filter needs a key range inside the prefixes this gateway caches")]
    FilterOutOfScope,
    /// An index filter in a Txn the cache cannot answer (writes, or ranges
    /// it forwards): the store would answer unfiltered.
    #[error(
        "lookout: index filters in a Txn are served only in read-only transactions on cached keys without a revision"
    )]
    FilterInTxn,
}

impl From<GatewayError> for tonic::Status {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Cache(c) => c.into(),
            GatewayError::ShuttingDown => tonic::Status::unavailable(e.to_string()),
            GatewayError::OutOfScope
            | GatewayError::FilterOutOfScope
            | GatewayError::FilterInTxn => tonic::Status::invalid_argument(e.to_string()),
            other => {
                // Startup failures never reach a client; keep a sane code anyway.
                tonic::Status::internal(other.to_string())
            }
        }
    }
}
