//! The store's semantics, replayed: what a request does to a state at a
//! revision, so a claimed or candidate effect can be compared with the log.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::ops::{Request, TxnOp, TxnResult};
use crate::kv_history::{Ev, EvKind, Kv, State, range_contains, state_range};

/// The effect a request has on a state, as the store would compute it.
#[derive(Debug, Default)]
pub(super) struct Sim {
    pub(super) succeeded: Option<bool>,
    pub(super) events: Vec<Ev>,
    pub(super) results: Vec<TxnResult>,
}

pub(super) fn simulate(req: &Request, state: &State, rev: i64) -> Sim {
    let ops: Vec<TxnOp>;
    let mut sim = Sim::default();
    let branch: &[TxnOp] = match req {
        Request::Put { key, value, lease } => {
            ops = vec![TxnOp::Put {
                key: key.clone(),
                value: value.clone(),
                lease: *lease,
            }];
            &ops
        }
        Request::Delete { key, range_end } => {
            ops = vec![TxnOp::Delete {
                key: key.clone(),
                range_end: range_end.clone(),
            }];
            &ops
        }
        Request::Range { .. } => return sim,
        Request::Txn {
            compares,
            success,
            failure,
        } => {
            let ok = compares.iter().all(|c| c.holds(state));
            sim.succeeded = Some(ok);
            if ok { success } else { failure }
        }
    };
    // Writes earlier in the branch, seen by later ops of the same branch.
    let mut overlay: BTreeMap<Bytes, Option<Kv>> = BTreeMap::new();
    let view = |overlay: &BTreeMap<Bytes, Option<Kv>>, key: &Bytes, end: &[u8]| -> Vec<Kv> {
        let mut m: BTreeMap<Bytes, Kv> = state_range(state, key, end)
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        for (k, v) in overlay {
            if range_contains(key, end, k) {
                match v {
                    Some(kv) => {
                        m.insert(k.clone(), kv.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
        }
        m.into_values().collect()
    };
    for op in branch {
        match op {
            TxnOp::Put { key, value, lease } => {
                let prev = state.get(key).cloned();
                let cur = match overlay.get(key) {
                    Some(v) => v.clone(),
                    None => prev.clone(),
                };
                let kv = Kv {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: cur.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: cur.as_ref().map_or(1, |p| p.version + 1),
                    lease: *lease,
                };
                overlay.insert(key.clone(), Some(kv.clone()));
                sim.events.push(Ev {
                    kind: EvKind::Put,
                    kv,
                    prev,
                });
                sim.results.push(TxnResult::Put);
            }
            TxnOp::Delete { key, range_end } => {
                let gone = view(&overlay, key, range_end);
                for kv in &gone {
                    overlay.insert(kv.key.clone(), None);
                    sim.events.push(Ev {
                        kind: EvKind::Delete,
                        kv: Kv {
                            key: kv.key.clone(),
                            mod_revision: rev,
                            ..Default::default()
                        },
                        prev: state.get(&kv.key).cloned(),
                    });
                }
                sim.results.push(TxnResult::Delete {
                    deleted: gone.len() as i64,
                });
            }
            TxnOp::Range { key, range_end } => {
                sim.results.push(TxnResult::Range {
                    kvs: view(&overlay, key, range_end),
                });
            }
        }
    }
    sim
}

pub(super) fn same_events(a: &[Ev], b: &[Ev]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.same(y, x.prev.is_some() && y.prev.is_some()))
}
