//! What each `lookout` subcommand does once its flags are parsed: the
//! store member, `lookout dev` (store and gateway in one process) and the
//! gateway's start-up. Library code, so tests reach it; the binary only
//! parses flags and calls these.
//!
//! ```text
//!   lookout store   -> store::run_store    one store member (raft, client and peer ports)
//!   lookout gateway -> gateway::run_gateway  a watch-cache gateway until SIGTERM/Ctrl-C
//!   lookout dev     -> dev::run_dev        a store on an internal port + a gateway
//! ```

mod dev;
mod gateway;
mod store;

use std::time::Duration;

use tokio::net::TcpListener;

use crate::error::GatewayError;

pub use dev::{DevArgs, run_dev, run_dev_until};
pub use gateway::run_gateway;
pub use store::{StoreArgs, parse_auto_compaction, run_store, run_store_until};

/// Why a subcommand stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
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
    Config(#[from] crate::config_file::ConfigFileError),
}

/// Go-style durations as etcd's flags take them ("10m", "500ms"), the
/// gateway's parser, except that zero is refused: the store's intervals
/// and timeouts must be positive.
///
/// # Errors
/// [`CommandError::BadDuration`] for anything else.
pub fn parse_duration(s: &str) -> Result<Duration, CommandError> {
    match crate::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(CommandError::BadDuration(s.to_string())),
    }
}

/// "http://host:port" or "https://host:port" -> "host:port" (localhost
/// means IPv4 loopback).
fn listen_addr(url: &str) -> Result<String, CommandError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| CommandError::BadUrl(url.to_string()))?;
    let hostport = rest.trim_end_matches('/');
    if !hostport.contains(':') || hostport.contains('/') {
        return Err(CommandError::BadUrl(url.to_string()));
    }
    Ok(hostport.replacen("localhost:", "127.0.0.1:", 1))
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() -> Result<(), CommandError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CommandError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.map_err(CommandError::Signal)?,
    }
    Ok(())
}

async fn bind(addr: &str) -> Result<TcpListener, CommandError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CommandError::Listen {
            addr: addr.to_string(),
            source,
        })
}

async fn bind_all(addrs: &[String]) -> Result<Vec<TcpListener>, CommandError> {
    let mut listeners = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| CommandError::Listen {
                addr: addr.clone(),
                source,
            })?;
        listeners.push(l);
    }
    Ok(listeners)
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

    /// The store's and dev's serving code runs in-process, stopped by the
    /// caller rather than a signal: what moving it out of the binary is for.
    #[tokio::test]
    async fn store_and_dev_run_until_told_to_stop() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            store: StoreArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("store");
        let flags = Flags::parse_from([
            "store".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--listen-client-urls".as_ref(),
            "http://127.0.0.1:0".as_ref(),
        ]);
        run_store_until(flags.store, async { Ok(()) })
            .await
            .unwrap();
        assert!(data.exists());

        let dev = DevArgs {
            data_dir: dir.path().join("dev"),
            listen_client_urls: "http://127.0.0.1:0".into(),
            indexes: Vec::new(),
            metrics: crate::telemetry::MetricsLevel::Basic,
        };
        run_dev_until(dev, async { Ok(()) }).await.unwrap();
        // A failing stop signal is the run's error, as a failed signal
        // handler was. A data dir of its own: the run above has returned,
        // but its store's background tasks may still hold the database
        // for a moment on a loaded machine (a process exit ends them; an
        // in-process rerun on the same dir would race them).
        let failed = run_dev_until(
            DevArgs {
                data_dir: dir.path().join("dev-2"),
                listen_client_urls: "http://127.0.0.1:0".into(),
                indexes: Vec::new(),
                metrics: crate::telemetry::MetricsLevel::Basic,
            },
            async { Err(CommandError::Signal(std::io::Error::other("no signals"))) },
        )
        .await;
        assert!(matches!(failed, Err(CommandError::Signal(_))), "{failed:?}");
    }
}
