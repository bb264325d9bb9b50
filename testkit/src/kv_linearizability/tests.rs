use bytes::Bytes;

use super::*;
use crate::kv_history::tests::{b, log_of};
use crate::kv_history::{Kv, Nanos, RevisionLog, State, state_range};

fn op(client: usize, call: Nanos, ret: Nanos, req: Request, out: Outcome) -> Op {
    Op {
        client,
        session: client as u64,
        call,
        ret,
        req,
        out,
    }
}

fn put(k: &str, v: &str) -> Request {
    Request::Put {
        key: b(k),
        value: b(v),
        lease: 0,
    }
}

fn get(k: &str) -> Request {
    Request::Range {
        key: b(k),
        range_end: Bytes::new(),
        revision: 0,
        serializable: false,
    }
}

fn ok(r: Response) -> Outcome {
    Outcome::Ok(r)
}

fn kvs(log: &RevisionLog, rev: i64, k: &str) -> Vec<Kv> {
    state_range(&log.state_at(rev), &b(k), b"")
}

/// a=1 at 2, b=1 at 3, then a txn at 4 that swaps a to 2 and writes c.
fn base() -> (RevisionLog, Vec<Op>) {
    let log = log_of(&[
        (2, &[("a", Some("1"))]),
        (3, &[("b", Some("1"))]),
        (4, &[("a", Some("2")), ("c", Some("1"))]),
    ]);
    let txn = Request::Txn {
        compares: vec![Compare {
            key: b("a"),
            target: CmpTarget::Value(b("1")),
            result: CmpResult::Equal,
        }],
        success: vec![
            TxnOp::Put {
                key: b("a"),
                value: b("2"),
                lease: 0,
            },
            TxnOp::Put {
                key: b("c"),
                value: b("1"),
                lease: 0,
            },
        ],
        failure: vec![TxnOp::Range {
            key: b("a"),
            range_end: Bytes::new(),
        }],
    };
    let ops = vec![
        op(0, 0, 10, put("a", "1"), ok(Response::Put { rev: 2 })),
        op(1, 5, 20, put("b", "1"), ok(Response::Put { rev: 3 })),
        op(
            0,
            21,
            30,
            txn,
            ok(Response::Txn {
                rev: 4,
                succeeded: true,
                results: vec![TxnResult::Put, TxnResult::Put],
            }),
        ),
        op(
            2,
            31,
            40,
            get("a"),
            ok(Response::Range {
                rev: 4,
                kvs: kvs(&log, 4, "a"),
            }),
        ),
    ];
    (log, ops)
}

#[test]
fn a_legal_multi_key_history_passes() {
    let (log, ops) = base();
    let r = check(&log, &ops);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!((r.writes_acked, r.reads), (3, 1));
    assert_eq!(r.clock.committed_by(3), Some(20));
    assert_eq!(r.clock.not_before(4), Some(5));
}

#[test]
fn a_stale_read_is_a_violation() {
    let (log, mut ops) = base();
    // Called after the txn returned, answered at revision 3.
    ops[3].out = ok(Response::Range {
        rev: 3,
        kvs: kvs(&log, 3, "a"),
    });
    let r = check(&log, &ops);
    assert!(
        format!("{:?}", r.violations).contains("real-time order"),
        "{:?}",
        r.violations
    );
}

#[test]
fn a_read_that_does_not_match_its_revision_is_a_violation() {
    let (log, mut ops) = base();
    ops[3].out = ok(Response::Range {
        rev: 4,
        kvs: kvs(&log, 3, "a"),
    });
    let r = check(&log, &ops);
    assert!(
        format!("{:?}", r.violations).contains("the store had"),
        "{:?}",
        r.violations
    );
}

#[test]
fn a_txn_whose_compare_cannot_hold_is_a_violation() {
    let (log, mut ops) = base();
    // The txn says it failed, yet a == 1 at revision 3 and it wrote.
    if let Outcome::Ok(Response::Txn { succeeded, .. }) = &mut ops[2].out {
        *succeeded = false;
    }
    let r = check(&log, &ops);
    assert!(!r.violations.is_empty());
    // A half-applied txn: revision 4 lacks c.
    let (_, ops) = base();
    let torn = log_of(&[
        (2, &[("a", Some("1"))]),
        (3, &[("b", Some("1"))]),
        (4, &[("a", Some("2"))]),
    ]);
    let r = check(&torn, &ops);
    assert!(
        format!("{:?}", r.violations).contains("this write makes"),
        "{:?}",
        r.violations
    );
}

#[test]
fn a_lost_acknowledged_write_is_a_violation() {
    let (log, mut ops) = base();
    ops.push(op(3, 50, 60, put("d", "1"), ok(Response::Put { rev: 5 })));
    let r = check(&log, &ops);
    assert!(
        format!("{:?}", r.violations).contains("acknowledged write lost"),
        "{:?}",
        r.violations
    );
}

#[test]
fn unknown_writes_may_apply_once_after_their_call_or_never() {
    let (mut log, mut ops) = base();
    // An unknown put found at revision 5, and one never applied.
    let prev = log.state_at(4).get(&b("b")).cloned();
    log.push_revision(
        5,
        vec![crate::kv_history::tests::put(
            "b",
            "u1",
            5,
            prev.as_ref(),
            0,
        )],
    );
    ops.push(op(
        3,
        41,
        45,
        put("b", "u1"),
        Outcome::Unknown("timeout".into()),
    ));
    ops.push(op(
        4,
        41,
        45,
        put("b", "u2"),
        Outcome::Unknown("timeout".into()),
    ));
    let r = check(&log, &ops);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.unknown_applied, 1);
    // The same unknown put cannot explain a revision before ops that
    // finished before it was called: call it after the read at 4... and
    // claim it applied at 4's place by moving the read later.
    let mut late = ops.clone();
    late[3].out = ok(Response::Range {
        rev: 5,
        kvs: kvs(&log, 5, "a"),
    });
    late[3].ret = 40;
    // The read at revision 5 returned at 40, before the unknown put
    // was called at 41: the put cannot be revision 5.
    let r = check(&log, &late);
    assert!(
        format!("{:?}", r.violations).contains("was called after"),
        "{:?}",
        r.violations
    );
    // A revision nobody wrote.
    let mut phantom = log.clone();
    let prev = log.state_at(5).get(&b("a")).cloned();
    phantom.push_revision(
        6,
        vec![crate::kv_history::tests::put(
            "a",
            "ghost",
            6,
            prev.as_ref(),
            0,
        )],
    );
    let r = check(&phantom, &ops);
    assert!(
        format!("{:?}", r.violations).contains("explained by no write"),
        "{:?}",
        r.violations
    );
}

#[test]
fn a_write_applied_twice_is_a_violation() {
    let (mut log, mut ops) = base();
    let s4 = log.state_at(4);
    log.push_revision(
        5,
        vec![crate::kv_history::tests::put(
            "b",
            "u1",
            5,
            s4.get(&b("b")),
            0,
        )],
    );
    let s5 = log.state_at(5);
    log.push_revision(
        6,
        vec![crate::kv_history::tests::put(
            "b",
            "u1",
            6,
            s5.get(&b("b")),
            0,
        )],
    );
    ops.push(op(
        3,
        41,
        45,
        put("b", "u1"),
        Outcome::Unknown("timeout".into()),
    ));
    let r = check(&log, &ops);
    assert!(
        format!("{:?}", r.violations).contains("applied twice"),
        "{:?}",
        r.violations
    );
}

#[test]
fn lease_expiry_explains_deleting_exactly_a_leases_keys() {
    let mut log = RevisionLog::new(1, State::new());
    let p1 = crate::kv_history::tests::put("x", "1", 2, None, 7);
    let p2 = crate::kv_history::tests::put("y", "1", 3, None, 7);
    log.push_revision(2, vec![p1.clone()]);
    log.push_revision(3, vec![p2.clone()]);
    log.push_revision(
        4,
        vec![
            crate::kv_history::tests::del("x", 4, &p1.kv),
            crate::kv_history::tests::del("y", 4, &p2.kv),
        ],
    );
    let lp = |k: &str| Request::Put {
        key: b(k),
        value: b("1"),
        lease: 7,
    };
    let ops = vec![
        op(0, 0, 1, lp("x"), ok(Response::Put { rev: 2 })),
        op(0, 2, 3, lp("y"), ok(Response::Put { rev: 3 })),
    ];
    let r = check(&log, &ops);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.lease_deletions.len(), 1);
    assert_eq!(r.lease_deletions[0].lease, 7);
    // Deleting only one of the lease's keys is no expiry.
    let mut half = RevisionLog::new(1, State::new());
    half.push_revision(2, vec![p1.clone()]);
    half.push_revision(3, vec![p2]);
    half.push_revision(4, vec![crate::kv_history::tests::del("x", 4, &p1.kv)]);
    let r = check(&half, &ops);
    assert!(
        format!("{:?}", r.violations).contains("explained by no write"),
        "{:?}",
        r.violations
    );
}

#[test]
fn serializable_reads_must_see_the_clients_own_writes() {
    let (log, mut ops) = base();
    ops.push(op(
        0,
        31,
        32,
        Request::Range {
            key: b("a"),
            range_end: Bytes::new(),
            revision: 0,
            serializable: true,
        },
        ok(Response::Range {
            rev: 3,
            kvs: kvs(&log, 3, "a"),
        }),
    ));
    let r = check(&log, &ops);
    assert!(
        format!("{:?}", r.violations).contains("read-your-writes"),
        "{:?}",
        r.violations
    );
    // Another client's serializable read may lag.
    ops.last_mut().unwrap().client = 9;
    ops.last_mut().unwrap().session = 9;
    assert!(check(&log, &ops).violations.is_empty());
}

#[test]
fn reads_at_a_revision_see_that_revision() {
    let (log, mut ops) = base();
    ops.push(op(
        5,
        50,
        60,
        Request::Range {
            key: b("a"),
            range_end: b("d"),
            revision: 3,
            serializable: false,
        },
        ok(Response::Range {
            rev: 4,
            kvs: state_range(&log.state_at(3), &b("a"), b"d"),
        }),
    ));
    assert!(check(&log, &ops).violations.is_empty());
    ops.last_mut().unwrap().out = ok(Response::Range {
        rev: 4,
        kvs: state_range(&log.state_at(4), &b("a"), b"d"),
    });
    assert!(!check(&log, &ops).violations.is_empty());
}
