//! The clients of a run, each a task recording what it did.
//!
//! ```text
//!   writers   Put / Delete / DeleteRange / Txn with compares on /b/k00../b/k23
//!   readers   Range now (linearizable, serializable) and at a past revision
//!   watchers  prefixes of /b/, /l/ and everything; resume on the next
//!             server from their last revision + 1; relist after compaction
//!   leases    grant, attach keys under /l/, keep alive, revoke or let go
//!   oracles   one store watch per member from revision 1 (the history)
//!   compactor compacts behind the oracles now and then
//! ```
//!
//! Each task runs until `stop` turns true and returns its records; nothing
//! is shared while it runs except a few progress counters.

pub mod compactor;
pub mod lease;
pub mod oracle;
pub mod reader;
pub mod watcher;
pub mod writer;

use std::time::Duration;

use tokio::sync::watch;

/// Turns true when the clients should finish.
pub type Stop = watch::Receiver<bool>;

/// The keys writers and readers use: /b/k00 .. /b/k{n-1}.
pub const KEYS: usize = 24;

pub fn key(i: usize) -> String {
    format!("/b/k{i:02}")
}

/// How long a client waits for one answer before it counts as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Sleeps `d` unless stopped first; true when stopped.
pub async fn pause_or_stop(stop: &mut Stop, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// What a reader or writer does after each operation: after a failure it
/// moves to another server and backs off (`failures` counts them in a
/// row); after a success it thinks for a time drawn from `think_us`
/// microseconds (drawn only then, so a seed replays the same draws).
/// True when stopped meanwhile.
pub async fn after_op(
    failed: bool,
    failures: &mut u32,
    pool: &mut crate::client::Pool,
    stop: &mut Stop,
    rng: &mut impl rand::Rng,
    think_us: std::ops::Range<u64>,
) -> bool {
    if failed {
        *failures += 1;
        pool.rotate();
        pause_or_stop(stop, backoff(*failures)).await
    } else {
        *failures = 0;
        let think = Duration::from_micros(rng.random_range(think_us));
        pause_or_stop(stop, think).await
    }
}

/// Delay before the next attempt after `failures` failures in a row: the
/// first retry is immediate (a client moving to another server should not
/// wait), then 20, 40, ... up to 320 ms.
pub fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        Duration::ZERO
    } else {
        Duration::from_millis(20u64 << (failures - 2).min(4))
    }
}
