//! The store's revision log, as recorded by watches on every member, and
//! the plain types the fault battery's checkers share
//! ([`crate::kv_linearizability`], [`crate::watch_check`],
//! [`crate::lease_check`], [`crate::durability`]).
//!
//! ```text
//!   one watch per member (all keys, prev_kv, from revision 1)
//!     ──merge_sources──> RevisionLog: every revision once, the members agree
//!     ──self_check────> each event consistent with the state before it
//!   RevisionLog::sweep: state at each revision in one pass, for the checkers
//! ```
//!
//! The types are our own (not the prost messages) so that a test can write a
//! violating history by hand in a few lines; `From` impls convert the wire
//! types the battery records.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use lookout_proto::mvccpb;

/// Nanoseconds since the start of a run, on the test process's monotonic
/// clock (the same clock every process on this machine reads).
pub type Nanos = u64;

/// A key-value as etcd returns it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub key: Bytes,
    pub value: Bytes,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} (c{} m{} v{}",
            show(&self.key),
            show(&self.value),
            self.create_revision,
            self.mod_revision,
            self.version
        )?;
        if self.lease != 0 {
            write!(f, " lease {:x}", self.lease)?;
        }
        write!(f, ")")
    }
}

/// Bytes as text when they are printable, else escaped.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

impl From<&mvccpb::KeyValue> for Kv {
    fn from(kv: &mvccpb::KeyValue) -> Self {
        Self {
            key: kv.key.clone(),
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// Put or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvKind {
    Put,
    Delete,
}

/// One watch event.
#[derive(Clone, PartialEq, Eq)]
pub struct Ev {
    pub kind: EvKind,
    /// For a delete, etcd sets only the key and the mod revision.
    pub kv: Kv,
    /// The key before this event, when the watcher asked for it.
    pub prev: Option<Kv>,
}

impl fmt::Debug for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EvKind::Put => write!(f, "@{} PUT {:?}", self.rev(), self.kv)?,
            EvKind::Delete => write!(f, "@{} DEL {}", self.rev(), show(&self.kv.key))?,
        }
        if let Some(p) = &self.prev {
            write!(f, " prev {p:?}")?;
        }
        Ok(())
    }
}

impl Ev {
    pub fn rev(&self) -> i64 {
        self.kv.mod_revision
    }

    pub fn key(&self) -> &Bytes {
        &self.kv.key
    }

    /// Equal as etcd defines the event: a delete's kv carries only the key
    /// and revision, so nothing else of it is compared. `prev` is compared
    /// only when `with_prev`.
    pub fn same(&self, other: &Ev, with_prev: bool) -> bool {
        let kv = match self.kind {
            EvKind::Put => self.kv == other.kv,
            EvKind::Delete => {
                self.kv.key == other.kv.key && self.kv.mod_revision == other.kv.mod_revision
            }
        };
        self.kind == other.kind && kv && (!with_prev || self.prev == other.prev)
    }

    /// This event without its `prev`.
    pub fn without_prev(&self) -> Ev {
        Ev {
            prev: None,
            ..self.clone()
        }
    }
}

impl From<&mvccpb::Event> for Ev {
    fn from(e: &mvccpb::Event) -> Self {
        Self {
            kind: if e.r#type == mvccpb::event::EventType::Delete as i32 {
                EvKind::Delete
            } else {
                EvKind::Put
            },
            kv: e.kv.as_ref().map(Kv::from).unwrap_or_default(),
            prev: e.prev_kv.as_ref().map(Kv::from),
        }
    }
}

/// etcd's `[key, range_end)`: an empty end is the key alone, `"\0"` is
/// every key from `key` on (the store's and the cache's own rule).
pub fn range_contains(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    lookout_semantics::keys::in_range(k, key, range_end)
}

/// The end of the range of every key starting with `prefix` (`"\0"`, every
/// key, for a prefix of only `0xff` bytes, as etcd's clients send it).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    lookout_semantics::keys::prefix_range_end(prefix)
}

/// One thing a checker found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which checker: "linearizability", "watch", "lease", "durability", "log".
    pub checker: &'static str,
    pub message: String,
}

impl Violation {
    pub fn new(checker: &'static str, message: impl Into<String>) -> Self {
        Self {
            checker,
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.checker, self.message)
    }
}

/// The keyspace at one revision.
pub type State = BTreeMap<Bytes, Kv>;

/// Applies one event to `state`.
pub fn apply(state: &mut State, ev: &Ev) {
    match ev.kind {
        EvKind::Put => {
            state.insert(ev.kv.key.clone(), ev.kv.clone());
        }
        EvKind::Delete => {
            state.remove(&ev.kv.key);
        }
    }
}

/// The keys of `state` in `[key, range_end)`, in key order.
pub fn state_range(state: &State, key: &Bytes, range_end: &[u8]) -> Vec<Kv> {
    use std::ops::Bound;
    if range_end.is_empty() {
        return state.get(key).cloned().into_iter().collect();
    }
    let upper = if range_end == [0] {
        Bound::Unbounded
    } else if range_end <= &key[..] {
        return Vec::new();
    } else {
        Bound::Excluded(Bytes::copy_from_slice(range_end))
    };
    state
        .range((Bound::Included(key.clone()), upper))
        .map(|(_, kv)| kv.clone())
        .collect()
}

/// Which side of a revision [`RevisionLog::sweep`] is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The state before the revision's events.
    Before,
    /// The state with them.
    After,
}

/// Every revision the store committed after `base_rev`, with its events in
/// order, and the keyspace at `base_rev`.
#[derive(Debug, Clone, Default)]
pub struct RevisionLog {
    base_rev: i64,
    base: State,
    revs: BTreeMap<i64, Vec<Ev>>,
}

impl RevisionLog {
    pub fn new(base_rev: i64, base: State) -> Self {
        Self {
            base_rev,
            base,
            revs: BTreeMap::new(),
        }
    }

    /// Adds revision `rev` with its events (replacing what was there).
    pub fn push_revision(&mut self, rev: i64, events: Vec<Ev>) {
        self.revs.insert(rev, events);
    }

    pub fn base_revision(&self) -> i64 {
        self.base_rev
    }

    /// Newest revision in the log (the base when there is none).
    pub fn last_revision(&self) -> i64 {
        self.revs
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.base_rev)
    }

    /// The events of `rev` (empty when the log does not have it).
    pub fn events_at(&self, rev: i64) -> &[Ev] {
        self.revs.get(&rev).map_or(&[], Vec::as_slice)
    }

    /// (revision, events) in ascending order.
    pub fn revisions(&self) -> impl Iterator<Item = (i64, &[Ev])> + '_ {
        self.revs.iter().map(|(r, e)| (*r, e.as_slice()))
    }

    /// Number of events in the log.
    pub fn event_count(&self) -> usize {
        self.revs.values().map(Vec::len).sum()
    }

    /// The keyspace at `rev` (a replay; for one-off questions).
    pub fn state_at(&self, rev: i64) -> State {
        let mut s = self.base.clone();
        for (_, evs) in self.revs.range(..=rev) {
            for e in evs {
                apply(&mut s, e);
            }
        }
        s
    }

    /// Walks every revision once, calling `f(Phase::Before, rev, state at
    /// rev - 1)` and then `f(Phase::After, rev, state at rev)` for each
    /// revision in the log (the base revision gets `After` only), so a
    /// checker visits each op at its revision in one pass.
    pub fn sweep(&self, mut f: impl FnMut(Phase, i64, &State)) {
        let mut s = self.base.clone();
        f(Phase::After, self.base_rev, &s);
        for (r, evs) in &self.revs {
            f(Phase::Before, *r, &s);
            for e in evs {
                apply(&mut s, e);
            }
            f(Phase::After, *r, &s);
        }
    }

    /// Checks the log on its own, as etcd's MVCC defines revisions: no
    /// revision missing, every revision with at least one event, each event
    /// at its revision, create revisions and versions following from the
    /// previous state, deletes only of live keys, `prev` (when recorded)
    /// equal to the previous state, and no key twice in one revision.
    pub fn self_check(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut s = self.base.clone();
        let mut expect = self.base_rev + 1;
        for (r, evs) in &self.revs {
            if *r != expect {
                out.push(Violation::new(
                    "log",
                    format!("revisions {expect}..{r} are missing from the store's history"),
                ));
            }
            expect = r + 1;
            if evs.is_empty() {
                out.push(Violation::new("log", format!("revision {r} has no event")));
            }
            let mut keys = std::collections::HashSet::new();
            for e in evs {
                let prev = s.get(&e.kv.key).cloned();
                let mut bad = Vec::new();
                if e.rev() != *r {
                    bad.push(format!("mod_revision {} at revision {r}", e.rev()));
                }
                if !keys.insert(e.kv.key.clone()) {
                    bad.push("key twice in one revision".to_string());
                }
                if let Some(p) = &e.prev
                    && Some(p) != prev.as_ref()
                {
                    bad.push(format!("prev_kv {p:?}, state had {prev:?}"));
                }
                match (e.kind, &prev) {
                    (EvKind::Delete, None) => bad.push("delete of an absent key".into()),
                    (EvKind::Delete, Some(_)) => {}
                    (EvKind::Put, None) => {
                        if e.kv.create_revision != *r || e.kv.version != 1 {
                            bad.push(format!("new key should have c{r} v1, state had none"));
                        }
                    }
                    (EvKind::Put, Some(p)) => {
                        if e.kv.create_revision != p.create_revision
                            || e.kv.version != p.version + 1
                        {
                            bad.push(format!("should follow {p:?}"));
                        }
                    }
                }
                if !bad.is_empty() {
                    out.push(Violation::new(
                        "log",
                        format!("event {e:?}: {}", bad.join("; ")),
                    ));
                }
                apply(&mut s, e);
            }
        }
        out
    }
}

/// What one store watch (one member, all keys, `prev_kv`) received.
#[derive(Debug, Clone, Default)]
pub struct SourceLog {
    /// Who it watched ("m0").
    pub name: String,
    /// The first revision it asked for.
    pub start_rev: i64,
    /// Events in the order received.
    pub events: Vec<Ev>,
}

/// Merges the store watches into one log and checks them against each
/// other: each source must hold consecutive revisions from its start (none
/// skipped, none repeated, none out of order), and every source that has a
/// revision must have the very same events for it.
pub fn merge_sources(
    base_rev: i64,
    base: State,
    sources: &[SourceLog],
) -> (RevisionLog, Vec<Violation>) {
    let mut log = RevisionLog::new(base_rev, base);
    let mut out = Vec::new();
    // revision -> (source name, events) of the first source that had it
    let mut seen: BTreeMap<i64, (&str, Vec<Ev>)> = BTreeMap::new();
    for src in sources {
        let mut groups: Vec<(i64, Vec<Ev>)> = Vec::new();
        for e in &src.events {
            match groups.last_mut() {
                Some((r, evs)) if *r == e.rev() => evs.push(e.clone()),
                _ => groups.push((e.rev(), vec![e.clone()])),
            }
        }
        let mut expect = src.start_rev.max(base_rev + 1);
        for (r, evs) in groups {
            if r != expect {
                out.push(Violation::new(
                    "log",
                    format!(
                        "{}'s store watch: revision {r} where {expect} was due (skipped, repeated or out of order)",
                        src.name
                    ),
                ));
            }
            expect = expect.max(r + 1);
            match seen.get(&r) {
                None => {
                    seen.insert(r, (src.name.as_str(), evs));
                }
                Some((first, want)) => {
                    let equal = want.len() == evs.len()
                        && want.iter().zip(&evs).all(|(a, b)| a.same(b, true));
                    if !equal {
                        out.push(Violation::new(
                            "log",
                            format!(
                                "revision {r} differs between members: {first} {want:?}, {} {evs:?}",
                                src.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    for (r, (_, evs)) in seen {
        log.push_revision(r, evs);
    }
    (log, out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// A put event at `rev` following `prev` (None: a new key).
    pub fn put(key: &str, value: &str, rev: i64, prev: Option<&Kv>, lease: i64) -> Ev {
        Ev {
            kind: EvKind::Put,
            kv: Kv {
                key: b(key),
                value: b(value),
                create_revision: prev.map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                version: prev.map_or(1, |p| p.version + 1),
                lease,
            },
            prev: prev.cloned(),
        }
    }

    pub fn del(key: &str, rev: i64, prev: &Kv) -> Ev {
        Ev {
            kind: EvKind::Delete,
            kv: Kv {
                key: b(key),
                mod_revision: rev,
                ..Default::default()
            },
            prev: Some(prev.clone()),
        }
    }

    /// A log from revision 1 (empty) with the given revisions, each
    /// computed from the state before it: (rev, [(key, Some(value)) = put,
    /// (key, None) = delete]).
    /// (key, Some(value)) puts, (key, None) deletes.
    pub type Writes<'a> = &'a [(&'a str, Option<&'a str>)];

    pub fn log_of(revs: &[(i64, Writes<'_>)]) -> RevisionLog {
        let mut log = RevisionLog::new(1, State::new());
        let mut s = State::new();
        for (r, ops) in revs {
            let mut evs = Vec::new();
            for (k, v) in *ops {
                let prev = s.get(&b(k)).cloned();
                let e = match v {
                    Some(v) => put(k, v, *r, prev.as_ref(), 0),
                    None => del(k, *r, prev.as_ref().expect("delete of a live key")),
                };
                apply(&mut s, &e);
                evs.push(e);
            }
            log.push_revision(*r, evs);
        }
        log
    }

    #[test]
    fn a_consistent_log_passes_and_state_replays() {
        let log = log_of(&[
            (2, &[("a", Some("1"))]),
            (3, &[("a", Some("2")), ("b", Some("1"))]),
            (4, &[("a", None)]),
        ]);
        assert!(log.self_check().is_empty(), "{:?}", log.self_check());
        let s = log.state_at(3);
        assert_eq!(s[&b("a")].version, 2);
        assert_eq!(log.state_at(4).len(), 1);
        assert_eq!(state_range(&log.state_at(3), &b("a"), b"c").len(), 2);
        assert_eq!(state_range(&log.state_at(3), &b("b"), &[0]).len(), 1);
    }

    #[test]
    fn self_check_catches_gaps_bad_versions_and_ghost_deletes() {
        let mut log = log_of(&[(2, &[("a", Some("1"))])]);
        // Revision 3 missing, and a version that does not follow.
        let mut e = put("a", "2", 4, None, 0);
        e.kv.create_revision = 2;
        e.kv.version = 5;
        e.prev = None;
        log.push_revision(4, vec![e]);
        log.push_revision(5, vec![del("zz", 5, &Kv::default())]);
        let v = log.self_check();
        let text = format!("{v:?}");
        assert!(text.contains("revisions 3..4 are missing"), "{text}");
        assert!(text.contains("should follow"), "{text}");
        assert!(text.contains("delete of an absent key"), "{text}");
    }

    #[test]
    fn merge_finds_members_that_disagree_or_skip() {
        let log = log_of(&[
            (2, &[("a", Some("1"))]),
            (3, &[("b", Some("1"))]),
            (4, &[("a", Some("2"))]),
        ]);
        let all: Vec<Ev> = log.revisions().flat_map(|(_, e)| e.to_vec()).collect();
        let good = SourceLog {
            name: "m0".into(),
            start_rev: 1,
            events: all.clone(),
        };
        // m1 resumed late (fine) but skipped revision 3.
        let skip = SourceLog {
            name: "m1".into(),
            start_rev: 2,
            events: vec![all[0].clone(), all[2].clone()],
        };
        let (merged, v) = merge_sources(1, State::new(), std::slice::from_ref(&good));
        assert!(v.is_empty());
        assert_eq!(merged.last_revision(), 4);
        let (_, v) = merge_sources(1, State::new(), &[good.clone(), skip]);
        assert!(
            format!("{v:?}").contains("m1's store watch: revision 4 where 3"),
            "{v:?}"
        );
        let mut other = all.clone();
        other[1].kv.value = b("X");
        let differ = SourceLog {
            name: "m2".into(),
            start_rev: 1,
            events: other,
        };
        let (_, v) = merge_sources(1, State::new(), &[good, differ]);
        assert!(format!("{v:?}").contains("revision 3 differs"), "{v:?}");
    }
}
