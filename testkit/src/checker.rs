//! The watch-guarantee checker: compares what watchers received with the
//! store's own history.
//!
//! ```text
//!   StoreHistory::fetch(etcd, base, through)   <- list @base + watch from base+1 (prev_kv)
//!   WatcherLog::record(resp) for each WatchResponse a watcher got
//!   check_watcher(&history, &log, through)     -> ordered, no gap, no dup, right bytes
//!   check_list_then_watch(&history, list@R, &log, through)
//!                                              -> list + events == store at every revision
//! ```
//!
//! A watcher cancelled with `compact_revision` passes if what it got is an
//! exact prefix of what it should have got and the compaction revision lies
//! above its last event (the client knows to relist). Progress responses
//! must never report a revision below an event already received, nor one
//! whose events have not all arrived.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use lookout_proto::pb::{
    RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    watch_client::WatchClient, watch_create_request::FilterType, watch_request,
};

/// Every event the store committed after `base_rev`, with `prev_kv`, and the
/// state at `base_rev`.
#[derive(Debug, Clone, Default)]
pub struct StoreHistory {
    base_rev: i64,
    base: BTreeMap<Bytes, KeyValue>,
    events: Vec<Event>,
}

/// Which events a watcher asked for.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub key: Bytes,
    pub range_end: Bytes,
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

impl WatchSpec {
    pub fn from_request(req: &WatchCreateRequest) -> Self {
        Self {
            key: req.key.clone(),
            range_end: req.range_end.clone(),
            start_revision: req.start_revision,
            prev_kv: req.prev_kv,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
        }
    }

    /// etcd's key/range_end semantics: empty end = one key, "\0" = from key.
    pub fn contains(&self, key: &[u8]) -> bool {
        in_range(&self.key, &self.range_end, key)
    }

    fn wants(&self, ev: &Event) -> bool {
        let key = ev.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
        let put = ev.r#type == EventType::Put as i32;
        self.contains(key) && !(put && self.no_put) && (put || !self.no_delete)
    }
}

/// True when `key` lies in etcd's `[key, range_end)`.
pub fn in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

fn rev_of(ev: &Event) -> i64 {
    ev.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

impl StoreHistory {
    /// A history starting from `base` (the whole keyspace at `base_rev`).
    pub fn new(base_rev: i64, base: Vec<KeyValue>) -> Self {
        Self {
            base_rev,
            base: base.into_iter().map(|kv| (kv.key.clone(), kv)).collect(),
            events: Vec::new(),
        }
    }

    /// Appends the store's next event (ascending revisions, with prev_kv).
    pub fn push(&mut self, ev: Event) {
        assert!(rev_of(&ev) > self.base_rev, "event below the base revision");
        if let Some(last) = self.events.last() {
            assert!(rev_of(&ev) >= rev_of(last), "history out of order");
        }
        self.events.push(ev);
    }

    pub fn base_revision(&self) -> i64 {
        self.base_rev
    }

    /// Newest revision recorded.
    pub fn last_revision(&self) -> i64 {
        self.events.last().map_or(self.base_rev, rev_of)
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Reads the history straight from an etcd v3 endpoint: all keys at
    /// `base_rev` and every event after it up to `through` (which must exist
    /// and not be compacted), within `timeout`.
    pub async fn fetch(endpoint: &str, base_rev: i64, through: i64, timeout: Duration) -> Self {
        tokio::time::timeout(timeout, Self::fetch_inner(endpoint, base_rev, through))
            .await
            .unwrap_or_else(|_| panic!("fetching store history {base_rev}..={through} timed out"))
    }

    async fn fetch_inner(endpoint: &str, base_rev: i64, through: i64) -> Self {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect for history");
        let base = if base_rev > 0 {
            KvClient::new(ch.clone())
                .max_decoding_message_size(usize::MAX)
                .range(RangeRequest {
                    key: Bytes::from_static(&[0]),
                    range_end: Bytes::from_static(&[0]),
                    revision: base_rev,
                    ..Default::default()
                })
                .await
                .expect("range at base revision")
                .into_inner()
                .kvs
        } else {
            Vec::new()
        };
        let mut h = Self::new(base_rev, base);
        if through <= base_rev {
            return h;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: Bytes::from_static(&[0]),
                    range_end: Bytes::from_static(&[0]),
                    start_revision: base_rev + 1,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        })
        .await
        .expect("queue create");
        let mut stream = WatchClient::new(ch)
            .max_decoding_message_size(usize::MAX)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("history watch")
            .into_inner();
        while h.last_revision() < through {
            let resp = stream
                .message()
                .await
                .expect("history watch stream")
                .expect("history watch ended early");
            assert!(
                resp.compact_revision == 0,
                "history {base_rev}.. is compacted"
            );
            for ev in resp.events {
                h.push(ev);
            }
        }
        drop(tx);
        h
    }

    /// The keyspace at `rev` (restricted to `[key, range_end)`).
    pub fn state_at(&self, rev: i64, key: &[u8], range_end: &[u8]) -> BTreeMap<Bytes, KeyValue> {
        assert!(
            rev >= self.base_rev,
            "revision {rev} below the history base {}",
            self.base_rev
        );
        let mut state = self.base.clone();
        for ev in self.events.iter().take_while(|e| rev_of(e) <= rev) {
            apply(&mut state, ev);
        }
        state.retain(|k, _| in_range(key, range_end, k));
        state
    }

    /// The events a watcher with `spec` must get from `start` up to `through`.
    fn expected(&self, spec: &WatchSpec, start: i64, through: i64) -> Vec<&Event> {
        assert!(
            start > self.base_rev,
            "watcher starts at {start}, history only from {}",
            self.base_rev + 1
        );
        self.events
            .iter()
            .filter(|e| rev_of(e) >= start && rev_of(e) <= through && spec.wants(e))
            .collect()
    }
}

fn apply(state: &mut BTreeMap<Bytes, KeyValue>, ev: &Event) {
    let Some(kv) = &ev.kv else { return };
    if ev.r#type == EventType::Delete as i32 {
        state.remove(&kv.key);
    } else {
        state.insert(kv.key.clone(), kv.clone());
    }
}

/// Everything one watcher received, in order.
#[derive(Debug, Clone)]
pub struct WatcherLog {
    pub spec: WatchSpec,
    /// `header.revision` of the `created` response ("now" watchers start after it).
    pub created_rev: Option<i64>,
    pub events: Vec<Event>,
    /// Progress responses: (revision, number of events received before it).
    pub progress: Vec<(i64, usize)>,
    /// `compact_revision` of a compaction cancel.
    pub compacted: Option<i64>,
    pub canceled: bool,
    /// Events received inside fragments not yet completed.
    fragments: usize,
}

impl WatcherLog {
    pub fn new(req: &WatchCreateRequest) -> Self {
        Self {
            spec: WatchSpec::from_request(req),
            created_rev: None,
            events: Vec::new(),
            progress: Vec::new(),
            compacted: None,
            canceled: false,
            fragments: 0,
        }
    }

    /// Records one response addressed to this watcher (or to all, id -1).
    pub fn record(&mut self, resp: &WatchResponse) {
        let rev = resp.header.map_or(0, |h| h.revision);
        if resp.created {
            self.created_rev = Some(rev);
        }
        if resp.compact_revision != 0 {
            self.compacted = Some(resp.compact_revision);
        }
        if resp.canceled {
            self.canceled = true;
        }
        if resp.events.is_empty() && !resp.created && !resp.canceled && resp.compact_revision == 0 {
            self.progress.push((rev, self.events.len()));
        }
        self.events.extend(resp.events.iter().cloned());
        self.fragments = if resp.fragment {
            self.fragments + resp.events.len()
        } else {
            0
        };
    }

    /// First revision this watcher must receive.
    pub fn effective_start(&self) -> i64 {
        if self.spec.start_revision > 0 {
            self.spec.start_revision
        } else {
            self.created_rev
                .expect("a 'now' watcher needs its created response")
                + 1
        }
    }

    /// Revision of the newest event received.
    pub fn last_revision(&self) -> Option<i64> {
        self.events.last().map(rev_of)
    }
}

/// What [`check_watcher`] verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    pub events: usize,
    pub compacted: bool,
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
    let got: Vec<&Event> = log.events.iter().filter(|e| rev_of(e) <= through).collect();

    let mut seen = HashSet::new();
    let mut prev_rev = 0;
    for e in &got {
        let r = rev_of(e);
        if r < prev_rev {
            return Err(format!("out of order: revision {r} after {prev_rev}"));
        }
        prev_rev = r;
        let key = e.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
        if !seen.insert((r, key.clone())) {
            return Err(format!("duplicate event at revision {r} for key {key:?}"));
        }
        if r < start {
            return Err(format!("event at {r} before the watcher's start {start}"));
        }
    }

    let expected = h.expected(&log.spec, start, through);
    let same = |a: &Event, b: &Event| {
        a.r#type == b.r#type
            && a.kv == b.kv
            && if log.spec.prev_kv {
                a.prev_kv == b.prev_kv
            } else {
                a.prev_kv.is_none()
            }
    };
    let n = match log.compacted {
        Some(c) => {
            if got.len() > expected.len() {
                return Err(format!(
                    "{} events received, only {} exist",
                    got.len(),
                    expected.len()
                ));
            }
            let last = got.last().map_or(start - 1, |e| rev_of(e));
            if c <= last {
                return Err(format!(
                    "compact_revision {c} not above the last event received ({last})"
                ));
            }
            got.len()
        }
        None => {
            if got.len() != expected.len() {
                let missing: Vec<i64> = expected
                    .iter()
                    .filter(|e| !got.iter().any(|g| same(g, e)))
                    .map(|e| rev_of(e))
                    .take(10)
                    .collect();
                return Err(format!(
                    "watcher from {start} on {:?}: got {} events, store has {} up to {through}; first missing revisions {missing:?}",
                    log.spec.key,
                    got.len(),
                    expected.len()
                ));
            }
            got.len()
        }
    };
    for (i, (g, e)) in got.iter().zip(&expected).take(n).enumerate() {
        if !same(g, e) {
            return Err(format!("event #{i} differs:\n got  {g:?}\n want {e:?}"));
        }
    }

    for &(p, before) in &log.progress {
        if p > through {
            continue;
        }
        if let Some(e) = log.events[..before].last()
            && rev_of(e) > p
        {
            return Err(format!("progress {p} after an event at {}", rev_of(e)));
        }
        let due = expected.iter().filter(|e| rev_of(e) <= p).count();
        if log.compacted.is_none() && before < due {
            return Err(format!(
                "progress {p} with {before} events received, {due} were due"
            ));
        }
    }
    Ok(CheckReport {
        events: got.len(),
        compacted: log.compacted.is_some(),
    })
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
    let mut hist = h.events.iter().filter(|e| rev_of(e) > list_rev).peekable();
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
}
