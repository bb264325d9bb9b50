//! Watch guarantees for watchers that resume on any server: every watcher's
//! recorded streams are checked against the store's history.
//!
//! ```text
//!   WatcherHistory = filter + segments; a segment is one watch stream on one
//!   server from its start revision (the first, or the last event + 1 after a
//!   break, on whichever server the client moved to)
//!     per segment: received events == the store's events for the filter
//!                  from its start, as an exact prefix that ends at a
//!                  revision boundary (ordered, no gap, no duplicate, each
//!                  event and its prev_kv as the store had it)
//!                  a revision's events in one response
//!                  progress at p: every event up to p already delivered
//!                  compaction cancel: the revision asked for really was
//!                  compacted by a compaction someone requested
//!     last segment, still open: it got everything up to the end revision
//! ```

use bytes::Bytes;

use crate::kv_history::{Ev, EvKind, Nanos, RevisionLog, Violation, range_contains, show};

/// What a watcher asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFilter {
    pub key: Bytes,
    pub range_end: Bytes,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

impl WatchFilter {
    pub fn wants(&self, ev: &Ev) -> bool {
        range_contains(&self.key, &self.range_end, &ev.kv.key)
            && match ev.kind {
                EvKind::Put => !self.no_put,
                EvKind::Delete => !self.no_delete,
            }
    }
}

/// One response with events, or a progress notification (no events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    pub at: Nanos,
    pub header_rev: i64,
    pub events: Vec<Ev>,
    pub fragment: bool,
}

/// How a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Still streaming when the run ended.
    Open,
    /// The stream failed or the server went away; the client resumes.
    Broken { at: Nanos, reason: String },
    /// Cancelled with `compact_revision`: the client relists.
    Compacted { at: Nanos, compact_revision: i64 },
    /// Cancelled for another reason.
    Canceled { at: Nanos, reason: String },
}

/// One watch stream on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Which server ("g0", "m2").
    pub endpoint: String,
    pub start_rev: i64,
    pub opened: Nanos,
    /// When the `created` response arrived, and its header revision.
    pub created: Option<(Nanos, i64)>,
    pub responses: Vec<WatchResponse>,
    pub end: SegmentEnd,
}

impl Segment {
    pub fn new(endpoint: &str, start_rev: i64, opened: Nanos) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            start_rev,
            opened,
            created: None,
            responses: Vec::new(),
            end: SegmentEnd::Open,
        }
    }

    fn last_event_rev(&self) -> Option<i64> {
        self.responses
            .iter()
            .rev()
            .find_map(|r| r.events.last().map(Ev::rev))
    }
}

/// Everything one logical watcher received, stream after stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherHistory {
    pub name: String,
    pub filter: WatchFilter,
    pub segments: Vec<Segment>,
}

/// A compaction somebody requested (answered or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionCall {
    pub rev: i64,
    pub call: Nanos,
}

/// What [`check_watcher`] verified.
#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    pub events: usize,
    pub progress: usize,
    pub segments: usize,
    pub compacted: usize,
    pub violations: Vec<Violation>,
}

const W: &str = "watch";

/// Checks one watcher against the store's history. `through`: the revision
/// every still-open stream must have delivered by the end (None: do not
/// check completeness).
pub fn check_watcher(
    log: &RevisionLog,
    w: &WatcherHistory,
    compactions: &[CompactionCall],
    through: Option<i64>,
) -> WatchReport {
    let expected: Vec<&Ev> = log
        .revisions()
        .flat_map(|(_, evs)| evs.iter())
        .filter(|e| w.filter.wants(e))
        .collect();
    let mut c = Check {
        w,
        rep: WatchReport {
            segments: w.segments.len(),
            ..Default::default()
        },
    };
    let mut prev_last: Option<i64> = None;
    for (si, seg) in w.segments.iter().enumerate() {
        if si > 0 {
            c.check_resume(si, prev_last);
        }
        let from = expected.partition_point(|e| e.rev() < seg.start_rev);
        let mut st = Stream {
            si,
            seg,
            exp: &expected[from..],
            k: 0,
            last_rev: None,
            broken: false,
        };
        for (ri, resp) in seg.responses.iter().enumerate() {
            if resp.events.is_empty() {
                c.check_progress(&st, resp);
            } else {
                c.check_events(&mut st, ri, resp);
            }
        }
        if st.broken {
            prev_last = seg.last_event_rev().or(prev_last);
            continue;
        }
        c.check_boundary(&st);
        c.check_end(&st, compactions, through);
        prev_last = if matches!(seg.end, SegmentEnd::Compacted { .. }) {
            // The client relists and resumes from the list's revision: the
            // next stream's start is the new base, whatever came before.
            None
        } else {
            st.last_rev.or(prev_last)
        };
    }
    c.rep
}

/// One watcher's check under way.
struct Check<'a> {
    w: &'a WatcherHistory,
    rep: WatchReport,
}

/// How far one stream got through the store's events for the filter.
struct Stream<'a> {
    si: usize,
    seg: &'a Segment,
    /// The store's events for the filter from the stream's start revision.
    exp: &'a [&'a Ev],
    /// How many of `exp` were delivered.
    k: usize,
    last_rev: Option<i64>,
    /// A wrong event was reported: the rest of the stream would only
    /// repeat the same finding.
    broken: bool,
}

impl Check<'_> {
    fn push(&mut self, seg: usize, m: String) {
        let w = self.w;
        let s = &w.segments[seg];
        self.rep.violations.push(Violation::new(
            W,
            format!(
                "watcher {} on {:?} ({}), stream {seg} on {} from revision {}: {m}",
                w.name,
                show(&w.filter.key),
                show(&w.filter.range_end),
                s.endpoint,
                s.start_rev
            ),
        ));
    }

    /// Continuity is the client's part: it resumes from its last event + 1
    /// (or anywhere after a compaction cancel, from its relist).
    fn check_resume(&mut self, si: usize, prev_last: Option<i64>) {
        let before = &self.w.segments[si - 1];
        let seg = &self.w.segments[si];
        let want = match &before.end {
            SegmentEnd::Compacted { .. } => None,
            _ => Some(prev_last.map_or(before.start_rev, |l| l + 1)),
        };
        if let Some(want) = want
            && seg.start_rev != want
        {
            self.push(
                si,
                format!("resumed at {}, not at {want} (client bug)", seg.start_rev),
            );
        }
    }

    /// A progress notification at p promises every event up to p was sent.
    fn check_progress(&mut self, st: &Stream<'_>, resp: &WatchResponse) {
        self.rep.progress += 1;
        let (si, k, exp) = (st.si, st.k, st.exp);
        let p = resp.header_rev;
        let due = exp.partition_point(|e| e.rev() <= p);
        if k < due && !st.broken {
            self.push(
                si,
                format!(
                    "progress notification at revision {p} with {k} of the {due} events up to it delivered (next due {:?})",
                    exp[k]
                ),
            );
        }
        if let Some(l) = st.last_rev
            && p < l
        {
            self.push(
                si,
                format!("progress notification at revision {p} after an event at {l}"),
            );
        }
    }

    /// The events of response `ri`: a revision's events arrive together,
    /// and each is the next the store has for the filter.
    fn check_events(&mut self, st: &mut Stream<'_>, ri: usize, resp: &WatchResponse) {
        let si = st.si;
        if let (Some(l), Some(first)) = (st.last_rev, resp.events.first())
            && first.rev() == l
            && !st.seg.responses[..ri]
                .iter()
                .rev()
                .find(|r| !r.events.is_empty())
                .is_some_and(|r| r.fragment)
        {
            self.push(si, format!("revision {l} split across two responses"));
        }
        let prev_kv = self.w.filter.prev_kv;
        let exp = st.exp;
        for ev in &resp.events {
            self.rep.events += 1;
            if st.broken {
                continue;
            }
            let ok = exp
                .get(st.k)
                .is_some_and(|want| ev.same(want, prev_kv) && (prev_kv || ev.prev.is_none()));
            if !ok {
                let m = match exp.get(st.k) {
                    None => format!("{ev:?} after all {} events the store has", exp.len()),
                    Some(want) if ev.rev() > want.rev() => {
                        format!("gap: got {ev:?} where {want:?} was due")
                    }
                    Some(want) if ev.rev() < want.rev() || Some(ev.rev()) < st.last_rev => {
                        format!("duplicate or out of order: got {ev:?} where {want:?} was due")
                    }
                    Some(want) => format!("got {ev:?}, the store has {want:?}"),
                };
                self.push(si, m);
                st.broken = true;
                continue;
            }
            st.k += 1;
            st.last_rev = Some(ev.rev());
        }
    }

    /// The stream ended at a revision boundary (the client resumes after
    /// its last event, so a partly delivered revision is lost).
    fn check_boundary(&mut self, st: &Stream<'_>) {
        if let Some(l) = st.last_rev {
            let k = st.k;
            let due = st.exp.partition_point(|e| e.rev() <= l);
            if k < due {
                self.push(
                    st.si,
                    format!("revision {l} only partly delivered ({k} of {due} events)"),
                );
            }
        }
    }

    /// How the stream ended: a compaction cancel must be true, and the
    /// last stream, if still open, must have caught up by `through`.
    fn check_end(&mut self, st: &Stream<'_>, compactions: &[CompactionCall], through: Option<i64>) {
        match &st.seg.end {
            SegmentEnd::Compacted {
                at,
                compact_revision: c,
            } => self.check_compaction_cancel(st, *at, *c, compactions),
            SegmentEnd::Open if st.si + 1 == self.w.segments.len() => {
                if let Some(t) = through {
                    self.check_caught_up(st, t);
                }
            }
            _ => {}
        }
    }

    /// A cancel "compacted at c" is true only if the stream needed a
    /// revision below c and someone had asked for a compaction reaching c.
    fn check_compaction_cancel(
        &mut self,
        st: &Stream<'_>,
        at: Nanos,
        c: i64,
        compactions: &[CompactionCall],
    ) {
        self.rep.compacted += 1;
        let next = st.last_rev.map_or(st.seg.start_rev, |l| l + 1);
        let requested = compactions
            .iter()
            .filter(|x| x.call <= at)
            .map(|x| x.rev)
            .max()
            .unwrap_or(0);
        if next >= c {
            self.push(
                st.si,
                format!(
                    "cancelled as compacted at {c}, but it needed revision {next}, which was not compacted"
                ),
            );
        } else if c > requested {
            self.push(
                st.si,
                format!(
                    "cancelled as compacted at {c}, but compactions requested by then reach only {requested}"
                ),
            );
        }
    }

    /// The last stream, still open at the end, delivered everything up to
    /// revision `t`.
    fn check_caught_up(&mut self, st: &Stream<'_>, t: i64) {
        let (k, exp) = (st.k, st.exp);
        let due = exp.partition_point(|e| e.rev() <= t);
        if k < due {
            self.push(
                st.si,
                format!(
                    "still open at the end with {k} of the {due} events up to revision {t} (next due {:?})",
                    exp[k]
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_history::tests::{b, log_of};

    fn log() -> RevisionLog {
        log_of(&[
            (2, &[("a1", Some("1"))]),
            (3, &[("a2", Some("1")), ("a3", Some("1"))]),
            (4, &[("b1", Some("1"))]),
            (5, &[("a1", None)]),
            (6, &[("a2", Some("2"))]),
        ])
    }

    fn filter() -> WatchFilter {
        WatchFilter {
            key: b("a"),
            range_end: b("b"),
            prev_kv: false,
            no_put: false,
            no_delete: false,
        }
    }

    /// The store's events for `a*` at the given revisions, without prev.
    fn evs(log: &RevisionLog, revs: &[i64]) -> Vec<Ev> {
        revs.iter()
            .flat_map(|r| log.events_at(*r).to_vec())
            .filter(|e| filter().wants(e))
            .map(|e| e.without_prev())
            .collect()
    }

    fn resp(at: Nanos, events: Vec<Ev>) -> WatchResponse {
        WatchResponse {
            at,
            header_rev: events.last().map_or(0, Ev::rev),
            events,
            fragment: false,
        }
    }

    fn progress(at: Nanos, rev: i64) -> WatchResponse {
        WatchResponse {
            at,
            header_rev: rev,
            events: vec![],
            fragment: false,
        }
    }

    fn seg(ep: &str, start: i64, responses: Vec<WatchResponse>, end: SegmentEnd) -> Segment {
        Segment {
            responses,
            end,
            ..Segment::new(ep, start, 0)
        }
    }

    fn watcher(segments: Vec<Segment>) -> WatcherHistory {
        WatcherHistory {
            name: "w".into(),
            filter: filter(),
            segments,
        }
    }

    fn broken() -> SegmentEnd {
        SegmentEnd::Broken {
            at: 1,
            reason: "killed".into(),
        }
    }

    #[test]
    fn a_watcher_resumed_on_another_server_passes() {
        let l = log();
        let w = watcher(vec![
            seg(
                "g0",
                2,
                vec![resp(1, evs(&l, &[2])), resp(2, evs(&l, &[3]))],
                broken(),
            ),
            seg(
                "g1",
                4,
                vec![progress(3, 4), resp(4, evs(&l, &[5, 6])), progress(5, 6)],
                SegmentEnd::Open,
            ),
        ]);
        let r = check_watcher(&l, &w, &[], Some(6));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.events, r.progress, r.segments), (5, 2, 2));
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_violations() {
        let l = log();
        // Revision 3 never delivered.
        let gap = watcher(vec![seg(
            "g0",
            2,
            vec![resp(1, evs(&l, &[2, 5]))],
            SegmentEnd::Open,
        )]);
        assert!(format!("{:?}", check_watcher(&l, &gap, &[], None).violations).contains("gap"));
        // Resumed correctly from 4 but the server replays 3.
        let dup = watcher(vec![
            seg("g0", 2, vec![resp(1, evs(&l, &[2, 3]))], broken()),
            seg("g1", 4, vec![resp(2, evs(&l, &[3, 5]))], SegmentEnd::Open),
        ]);
        assert!(
            format!("{:?}", check_watcher(&l, &dup, &[], None).violations)
                .contains("duplicate or out of order")
        );
        let mut swapped = evs(&l, &[2, 3]);
        swapped.swap(0, 1);
        let order = watcher(vec![seg("g0", 2, vec![resp(1, swapped)], SegmentEnd::Open)]);
        assert!(!check_watcher(&l, &order, &[], None).violations.is_empty());
        // The right revisions with a wrong value.
        let mut wrong = evs(&l, &[2]);
        wrong[0].kv.value = b("X");
        let bad = watcher(vec![seg("g0", 2, vec![resp(1, wrong)], SegmentEnd::Open)]);
        assert!(
            format!("{:?}", check_watcher(&l, &bad, &[], None).violations)
                .contains("the store has")
        );
    }

    #[test]
    fn a_revision_is_delivered_whole_and_in_one_response() {
        let l = log();
        let three = evs(&l, &[3]);
        let split = watcher(vec![seg(
            "g0",
            3,
            vec![
                resp(1, vec![three[0].clone()]),
                resp(2, vec![three[1].clone()]),
            ],
            SegmentEnd::Open,
        )]);
        assert!(format!("{:?}", check_watcher(&l, &split, &[], None).violations).contains("split"));
        let partial = watcher(vec![
            seg("g0", 3, vec![resp(1, vec![three[0].clone()])], broken()),
            seg("g1", 4, vec![resp(2, evs(&l, &[5]))], SegmentEnd::Open),
        ]);
        assert!(
            format!("{:?}", check_watcher(&l, &partial, &[], None).violations)
                .contains("partly delivered")
        );
    }

    #[test]
    fn progress_ahead_of_events_is_a_violation() {
        let l = log();
        let w = watcher(vec![seg(
            "g0",
            2,
            vec![resp(1, evs(&l, &[2])), progress(2, 5)],
            SegmentEnd::Open,
        )]);
        assert!(
            format!("{:?}", check_watcher(&l, &w, &[], None).violations)
                .contains("progress notification at revision 5")
        );
        let back = watcher(vec![seg(
            "g0",
            2,
            vec![resp(1, evs(&l, &[2, 3])), progress(2, 2)],
            SegmentEnd::Open,
        )]);
        assert!(
            format!("{:?}", check_watcher(&l, &back, &[], None).violations)
                .contains("after an event at 3")
        );
    }

    #[test]
    fn compaction_cancels_must_be_true() {
        let l = log();
        let cancel = |c| SegmentEnd::Compacted {
            at: 10,
            compact_revision: c,
        };
        let comp = [CompactionCall { rev: 5, call: 5 }];
        // Needed revision 4, compacted at 5: true.
        let ok = watcher(vec![seg(
            "g0",
            2,
            vec![resp(1, evs(&l, &[2, 3]))],
            cancel(5),
        )]);
        assert!(check_watcher(&l, &ok, &comp, None).violations.is_empty());
        // Claims compaction at 5 when nobody compacted.
        assert!(
            format!("{:?}", check_watcher(&l, &ok, &[], None).violations)
                .contains("requested by then")
        );
        // Needed revision 6, which a compaction at 5 keeps.
        let lie = watcher(vec![seg(
            "g0",
            2,
            vec![resp(1, evs(&l, &[2, 3, 5]))],
            cancel(5),
        )]);
        assert!(
            format!("{:?}", check_watcher(&l, &lie, &comp, None).violations)
                .contains("not compacted")
        );
    }

    #[test]
    fn after_a_compaction_cancel_the_relist_sets_the_resume_point() {
        let l = log();
        let comp = [CompactionCall { rev: 5, call: 5 }];
        let cancel = SegmentEnd::Compacted {
            at: 10,
            compact_revision: 5,
        };
        // Relisted at 5: resumes at 6 after a failed open there; the
        // events before the cancel do not set the resume point any more.
        let relisted = |second: i64| {
            watcher(vec![
                seg("g0", 2, vec![resp(1, evs(&l, &[2]))], cancel.clone()),
                seg("g1", 6, vec![], broken()),
                seg(
                    "g0",
                    second,
                    vec![resp(11, evs(&l, &[6]))],
                    SegmentEnd::Open,
                ),
            ])
        };
        let r = check_watcher(&l, &relisted(6), &comp, Some(6));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // But the stream after the failed open must still start where it did.
        assert!(
            format!(
                "{:?}",
                check_watcher(&l, &relisted(5), &comp, Some(6)).violations
            )
            .contains("not at 6")
        );
    }

    #[test]
    fn an_open_stream_must_catch_up_by_the_end() {
        let l = log();
        let w = watcher(vec![seg(
            "g0",
            2,
            vec![resp(1, evs(&l, &[2, 3]))],
            SegmentEnd::Open,
        )]);
        assert!(
            format!("{:?}", check_watcher(&l, &w, &[], Some(6)).violations).contains("still open")
        );
        assert!(check_watcher(&l, &w, &[], Some(4)).violations.is_empty());
    }

    #[test]
    fn prev_kv_is_checked_when_asked_for() {
        let l = log();
        let mut f = filter();
        f.prev_kv = true;
        let with: Vec<Ev> = [2, 3, 5, 6]
            .iter()
            .flat_map(|r| l.events_at(*r).to_vec())
            .filter(|e| f.wants(e))
            .collect();
        let mut w = WatcherHistory {
            name: "p".into(),
            filter: f,
            segments: vec![seg("m0", 2, vec![resp(1, with.clone())], SegmentEnd::Open)],
        };
        assert!(check_watcher(&l, &w, &[], Some(6)).violations.is_empty());
        w.segments[0].responses[0].events[3].prev = None;
        assert!(!check_watcher(&l, &w, &[], Some(6)).violations.is_empty());
    }
}
