//! `lookout gateway`: the gateway's start-up from its flags, until
//! SIGTERM/Ctrl-C.

use super::{CommandError, bind, shutdown_signal};
use crate::args::GatewayArgs;

/// Runs `lookout gateway` until SIGTERM/Ctrl-C.
///
/// # Errors
/// Bad flags, a listener that cannot bind, or a server failure.
pub async fn run_gateway(a: GatewayArgs) -> Result<(), CommandError> {
    let addr = a.listen()?;
    let listener = bind(&addr).await?;
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel();
    let signal = tokio::spawn(async move {
        let r = shutdown_signal().await;
        let _ = signal_tx.send(());
        r
    });
    let result = crate::run_gateway(a.to_checked_config()?, listener, async move {
        let _ = signal_rx.await;
    })
    .await;
    signal.abort();
    result.map_err(CommandError::from)
}
