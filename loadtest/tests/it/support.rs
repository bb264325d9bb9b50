//! Shared helpers: a run context for a real server.

use std::time::Duration;

use bytes::Bytes;
use lookout_loadtest::scenario::RunCtx;
use lookout_loadtest::scenario::fanout::FanoutParams;
use tokio::sync::watch;

/// A context against `endpoint`; keep the returned sender alive for the run
/// (dropping it means "nobody will ask to stop").
pub fn ctx(
    endpoint: &str,
    truth: &str,
    prefix: &str,
    pids: Vec<(String, u32)>,
) -> (RunCtx, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    (
        RunCtx {
            target: "test".into(),
            endpoint: endpoint.into(),
            truth_endpoint: truth.into(),
            prefix: Bytes::from(prefix.to_string()),
            server_pids: pids,
            metrics_endpoints: Vec::new(),
            progress: false,
            stop: rx,
            command: "test".into(),
        },
        tx,
    )
}

/// A small fan-out: seconds, not minutes.
pub fn small_fanout(watchers: usize, connections: usize) -> FanoutParams {
    FanoutParams {
        watchers,
        connections,
        rate: 50.0,
        keys: 10,
        value_size: 64,
        duration: Duration::from_secs(2),
        setup_timeout: Duration::from_secs(20),
        drain_timeout: Duration::from_secs(20),
        ..FanoutParams::default()
    }
}
