//! Lease safety: a key is not deleted while its lease is kept alive, a
//! lease once gone stays gone, and once it has expired its keys are gone.
//!
//! ```text
//!   LeaseHistory (grant, every keep-alive answer with the time it was sent,
//!                 revoke, when the holder let go)
//!   LeaseDeletion (from kv_linearizability: revision r deleted exactly the
//!                  lease's keys, no client request did it)
//!   RevisionClock: r existed by committed_by(r) (an op saw r or later then)
//!     deleted at r, not revoked, and a keep-alive sent at t answered TTL s
//!        with committed_by(r) < t + s: deleted while kept alive
//!     keep-alive answered with TTL > 0, sent after committed_by(r): renewed
//!        a lease that was gone
//!     a put attaching the lease at a revision after r
//!     at the end: a key of a lease let go long enough ago is still there
//! ```
//!
//! Time is the test process's monotonic clock, which every process on the
//! machine shares. A keep-alive sent at `t` and answered with TTL `s` proves
//! the leader renewed the lease at some moment after `t`, so it must not
//! expire before `t + s`; etcd only ever extends that on leader change.

use bytes::Bytes;

use crate::kv_history::{EvKind, Nanos, RevisionLog, State, Violation, show};
use crate::kv_linearizability::{LeaseDeletion, RevisionClock};

/// One keep-alive answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// When the request was sent.
    pub sent: Nanos,
    pub received: Nanos,
    /// The TTL answered (seconds); 0 or less: the lease was not found.
    pub ttl: i64,
}

/// Everything one holder did with one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHistory {
    pub id: i64,
    /// Who held it (for messages).
    pub holder: String,
    /// When the grant was called, and the TTL granted.
    pub granted: Nanos,
    pub ttl: i64,
    pub keepalives: Vec<KeepAlive>,
    /// When a revoke was called (answered or not).
    pub revoked: Option<Nanos>,
    /// When the holder stopped renewing (on purpose or because it could not).
    pub released: Option<Nanos>,
}

impl LeaseHistory {
    /// The latest time this lease was promised to live until.
    pub fn alive_until(&self) -> Nanos {
        let grant = self.granted + secs(self.ttl);
        self.keepalives
            .iter()
            .filter(|k| k.ttl > 0)
            .map(|k| k.sent + secs(k.ttl))
            .fold(grant, Nanos::max)
    }
}

fn secs(s: i64) -> Nanos {
    (s.max(0) as Nanos) * 1_000_000_000
}

fn at(n: Nanos) -> String {
    format!("{:.3}s", n as f64 / 1e9)
}

/// What [`check_leases`] verified.
#[derive(Debug, Clone, Default)]
pub struct LeaseReport {
    pub leases: usize,
    pub keepalives: usize,
    pub expiries: usize,
    pub violations: Vec<Violation>,
}

const L: &str = "lease";

/// Checks every lease (see the module doc). `end`: the time the final state
/// (`final_state`, the log's last revision) was read; `grace`: how long after
/// its last promise a lease let go may still live (etcd extends leases on
/// leader change).
pub fn check_leases(
    log: &RevisionLog,
    leases: &[LeaseHistory],
    deletions: &[LeaseDeletion],
    clock: &RevisionClock,
    final_state: &State,
    end: Nanos,
    grace: Nanos,
) -> LeaseReport {
    let mut rep = LeaseReport {
        leases: leases.len(),
        keepalives: leases.iter().map(|l| l.keepalives.len()).sum(),
        ..Default::default()
    };
    for l in leases {
        let dels: Vec<&LeaseDeletion> = deletions.iter().filter(|d| d.lease == l.id).collect();
        if let Some(d) = dels.first() {
            rep.expiries += 1;
            let by = clock.committed_by(d.rev);
            let revoked_before = match (l.revoked, by) {
                (Some(r), Some(b)) => r < b,
                (Some(_), None) => true,
                _ => false,
            };
            if let Some(by) = by
                && !revoked_before
                && !d.ambiguous
                && by < l.alive_until()
            {
                rep.violations.push(Violation::new(
                    L,
                    format!(
                        "lease {:x} ({}): its keys {:?} were deleted at revision {} (by {} at the latest) while it was kept alive until {}",
                        l.id,
                        l.holder,
                        d.keys.iter().map(|k| show(k)).collect::<Vec<_>>(),
                        d.rev,
                        at(by),
                        at(l.alive_until())
                    ),
                ));
            }
            if let Some(by) = by
                && let Some(k) = l.keepalives.iter().find(|k| k.ttl > 0 && k.sent > by)
            {
                rep.violations.push(Violation::new(
                    L,
                    format!(
                        "lease {:x} ({}): a keep-alive sent at {} renewed it (TTL {}), but its keys were deleted at revision {} by {}",
                        l.id,
                        l.holder,
                        at(k.sent),
                        k.ttl,
                        d.rev,
                        at(by)
                    ),
                ));
            }
            // A lease once gone takes no more keys.
            for (r, evs) in log.revisions().filter(|(r, _)| *r > d.rev) {
                if let Some(e) = evs
                    .iter()
                    .find(|e| e.kind == EvKind::Put && e.kv.lease == l.id)
                {
                    rep.violations.push(Violation::new(
                        L,
                        format!(
                            "lease {:x} ({}): {e:?} attached at revision {r}, after the lease's keys were deleted at {}",
                            l.id, l.holder, d.rev
                        ),
                    ));
                    break;
                }
            }
        }
        // Let go long ago, yet its keys are still there.
        if let Some(released) = l.released
            && l.revoked.is_none()
        {
            let due = l.alive_until().max(released) + grace;
            let left: Vec<&Bytes> = final_state
                .values()
                .filter(|kv| kv.lease == l.id)
                .map(|kv| &kv.key)
                .collect();
            if end > due && !left.is_empty() {
                rep.violations.push(Violation::new(
                    L,
                    format!(
                        "lease {:x} ({}): last renewed until {}, let go at {}, yet {:?} still exist at {}",
                        l.id,
                        l.holder,
                        at(l.alive_until()),
                        at(released),
                        left.iter().map(|k| show(k)).collect::<Vec<_>>(),
                        at(end)
                    ),
                ));
            }
        }
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_history::tests::{b, del, put};
    use crate::kv_linearizability::{Op, Outcome, Request, Response, check};

    const S: Nanos = 1_000_000_000;

    /// x is put with lease 7 at revision 2, deleted by expiry at 3; a
    /// reader saw revision 3 returning at `seen_at`.
    fn scenario(seen_at: Nanos) -> (RevisionLog, LeaseDeletion, RevisionClock) {
        let mut log = RevisionLog::new(1, State::new());
        let p = put("x", "1", 2, None, 7);
        log.push_revision(2, vec![p.clone()]);
        log.push_revision(3, vec![del("x", 3, &p.kv)]);
        let ops = vec![
            Op {
                client: 0,
                session: 0,
                call: 0,
                ret: S / 10,
                req: Request::Put {
                    key: b("x"),
                    value: b("1"),
                    lease: 7,
                },
                out: Outcome::Ok(Response::Put { rev: 2 }),
            },
            Op {
                client: 1,
                session: 1,
                call: seen_at - 1,
                ret: seen_at,
                req: Request::Range {
                    key: b("x"),
                    range_end: Bytes::new(),
                    revision: 0,
                    serializable: false,
                },
                out: Outcome::Ok(Response::Range {
                    rev: 3,
                    kvs: vec![],
                }),
            },
        ];
        let r = check(&log, &ops);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.lease_deletions.len(), 1);
        (log, r.lease_deletions[0].clone(), r.clock)
    }

    fn lease(keepalives: &[(Nanos, i64)], released: Option<Nanos>) -> LeaseHistory {
        LeaseHistory {
            id: 7,
            holder: "h".into(),
            granted: 0,
            ttl: 2,
            keepalives: keepalives
                .iter()
                .map(|&(sent, ttl)| KeepAlive {
                    sent,
                    received: sent + 1,
                    ttl,
                })
                .collect(),
            revoked: None,
            released,
        }
    }

    #[test]
    fn expiry_after_the_last_promise_is_fine() {
        let (log, d, clock) = scenario(10 * S);
        let l = lease(&[(S, 2), (2 * S, 2)], Some(3 * S));
        let r = check_leases(&log, &[l], &[d], &clock, &State::new(), 11 * S, S);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.expiries, 1);
    }

    #[test]
    fn deletion_while_kept_alive_is_a_violation() {
        // Renewed at 4 s for 2 s, yet a reader saw the deletion by 5 s.
        let (log, d, clock) = scenario(5 * S);
        let l = lease(&[(S, 2), (4 * S, 2)], None);
        let r = check_leases(
            &log,
            std::slice::from_ref(&l),
            std::slice::from_ref(&d),
            &clock,
            &State::new(),
            11 * S,
            S,
        );
        assert!(
            format!("{:?}", r.violations).contains("while it was kept alive"),
            "{:?}",
            r.violations
        );
        // A revoke called before explains it.
        let mut revoked = l;
        revoked.revoked = Some(3 * S);
        let r = check_leases(&log, &[revoked], &[d], &clock, &State::new(), 11 * S, S);
        assert!(
            !format!("{:?}", r.violations).contains("while it was kept alive"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn renewing_a_gone_lease_is_a_violation() {
        let (log, d, clock) = scenario(5 * S);
        let l = lease(&[(S, 2), (6 * S, 2)], None);
        let r = check_leases(&log, &[l], &[d], &clock, &State::new(), 11 * S, S);
        assert!(
            format!("{:?}", r.violations).contains("renewed it"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_key_attached_after_the_lease_is_gone_is_a_violation() {
        let (mut log, d, clock) = scenario(10 * S);
        log.push_revision(4, vec![put("y", "1", 4, None, 7)]);
        let l = lease(&[(S, 2)], Some(2 * S));
        let r = check_leases(&log, &[l], &[d], &clock, &State::new(), 11 * S, S);
        assert!(
            format!("{:?}", r.violations).contains("attached at revision 4"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn keys_outliving_their_lease_are_a_violation() {
        let log = RevisionLog::new(1, State::new());
        let l = lease(&[(S, 2)], Some(2 * S));
        let mut fin = State::new();
        let p = put("x", "1", 2, None, 7);
        fin.insert(p.kv.key.clone(), p.kv);
        let clock = RevisionClock::default();
        let r = check_leases(
            &log,
            std::slice::from_ref(&l),
            &[],
            &clock,
            &fin,
            20 * S,
            5 * S,
        );
        assert!(
            format!("{:?}", r.violations).contains("still exist"),
            "{:?}",
            r.violations
        );
        // Within the grace it may still be there.
        let r = check_leases(&log, &[l], &[], &clock, &fin, 7 * S, 5 * S);
        assert!(r.violations.is_empty());
    }
}
