//! `lookout-load`: parses flags, wires Ctrl-C / SIGTERM, runs the command.
//!
//! The first signal asks every phase to stop and report what it has; a
//! second one drops the run at once (child processes of `compare` are
//! killed by their guards either way).

use clap::Parser;
use lookout_loadtest::cli::{self, Cli};
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lookout-load: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        let stop = CancellationToken::new();
        let signal_stop = stop.clone();
        let (hard_tx, hard_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            for n in 0..2 {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                if n == 0 {
                    eprintln!("lookout-load: stopping (again to abort now)");
                    signal_stop.cancel();
                }
            }
            let _ = hard_tx.send(());
        });
        tokio::select! {
            r = cli::run(cli, stop) => r,
            _ = hard_rx => Err(lookout_loadtest::LoadError::Interrupted),
        }
    });
    // Background tasks (stream readers) must not keep the process alive.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lookout-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
