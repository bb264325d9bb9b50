//! The order checks that span ops rather than revisions: real time (an op
//! that returned before another was called cannot come after it) and
//! read-your-writes within one session for serializable reads.

use std::collections::HashMap;

use super::index::RealTime;
use super::ops::{Op, Outcome, Request, linearizable_point};
use super::sink::{LIN, Sink};

/// Real-time order among all ops with a point; a write must be strictly
/// after what returned before its call, a read may share the revision.
pub(super) fn real_time_order(ops: &[Op], point: &[Option<i64>], rt: &RealTime, sink: &mut Sink) {
    for (i, op) in ops.iter().enumerate() {
        let Some(p) = point[i] else { continue };
        if linearizable_point(op).is_none() && !matches!(op.out, Outcome::Unknown(_)) {
            continue;
        }
        let writes = match &op.out {
            Outcome::Ok(r) => op.req.may_write() && r.wrote(),
            _ => true,
        };
        if let Some((q, j)) = rt.max_before(op.call)
            && (q > p || (writes && q == p))
            && j != i
        {
            sink.push(
                LIN,
                format!(
                    "real-time order: {} (revision {q}) returned before {} (revision {p}) was called",
                    ops[j].describe(),
                    op.describe()
                ),
            );
        }
    }
}

/// Read-your-writes for serializable reads within one session: they are
/// not linearizable, but a server must not answer below what it already
/// acknowledged to the same client.
pub(super) fn read_your_writes(ops: &[Op], sink: &mut Sink) {
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].client, ops[i].call));
    let mut own: HashMap<(usize, u64), (i64, usize)> = HashMap::new();
    for &i in &order {
        let op = &ops[i];
        let key = (op.client, op.session);
        match (&op.req, &op.out) {
            (
                Request::Range {
                    revision: 0,
                    serializable: true,
                    ..
                },
                Outcome::Ok(r),
            ) => {
                if let Some(&(w, j)) = own.get(&key)
                    && r.rev() < w
                {
                    sink.push(
                        LIN,
                        format!(
                            "read-your-writes: {} saw revision {} after its own {} on the same server",
                            op.describe(),
                            r.rev(),
                            ops[j].describe()
                        ),
                    );
                }
            }
            (_, Outcome::Ok(r)) if op.req.may_write() && r.wrote() => {
                let e = own.entry(key).or_insert((0, i));
                if r.rev() >= e.0 {
                    *e = (r.rev(), i);
                }
            }
            _ => {}
        }
    }
}
