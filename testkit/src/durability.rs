//! Durability: after every fault has healed, each member (and each
//! gateway) holds the very history and state the store acknowledged.
//!
//! ```text
//!   acknowledged writes (revision each)  ─┐
//!   RevisionLog (merged store watches)   ─┼─> every acknowledged revision is in
//!   per server: final state at revision R,│   every member's history and state;
//!     its own history from its compaction ┘   each server's state at R equals the
//!     point, its HashKV                       log's; members' histories equal the
//!                                             log; members' hashes at R agree
//! ```
//!
//! A kill -9 keeps the page cache, so passing this after kills says nothing
//! about fsync; the power-cut case needs a file layer that drops unsynced
//! writes (see the battery's report).

use crate::kv_history::{Ev, Kv, RevisionLog, Violation, state_range};

/// What one server holds at the end.
#[derive(Debug, Clone, Default)]
pub struct ServerFinal {
    /// "m0", "g1".
    pub name: String,
    /// The revision `kvs` were read at (the server's header revision).
    pub rev: i64,
    /// Every key, in key order.
    pub kvs: Vec<Kv>,
    /// The server's own history, watched from `history_from` (members
    /// only; None when not read).
    pub history: Option<(i64, Vec<Ev>)>,
    /// HashKV at the common revision (members only).
    pub hash: Option<u32>,
}

const D: &str = "durability";

/// Checks `finals` against `log` and the revisions writes were
/// acknowledged at.
pub fn check_durability(
    log: &RevisionLog,
    acked: &[i64],
    finals: &[ServerFinal],
) -> Vec<Violation> {
    let mut out = Vec::new();
    let newest_ack = acked.iter().copied().max().unwrap_or(0);
    for f in finals {
        if f.rev < newest_ack {
            out.push(Violation::new(
                D,
                format!(
                    "{} is at revision {} after a write was acknowledged at {newest_ack}",
                    f.name, f.rev
                ),
            ));
        }
        if f.rev > log.last_revision() {
            out.push(Violation::new(
                D,
                format!(
                    "{} is at revision {}, beyond the store's history ({})",
                    f.name,
                    f.rev,
                    log.last_revision()
                ),
            ));
            continue;
        }
        let want = state_range(&log.state_at(f.rev), &bytes::Bytes::from_static(&[0]), &[0]);
        if f.kvs != want {
            let diff: Vec<String> = want
                .iter()
                .filter(|kv| !f.kvs.contains(kv))
                .map(|kv| format!("missing {kv:?}"))
                .chain(
                    f.kvs
                        .iter()
                        .filter(|kv| !want.contains(kv))
                        .map(|kv| format!("extra {kv:?}")),
                )
                .take(6)
                .collect();
            out.push(Violation::new(
                D,
                format!(
                    "{}'s keys at revision {} differ from the store's history: {}",
                    f.name,
                    f.rev,
                    diff.join(", ")
                ),
            ));
        }
        if let Some((from, events)) = &f.history {
            let mine: Vec<(i64, &Ev)> = events.iter().map(|e| (e.rev(), e)).collect();
            let theirs: Vec<(i64, &Ev)> = log
                .revisions()
                .filter(|(r, _)| *r >= *from && *r <= f.rev)
                .flat_map(|(r, evs)| evs.iter().map(move |e| (r, e)))
                .collect();
            if let Some(k) =
                (0..mine.len().max(theirs.len())).find(|&k| match (mine.get(k), theirs.get(k)) {
                    (Some(a), Some(b)) => !a.1.same(b.1, a.1.prev.is_some()),
                    _ => true,
                })
            {
                out.push(Violation::new(
                    D,
                    format!(
                        "{}'s own history from revision {from} differs from the store's at event {k}: {:?} vs {:?}",
                        f.name,
                        mine.get(k).map(|x| x.1),
                        theirs.get(k).map(|x| x.1)
                    ),
                ));
            }
            for &r in acked.iter().filter(|r| **r >= *from && **r <= f.rev) {
                if !events.iter().any(|e| e.rev() == r) {
                    out.push(Violation::new(
                        D,
                        format!("{} lost the write acknowledged at revision {r}", f.name),
                    ));
                    break;
                }
            }
        }
    }
    let hashes: Vec<(&str, i64, u32)> = finals
        .iter()
        .filter_map(|f| f.hash.map(|h| (f.name.as_str(), f.rev, h)))
        .collect();
    if let Some(first) = hashes.first()
        && hashes.iter().any(|h| h.1 == first.1 && h.2 != first.2)
    {
        out.push(Violation::new(
            D,
            format!("members' HashKV differ at the same revision: {hashes:?}"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_history::tests::log_of;

    fn all(log: &RevisionLog, rev: i64) -> Vec<Kv> {
        log.state_at(rev).into_values().collect()
    }

    fn history(log: &RevisionLog, from: i64) -> Vec<Ev> {
        log.revisions()
            .filter(|(r, _)| *r >= from)
            .flat_map(|(_, e)| e.to_vec())
            .collect()
    }

    #[test]
    fn members_that_hold_everything_pass() {
        let log = log_of(&[
            (2, &[("a", Some("1"))]),
            (3, &[("b", Some("1"))]),
            (4, &[("a", None)]),
        ]);
        let m = ServerFinal {
            name: "m0".into(),
            rev: 4,
            kvs: all(&log, 4),
            history: Some((2, history(&log, 2))),
            hash: Some(9),
        };
        let g = ServerFinal {
            name: "g0".into(),
            rev: 4,
            kvs: all(&log, 4),
            ..Default::default()
        };
        assert!(check_durability(&log, &[2, 3, 4], &[m, g]).is_empty());
    }

    #[test]
    fn a_member_missing_an_acknowledged_write_is_a_violation() {
        let log = log_of(&[(2, &[("a", Some("1"))]), (3, &[("b", Some("1"))])]);
        // Came back with revision 3 gone.
        let behind = ServerFinal {
            name: "m1".into(),
            rev: 2,
            kvs: all(&log, 2),
            history: Some((2, history(&log, 2)[..1].to_vec())),
            hash: None,
        };
        let v = check_durability(&log, &[2, 3], &[behind]);
        assert!(
            format!("{v:?}").contains("after a write was acknowledged at 3"),
            "{v:?}"
        );
        // Same revision, a key lost.
        let lost = ServerFinal {
            name: "m2".into(),
            rev: 3,
            kvs: all(&log, 2),
            history: Some((2, history(&log, 2)[..1].to_vec())),
            hash: None,
        };
        let v = check_durability(&log, &[2, 3], &[lost]);
        let text = format!("{v:?}");
        assert!(text.contains("missing"), "{text}");
        assert!(
            text.contains("lost the write acknowledged at revision 3"),
            "{text}"
        );
    }

    #[test]
    fn members_with_different_hashes_are_a_violation() {
        let log = log_of(&[(2, &[("a", Some("1"))])]);
        let m = |name: &str, h| ServerFinal {
            name: name.into(),
            rev: 2,
            kvs: all(&log, 2),
            history: None,
            hash: Some(h),
        };
        assert!(!check_durability(&log, &[2], &[m("m0", 1), m("m1", 2)]).is_empty());
    }
}
