//! What the watch scenarios share once the load has stopped: judging each
//! stream task's watchers against the store's history, resolving the
//! writer's unknown puts by it, and RSS per watcher.
//!
//! ```text
//!   StreamOutcome (WatchCheck per watcher) ──judge(truth, head)──> WatchStats of its group
//!   WriterReport (outcome per seq) ──seq -> revision of the history──> acked lost / unknown resolved
//! ```

use lookout_testkit::checker::CheckTotals;

use crate::hist::LatencyHist;
use crate::procstat::ProcStats;
use crate::result::WatchStats;
use crate::truth::History;
use crate::watch::StreamOutcome;
use crate::writer::{PutOutcome, WriterReport, WriterStats};

/// Adds one stream task's watchers, judged against `h` up to `head`, to
/// its group's figures; returns how many open watchers had not reached
/// `head`.
pub(crate) fn add_outcome(
    ws: &mut WatchStats,
    lat: &mut LatencyHist,
    o: &StreamOutcome,
    h: &History,
    head: i64,
) -> u64 {
    ws.created += o.created as u64;
    ws.resumes += o.resumes;
    ws.orphan_events += o.orphan_events;
    for e in &o.errors {
        if ws.errors.len() < 4 {
            ws.errors.push(e.clone());
        }
    }
    lat.merge(&o.latency);
    let mut totals = CheckTotals::default();
    let mut behind = 0;
    for c in &o.checks {
        totals.add(c, &c.judge(&h.truth, head));
        if c.is_open() && c.last_rev() < head {
            behind += 1;
        }
    }
    ws.checks.merge(&totals);
    behind
}

/// Every acknowledged put must be in the history at its revision; unknown
/// puts are resolved by it.
pub(crate) fn cross_check_writer(rep: &WriterReport, h: &History, st: &mut WriterStats) {
    if !h.truth.has_digest() {
        return;
    }
    for (i, o) in rep.outcomes.iter().enumerate() {
        let seq = rep.first_seq + i as u64;
        match o {
            PutOutcome::Acked(rev) => {
                if h.seq_rev.get(&seq) != Some(rev) {
                    st.acked_lost += 1;
                }
            }
            PutOutcome::Unknown => {
                if h.seq_rev.contains_key(&seq) {
                    st.unknown_applied += 1;
                } else {
                    st.unknown_absent += 1;
                }
            }
            PutOutcome::NotSent => {}
        }
    }
}

/// Server RSS grown between two readings (`before`, `after`, one per
/// measured process), per watcher, by process label.
pub(crate) fn rss_per_watcher(
    servers: &[ProcStats],
    before: &[u64],
    after: &[u64],
    watchers: u64,
) -> impl Iterator<Item = (String, f64)> {
    servers.iter().enumerate().map(move |(i, s)| {
        let grown =
            after.get(i).copied().unwrap_or(0) as f64 - before.get(i).copied().unwrap_or(0) as f64;
        (s.label.clone(), (grown / watchers as f64).round())
    })
}
