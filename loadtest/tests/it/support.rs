//! Shared helpers: a run context for a real server.

use std::time::Duration;

use bytes::Bytes;
use lookout_loadtest::scenario::RunCtx;
use lookout_loadtest::scenario::fanout::FanoutParams;
use tokio_util::sync::CancellationToken;

/// A context against `endpoint`, and its stop token (cancel it to end the
/// run early; dropping it never does).
pub fn ctx(
    endpoint: &str,
    truth: &str,
    prefix: &str,
    pids: Vec<(String, u32)>,
) -> (RunCtx, CancellationToken) {
    let stop = CancellationToken::new();
    (
        RunCtx {
            target: "test".into(),
            endpoint: endpoint.into(),
            truth_endpoint: truth.into(),
            prefix: Bytes::from(prefix.to_string()),
            server_pids: pids,
            metrics_endpoints: Vec::new(),
            progress: false,
            stop: stop.clone(),
            command: "test".into(),
        },
        stop,
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
