//! Judging a recorded watcher ([`WatcherLog`], whole events) against a
//! [`StoreHistory`]: the same online record and verdict the load generator
//! uses ([`WatchCheck`], [`Truth`]), fed event by event, with the first
//! violation described in words for the test's failure message.
//!
//! ```text
//!   history ──expected(spec, start, through)──> Truth (tags of whole events)
//!   log     ──events ≤ through, progress──────> WatchCheck ──judge──> Judgement
//!                                                   └─> Err("first violation") | Ok(CheckReport)
//!   list @R + log ──replayed beside the history──> equal at every revision?
//! ```
//!
//! A watcher cancelled with `compact_revision` passes if what it got is an
//! exact prefix of what it should have got and the compaction revision lies
//! above its last event (the client knows to relist). Progress responses
//! must never report a revision below an event already received, nor one
//! whose events have not all arrived.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use lookout_proto::mvccpb::{Event, KeyValue};
use prost::Message;

use super::history::{StoreHistory, apply};
use super::judge::{Judgement, ProgressFault};
use super::log::WatcherLog;
use super::spec::rev_of;
use super::truth::{Truth, fnv1a};
use super::watcher::{Delivery, WatchCheck, WatchEnd};

/// What [`check_watcher`] verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    pub events: usize,
    pub compacted: bool,
}

/// The content tag of a whole event: type, kv and prev_kv, exactly.
pub fn event_tag(ev: &Event) -> u64 {
    fnv1a(&ev.encode_to_vec())
}

/// The tag of a store event as a watcher must receive it: with its prev_kv
/// only when the watcher asked for it.
fn owed_tag(ev: &Event, prev_kv: bool) -> u64 {
    if prev_kv || ev.prev_kv.is_none() {
        event_tag(ev)
    } else {
        event_tag(&Event {
            prev_kv: None,
            ..ev.clone()
        })
    }
}

/// Checks one watcher against the store's history up to `through`: events
/// strictly ordered by revision, none missing, none repeated, each equal to
/// the store's (and its `prev_kv` when asked for), progress truthful.
///
/// # Errors
/// A description of the first violation.
pub fn check_watcher(
    h: &StoreHistory,
    log: &WatcherLog,
    through: i64,
) -> Result<CheckReport, String> {
    let start = log.effective_start();
    let owed = h.expected(&log.spec, start, through);
    let truth = Truth::from_events(
        owed.iter()
            .map(|e| (rev_of(e), owed_tag(e, log.spec.prev_kv)))
            .collect(),
    );
    let fed = feed(log, start, through)?;
    let mut check = fed.check;
    if let Some(c) = log.compacted {
        check.set_end(WatchEnd::CompactCancelled {
            compact_revision: c,
        });
    }
    let j = check.judge(&truth, through);
    let got = &fed.got;
    explain_counts(log, &j, got, &owed, start, through)?;
    if j.content_ok == Some(false) {
        let tags = got.iter().map(|e| event_tag(e));
        let want = owed.iter().map(|e| owed_tag(e, log.spec.prev_kv));
        if let Some((i, _)) = tags.zip(want).enumerate().find(|(_, (g, w))| g != w) {
            return Err(format!(
                "event #{i} differs:\n got  {:?}\n want {:?}",
                got[i], owed[i]
            ));
        }
        return Err("events differ from the store's (same revisions)".into());
    }
    let faults = check.progress_faults(&truth, through);
    match (faults.first().copied(), fed.beyond_fault) {
        (Some(ProgressFault::BelowEvent { progress, event }), _)
        | (None, Some((progress, event))) => {
            return Err(format!("progress {progress} after an event at {event}"));
        }
        (
            Some(ProgressFault::AheadOfEvents {
                progress,
                received,
                due,
            }),
            _,
        ) => {
            return Err(format!(
                "progress {progress} with {received} events received, {due} were due"
            ));
        }
        (None, None) => {}
    }
    Ok(CheckReport {
        events: got.len(),
        compacted: log.compacted.is_some(),
    })
}

/// A log fed through the online record.
struct Fed<'a> {
    check: WatchCheck,
    /// The events judged (revision at or below `through`), in order.
    got: Vec<&'a Event>,
    /// A progress at or below `through` that arrived after an event above
    /// it (events above `through` are not judged, but they happened).
    beyond_fault: Option<(i64, i64)>,
}

/// Feeds the events at or below `through` and the progress notes, in the
/// order they arrived; the first event out of order, repeated or before
/// the start is an error at once.
fn feed(log: &WatcherLog, start: i64, through: i64) -> Result<Fed<'_>, String> {
    let mut fed = Fed {
        check: WatchCheck::new(start),
        got: Vec::new(),
        beyond_fault: None,
    };
    let mut beyond: Option<i64> = None;
    let mut notes = log.progress.iter().peekable();
    for (i, e) in log.events.iter().enumerate() {
        while let Some(&(p, _)) = notes.next_if(|(_, before)| *before <= i) {
            fed.note_progress(p, beyond, through);
        }
        let r = rev_of(e);
        if r > through {
            beyond = beyond.max(Some(r));
            continue;
        }
        let prev = fed.check.last_rev();
        let delivery = fed.check.observe(r, event_tag(e));
        fed.got.push(e);
        match delivery {
            _ if r < prev => return Err(format!("out of order: revision {r} after {prev}")),
            Delivery::Duplicate => {
                let key = e.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
                return Err(format!("duplicate event at revision {r} for key {key:?}"));
            }
            Delivery::BeforeStart => {
                return Err(format!("event at {r} before the watcher's start {start}"));
            }
            Delivery::InOrder | Delivery::OutOfOrder => {}
        }
    }
    for &(p, _) in notes {
        fed.note_progress(p, beyond, through);
    }
    Ok(fed)
}

impl Fed<'_> {
    fn note_progress(&mut self, p: i64, beyond: Option<i64>, through: i64) {
        self.check.progress(p);
        if let Some(b) = beyond
            && b > p
            && p <= through
            && self.beyond_fault.is_none()
        {
            self.beyond_fault = Some((p, b));
        }
    }
}

/// The count-level violations in words: a bad compaction cancel, events
/// not in the store, events missing.
fn explain_counts(
    log: &WatcherLog,
    j: &Judgement,
    got: &[&Event],
    owed: &[&Event],
    start: i64,
    through: i64,
) -> Result<(), String> {
    if let Some(c) = log.compacted {
        if j.unexpected > 0 {
            return Err(format!(
                "{} events received, {} of them not in the store's {} (compact-cancelled at {c})",
                got.len(),
                j.unexpected,
                owed.len()
            ));
        }
        if j.bad_cancel {
            let last = got.last().map_or(start - 1, |e| rev_of(e));
            return Err(format!(
                "compact_revision {c} not above the last event received ({last})"
            ));
        }
        if j.missing > 0 {
            return Err(format!(
                "compact-cancelled watcher from {start}: what it got is not a prefix of the store's events; first missing revisions {:?}",
                missing_revisions(log, got, owed)
            ));
        }
        return Ok(());
    }
    if j.missing + j.undelivered + j.unexpected > 0 {
        return Err(format!(
            "watcher from {start} on {:?}: got {} events, store has {} up to {through}; first missing revisions {:?}",
            log.spec.key,
            got.len(),
            owed.len(),
            missing_revisions(log, got, owed)
        ));
    }
    Ok(())
}

/// Revisions of the first few owed events nothing received matches.
fn missing_revisions(log: &WatcherLog, got: &[&Event], owed: &[&Event]) -> Vec<i64> {
    let seen: HashSet<(i64, u64)> = got.iter().map(|e| (rev_of(e), event_tag(e))).collect();
    owed.iter()
        .filter(|e| !seen.contains(&(rev_of(e), owed_tag(e, log.spec.prev_kv))))
        .map(|e| rev_of(e))
        .take(10)
        .collect()
}

/// Checks the informer pattern: a list at `list_rev` plus the events the
/// watcher (started at `list_rev + 1` on the same range) received equals the
/// store's state at every revision up to `through`.
///
/// # Errors
/// A description of the first revision where they differ.
pub fn check_list_then_watch(
    h: &StoreHistory,
    list_rev: i64,
    list: &[KeyValue],
    log: &WatcherLog,
    through: i64,
) -> Result<(), String> {
    let (key, end) = (&log.spec.key[..], &log.spec.range_end[..]);
    let mut state: BTreeMap<Bytes, KeyValue> =
        list.iter().map(|kv| (kv.key.clone(), kv.clone())).collect();
    let want = h.state_at(list_rev, key, end);
    if state != want {
        return Err(format!("list at {list_rev} differs from the store"));
    }
    let mut store = want;
    let mut hist = h
        .events()
        .iter()
        .filter(|e| rev_of(e) > list_rev)
        .peekable();
    // A compaction-cancelled watcher is only comparable up to its last event.
    let limit = match log.compacted {
        Some(_) => log.last_revision().unwrap_or(list_rev).min(through),
        None => through,
    };
    let mut events = log.events.iter().filter(|e| rev_of(e) <= limit).peekable();
    let mut revs: Vec<i64> = log
        .events
        .iter()
        .map(rev_of)
        .filter(|r| *r <= limit)
        .collect();
    revs.push(limit);
    revs.dedup();
    for r in revs {
        while let Some(e) = events.next_if(|e| rev_of(e) <= r) {
            apply(&mut state, e);
        }
        while let Some(e) = hist.next_if(|e| rev_of(e) <= r) {
            if log
                .spec
                .contains(e.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]))
            {
                apply(&mut store, e);
            }
        }
        if state != store {
            let diff: Vec<&Bytes> = state
                .keys()
                .chain(store.keys())
                .filter(|k| state.get(*k) != store.get(*k))
                .take(5)
                .collect();
            return Err(format!(
                "list@{list_rev} + events != store at revision {r}; keys {diff:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookout_proto::mvccpb::event::EventType;
    use lookout_proto::pb::{WatchCreateRequest, WatchResponse};

    fn put(key: &str, rev: i64, prev: Option<KeyValue>) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                value: Bytes::from_static(b"v"),
                lease: 0,
            }),
            prev_kv: prev,
        }
    }

    fn spec(start: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(&[0]),
            start_revision: start,
            ..Default::default()
        }
    }

    fn resp(events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            events,
            ..Default::default()
        }
    }

    fn history() -> StoreHistory {
        let mut h = StoreHistory::new(1, vec![]);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            h.push(put(k, i as i64 + 2, None));
        }
        h
    }

    #[test]
    fn accepts_exact_and_rejects_gap_dup_order() {
        let h = history();
        let strip = |e: &Event| Event {
            prev_kv: None,
            ..e.clone()
        };
        let all: Vec<Event> = h.events().iter().map(strip).collect();
        let mut ok = WatcherLog::new(&spec(2));
        ok.record(&resp(all.clone()));
        assert_eq!(check_watcher(&h, &ok, 5).unwrap().events, 4);

        let mut gap = WatcherLog::new(&spec(2));
        gap.record(&resp(vec![all[0].clone(), all[2].clone(), all[3].clone()]));
        assert!(
            check_watcher(&h, &gap, 5)
                .unwrap_err()
                .contains("first missing revisions [3]")
        );

        let mut dup = WatcherLog::new(&spec(2));
        dup.record(&resp(vec![all[0].clone(), all[0].clone()]));
        assert!(
            check_watcher(&h, &dup, 5)
                .unwrap_err()
                .contains("duplicate")
        );

        let mut order = WatcherLog::new(&spec(2));
        order.record(&resp(vec![all[1].clone(), all[0].clone()]));
        assert!(
            check_watcher(&h, &order, 5)
                .unwrap_err()
                .contains("out of order")
        );
    }

    #[test]
    fn compaction_prefix_and_progress() {
        let h = history();
        let all: Vec<Event> = h.events().to_vec();
        let mut c = WatcherLog::new(&spec(2));
        c.record(&resp(vec![all[0].clone()]));
        c.record(&WatchResponse {
            canceled: true,
            compact_revision: 4,
            ..Default::default()
        });
        assert!(check_watcher(&h, &c, 5).unwrap().compacted);
        let mut bad = WatcherLog::new(&spec(2));
        bad.record(&resp(vec![all[0].clone(), all[1].clone()]));
        bad.record(&WatchResponse {
            canceled: true,
            compact_revision: 3,
            ..Default::default()
        });
        assert!(check_watcher(&h, &bad, 5).is_err());

        let mut p = WatcherLog::new(&spec(2));
        p.record(&resp(vec![all[0].clone()]));
        p.record(&WatchResponse {
            header: Some(lookout_proto::pb::ResponseHeader {
                revision: 3,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(
            check_watcher(&h, &p, 3).is_err(),
            "progress 3 before event 3"
        );
    }

    #[test]
    fn list_then_watch_matches_store() {
        let h = history();
        let list = h.state_at(3, b"a", &[0]).into_values().collect::<Vec<_>>();
        let mut w = WatcherLog::new(&spec(4));
        w.record(&resp(h.events()[2..].to_vec()));
        check_list_then_watch(&h, 3, &list, &w, 5).unwrap();
        let mut short = WatcherLog::new(&spec(4));
        short.record(&resp(h.events()[2..3].to_vec()));
        assert!(check_list_then_watch(&h, 3, &list, &short, 5).is_err());
    }

    /// A two-key transaction is one revision with two events: both are
    /// owed, in the store's order, and prev_kv is judged as asked.
    #[test]
    fn transactions_filters_and_prev_kv() {
        let mut h = StoreHistory::new(1, vec![]);
        let prev = KeyValue {
            key: Bytes::from_static(b"b"),
            value: Bytes::from_static(b"old"),
            ..Default::default()
        };
        h.push(put("a", 2, None));
        h.push(put("b", 3, Some(prev.clone())));
        h.push(put("c", 3, None));
        h.push(put("d", 4, None));
        let strip = |e: &Event| Event {
            prev_kv: None,
            ..e.clone()
        };
        let bare: Vec<Event> = h.events().iter().map(strip).collect();

        let mut ok = WatcherLog::new(&spec(2));
        ok.record(&resp(bare.clone()));
        assert_eq!(check_watcher(&h, &ok, 4).unwrap().events, 4);

        let mut half = WatcherLog::new(&spec(2));
        half.record(&resp(vec![
            bare[0].clone(),
            bare[1].clone(),
            bare[3].clone(),
        ]));
        let e = check_watcher(&h, &half, 4).unwrap_err();
        assert!(e.contains("first missing revisions [3]"), "{e}");

        let mut swapped = WatcherLog::new(&spec(2));
        swapped.record(&resp(vec![
            bare[0].clone(),
            bare[2].clone(),
            bare[1].clone(),
            bare[3].clone(),
        ]));
        let e = check_watcher(&h, &swapped, 4).unwrap_err();
        assert!(e.contains("event #1 differs"), "{e}");

        // prev_kv unasked but sent: the event is not the one owed.
        let mut extra = WatcherLog::new(&spec(2));
        extra.record(&resp(h.events().to_vec()));
        assert!(check_watcher(&h, &extra, 4).is_err());
        // Asked for: it must be there.
        let mut asked = spec(2);
        asked.prev_kv = true;
        let mut with = WatcherLog::new(&asked);
        with.record(&resp(h.events().to_vec()));
        check_watcher(&h, &with, 4).unwrap();
        let mut without = WatcherLog::new(&asked);
        without.record(&resp(bare));
        assert!(check_watcher(&h, &without, 4).is_err());
    }
}
