//! Matching unknown writes to the revisions nobody claimed: each unknown
//! write explains at most one revision, a lease expiry may explain a
//! delete-only one, and whatever is left unexplained is reported with the
//! likeliest reason.

use std::collections::{HashMap, HashSet};

use super::index::Index;
use super::ops::Op;
use super::sink::{LIN, Sink};
use super::sweep::Unclaimed;
use super::{LeaseDeletion, Report};
use crate::kv_history::RevisionLog;

/// Explains every unclaimed revision: by an unknown write (setting its
/// point), by a lease expiry (recorded in `report`), or as a violation.
pub(super) fn explain_unclaimed(
    log: &RevisionLog,
    ops: &[Op],
    ix: &Index,
    unclaimed: &[Unclaimed],
    point: &mut [Option<i64>],
    report: &mut Report,
    sink: &mut Sink,
) {
    let matched = match_unknown(unclaimed);
    for (u, x) in unclaimed.iter().enumerate() {
        if let Some(&i) = matched.get(&u) {
            point[i] = Some(x.rev);
            report.unknown_applied += 1;
            continue;
        }
        if let Some((lease, keys)) = &x.lease {
            report.lease_deletions.push(LeaseDeletion {
                lease: *lease,
                rev: x.rev,
                keys: keys.clone(),
                ambiguous: !x.candidates.is_empty(),
            });
            continue;
        }
        let events = log.events_at(x.rev);
        let why = if let Some(&i) = x.too_early.first() {
            let (p, j) = ix.rt.max_before(ops[i].call).unwrap_or((0, i));
            format!(
                "its only writer {} was called after {} (revision {p}) had returned",
                ops[i].describe(),
                ops[j].describe()
            )
        } else if !x.candidates.is_empty() {
            format!(
                "its writer(s) already took effect at another revision (applied twice?): {}",
                x.candidates
                    .iter()
                    .map(|&i| ops[i].describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        } else {
            "no request of any client has this effect".to_string()
        };
        sink.push(
            LIN,
            format!(
                "revision {} {events:?} is explained by no write: {why}",
                x.rev
            ),
        );
    }
}

/// Unclaimed revision index -> the unknown write matched to it (Kuhn's
/// matching). Revisions only a client can explain go first: Kuhn's
/// augmenting paths never unmatch a matched revision, so a lease expiry
/// can take an unknown delete only when no such revision needs it.
fn match_unknown(unclaimed: &[Unclaimed]) -> HashMap<usize, usize> {
    let adj: Vec<Vec<usize>> = unclaimed.iter().map(|x| x.candidates.clone()).collect();
    let mut order: Vec<usize> = (0..unclaimed.len()).collect();
    order.sort_by_key(|&u| unclaimed[u].lease.is_some());
    let mut owner: HashMap<usize, usize> = HashMap::new();
    for u in order {
        let mut seen = HashSet::new();
        augment(u, &adj, &mut owner, &mut seen);
    }
    owner.iter().map(|(op, u)| (*u, *op)).collect()
}

fn augment(
    u: usize,
    adj: &[Vec<usize>],
    owner: &mut HashMap<usize, usize>,
    seen: &mut HashSet<usize>,
) -> bool {
    for &op in &adj[u] {
        if !seen.insert(op) {
            continue;
        }
        let free = match owner.get(&op) {
            None => true,
            Some(&v) => augment(v, adj, owner, seen),
        };
        if free {
            owner.insert(op, u);
            return true;
        }
    }
    false
}
