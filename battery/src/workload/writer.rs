//! A writer: one op at a time, chosen by its seeded generator, each value
//! unique (`w<id>.<seq>`) so a revision names its writer.

use std::collections::HashMap;

use bytes::Bytes;
use lookout_testkit::kv_linearizability::{
    CmpResult, CmpTarget, Compare, Op, Outcome, Request, Response, TxnOp,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{KEYS, OP_TIMEOUT, Stop, after_op, key};
use crate::client::{Clock, Pool, b, exec};

/// Writes until stopped; every op it issued, answered or not.
pub async fn run(id: usize, mut pool: Pool, seed: u64, clock: Clock, mut stop: Stop) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    // What this writer last wrote to each key, and at which revision.
    let mut mine: HashMap<usize, (Bytes, i64)> = HashMap::new();
    let mut failures = 0u32;
    let mut seq = 0u64;
    while !*stop.borrow() {
        seq += 1;
        let value = b(&format!("w{id}.{seq}"));
        let k = rng.random_range(0..KEYS);
        let req = generate(&mut rng, k, &value, &mine, &mut seq, id);
        let session = pool.session();
        let call = clock.now();
        let out = exec(&mut pool.kv(), &req, OP_TIMEOUT).await;
        let ret = clock.now();
        if let (Request::Put { value, .. }, Outcome::Ok(Response::Put { rev })) = (&req, &out) {
            mine.insert(k, (value.clone(), *rev));
        }
        let failed = !matches!(out, Outcome::Ok(_));
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
            0..3_000,
        )
        .await
        {
            break;
        }
    }
    ops
}

fn put(k: usize, v: &Bytes) -> TxnOp {
    TxnOp::Put {
        key: b(&key(k)),
        value: v.clone(),
        lease: 0,
    }
}

fn generate(
    rng: &mut StdRng,
    k: usize,
    value: &Bytes,
    mine: &HashMap<usize, (Bytes, i64)>,
    seq: &mut u64,
    id: usize,
) -> Request {
    let mut fresh = || {
        *seq += 1;
        b(&format!("w{id}.{seq}"))
    };
    let other = (k + 1 + rng.random_range(0..KEYS - 1)) % KEYS;
    match rng.random_range(0..100) {
        // Plain put.
        0..40 => Request::Put {
            key: b(&key(k)),
            value: value.clone(),
            lease: 0,
        },
        // Compare-and-swap on the mod revision this writer last saw, moving
        // two keys at once; else read the key.
        40..60 => {
            let rev = mine.get(&k).map_or(0, |(_, r)| *r);
            Request::Txn {
                compares: vec![Compare {
                    key: b(&key(k)),
                    target: CmpTarget::Mod(rev),
                    result: CmpResult::Equal,
                }],
                success: vec![put(k, value), put(other, &fresh())],
                failure: vec![TxnOp::Range {
                    key: b(&key(k)),
                    range_end: Bytes::new(),
                }],
            }
        }
        // Exists? then write two others, else create it.
        60..75 => {
            let third = (other + 1) % KEYS;
            let third = if third == k {
                (third + 1) % KEYS
            } else {
                third
            };
            Request::Txn {
                compares: vec![Compare {
                    key: b(&key(k)),
                    target: CmpTarget::Version(0),
                    result: CmpResult::Greater,
                }],
                success: vec![put(other, value), put(third, &fresh())],
                failure: vec![put(k, &fresh())],
            }
        }
        // If the value is still what this writer put, delete the key; else
        // read a small range.
        75..85 => {
            let v = mine.get(&k).map_or_else(|| b("none"), |(v, _)| v.clone());
            Request::Txn {
                compares: vec![Compare {
                    key: b(&key(k)),
                    target: CmpTarget::Value(v),
                    result: CmpResult::Equal,
                }],
                success: vec![TxnOp::Delete {
                    key: b(&key(k)),
                    range_end: Bytes::new(),
                }],
                failure: vec![TxnOp::Range {
                    key: b(&key(k - k % 4)),
                    range_end: b(&key(k - k % 4 + 4)),
                }],
            }
        }
        85..95 => Request::Delete {
            key: b(&key(k)),
            range_end: Bytes::new(),
        },
        // Delete a range of three keys.
        _ => {
            let s = k.min(KEYS - 3);
            Request::Delete {
                key: b(&key(s)),
                range_end: b(&key(s + 3)),
            }
        }
    }
}
