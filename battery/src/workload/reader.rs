//! A reader: linearizable reads of a key or a prefix, serializable reads,
//! and reads at a past revision it has seen.

use bytes::Bytes;
use lookout_testkit::kv_linearizability::{Op, Outcome, Request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{KEYS, OP_TIMEOUT, Stop, after_op, key};
use crate::client::{Clock, Pool, b, exec};

/// Reads until stopped; every read it issued.
pub async fn run(id: usize, mut pool: Pool, seed: u64, clock: Clock, mut stop: Stop) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let mut seen_rev = 1i64;
    let mut failures = 0u32;
    while !*stop.borrow() {
        let k = rng.random_range(0..KEYS);
        let (key_b, end) = if rng.random_bool(0.5) {
            (b(&key(k)), Bytes::new())
        } else {
            // A prefix of ten keys (/b/k0, /b/k1, /b/k2) or all of /b/.
            let p = rng.random_range(0..4);
            if p == 3 {
                (b("/b/"), b("/b0"))
            } else {
                (b(&format!("/b/k{p}")), b(&format!("/b/k{}", p + 1)))
            }
        };
        let req = match rng.random_range(0..100) {
            0..55 => Request::Range {
                key: key_b,
                range_end: end,
                revision: 0,
                serializable: false,
            },
            55..80 => Request::Range {
                key: key_b,
                range_end: end,
                revision: 0,
                serializable: true,
            },
            _ => Request::Range {
                key: key_b,
                range_end: end,
                revision: (seen_rev - rng.random_range(0..200)).max(2),
                serializable: false,
            },
        };
        let session = pool.session();
        let call = clock.now();
        let out = exec(&mut pool.kv(), &req, OP_TIMEOUT).await;
        let ret = clock.now();
        let failed = match &out {
            Outcome::Ok(r) => {
                seen_rev = seen_rev.max(r.rev());
                false
            }
            // A compacted revision is an answer, not a server failure.
            Outcome::Failed(m) => !m.contains("compacted"),
            Outcome::Unknown(_) => true,
        };
        ops.push(Op {
            client: id,
            session,
            call,
            ret,
            req,
            out,
        });
        if after_op(
            failed,
            &mut failures,
            &mut pool,
            &mut stop,
            &mut rng,
            500..5_000,
        )
        .await
        {
            break;
        }
    }
    ops
}
