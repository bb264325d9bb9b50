//! The crate's one error type, for what a caller outside a test may want to
//! recover from (today: reading a store's history back). Everything else in
//! this crate is test support and panics with a message naming what failed.

/// Why reading from a store failed.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("bad endpoint {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{what} failed: {status}")]
    Rpc {
        what: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("history watch from {from} cancelled (compact_revision {compact_revision}, {reason})")]
    Compacted {
        from: i64,
        compact_revision: i64,
        reason: String,
    },
    #[error("the store closed the history watch before revision {through}")]
    Closed { through: i64 },
    #[error("{what} timed out after {secs:.1}s")]
    Timeout { what: String, secs: f64 },
}
