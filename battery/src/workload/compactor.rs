//! Compacts now and then, always behind every oracle (the history must stay
//! complete) but ahead of slow watchers, so resuming and relisting after a
//! compaction is exercised under faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use lookout_proto::pb::CompactionRequest;
use lookout_testkit::watch_check::CompactionCall;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{OP_TIMEOUT, Stop, pause_or_stop};
use crate::client::{Clock, Pool};

/// Revisions kept behind the slowest oracle.
const KEEP: i64 = 300;

/// Every compaction it asked for (answered or not).
pub async fn run(
    mut pool: Pool,
    oracles: Vec<Arc<AtomicI64>>,
    seed: u64,
    clock: Clock,
    mut stop: Stop,
) -> Vec<CompactionCall> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut calls = Vec::new();
    let mut done = 0i64;
    loop {
        if pause_or_stop(
            &mut stop,
            Duration::from_millis(rng.random_range(3_000..7_000)),
        )
        .await
        {
            return calls;
        }
        let slowest = oracles
            .iter()
            .map(|o| o.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0);
        let target = slowest - KEEP;
        if target <= done + 50 {
            continue;
        }
        calls.push(CompactionCall {
            rev: target,
            call: clock.now(),
        });
        let res = tokio::time::timeout(
            OP_TIMEOUT,
            pool.kv().compact(CompactionRequest {
                revision: target,
                physical: false,
            }),
        )
        .await;
        match res {
            Ok(Ok(_)) => done = target,
            _ => pool.rotate(),
        }
    }
}
