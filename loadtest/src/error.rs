//! The crate's one error type. `lookout-load` is a client, so nothing here
//! maps to `tonic::Status`; errors end a run (or skip a target) with a message
//! that names what failed.

use std::path::PathBuf;

/// Everything that can stop a scenario or a comparison run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
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
    #[error("{what} timed out after {secs:.1}s")]
    Timeout { what: String, secs: f64 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading /proc for pid {pid}: {reason}")]
    Proc { pid: u32, reason: String },
    #[error("plotting {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
    #[error("reading the store's history: {0}")]
    History(#[source] lookout_testkit::TestkitError),
    #[error("target {target}: {reason}")]
    Target { target: String, reason: String },
    #[error("interrupted")]
    Interrupted,
}

impl LoadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn rpc(what: &'static str, status: tonic::Status) -> Self {
        Self::Rpc { what, status }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = LoadError> = std::result::Result<T, E>;
