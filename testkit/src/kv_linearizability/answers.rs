//! Each answered op against the state its revision names: an acknowledged
//! write must have produced exactly its revision's events, a read must
//! have seen exactly that revision's keys.

use super::ops::{Op, Outcome, Request, Response};
use super::simulate::{same_events, simulate};
use super::sink::{LIN, Sink};
use crate::kv_history::{Ev, State, state_range};

pub(super) fn check_acked_write(op: &Op, rev: i64, state: &State, events: &[Ev], sink: &mut Sink) {
    let Outcome::Ok(resp) = &op.out else { return };
    let sim = simulate(&op.req, state, rev);
    let mut bad = Vec::new();
    if !same_events(&sim.events, events) {
        bad.push(format!(
            "the store's revision {rev} is {events:?}, this write makes {:?}",
            sim.events
        ));
    }
    match resp {
        Response::Txn {
            succeeded, results, ..
        } => {
            if sim.succeeded != Some(*succeeded) {
                bad.push(format!(
                    "compares evaluate to {:?} at revision {}",
                    sim.succeeded,
                    rev - 1
                ));
            }
            if *results != sim.results {
                bad.push(format!("results should be {:?}", sim.results));
            }
        }
        Response::Delete { deleted, .. } if sim.events.len() as i64 != *deleted => {
            bad.push(format!("{} keys were there to delete", sim.events.len()));
        }
        _ => {}
    }
    if !bad.is_empty() {
        sink.push(LIN, format!("{}: {}", op.describe(), bad.join("; ")));
    }
}

/// Checks a read-like op answered at `at` against `state` (the state at
/// `now`, which is `at` unless the log lacks `at`).
pub(super) fn check_read(op: &Op, at: i64, now: i64, state: &State, sink: &mut Sink) {
    let Outcome::Ok(resp) = &op.out else { return };
    let mut bad = Vec::new();
    if now != at {
        bad.push(format!("revision {at} is missing from the store's history"));
    }
    match (&op.req, resp) {
        (
            Request::Range {
                key,
                range_end,
                revision,
                ..
            },
            Response::Range { rev, kvs },
        ) => {
            let want = state_range(state, key, range_end);
            if *kvs != want {
                bad.push(format!("the store had {want:?} at revision {at}"));
            }
            if *revision > 0 && *rev < *revision {
                bad.push(format!(
                    "header revision {rev} below the revision {revision} read"
                ));
            }
        }
        (Request::Delete { key, range_end }, Response::Delete { .. }) => {
            let want = state_range(state, key, range_end);
            if !want.is_empty() {
                bad.push(format!(
                    "nothing deleted, but the store had {want:?} at revision {at}"
                ));
            }
        }
        (
            Request::Txn { .. },
            Response::Txn {
                succeeded, results, ..
            },
        ) => {
            let sim = simulate(&op.req, state, at + 1);
            if !sim.events.is_empty() {
                bad.push(format!(
                    "a read-only answer, but at revision {at} it would write {:?}",
                    sim.events
                ));
            }
            if sim.succeeded != Some(*succeeded) {
                bad.push(format!(
                    "compares evaluate to {:?} at revision {at}",
                    sim.succeeded
                ));
            }
            if sim.events.is_empty() && *results != sim.results {
                bad.push(format!("results should be {:?}", sim.results));
            }
        }
        _ => bad.push("response does not fit the request".into()),
    }
    if !bad.is_empty() {
        sink.push(LIN, format!("{}: {}", op.describe(), bad.join("; ")));
    }
}
