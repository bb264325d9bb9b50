//! How long faults stopped writes and watches, and how fast a watcher
//! moved to the other gateway when its own was killed.
//!
//! ```text
//!   write stall of a fault: the longest time without an acknowledged write
//!     from the fault's start to the first ack 3 s after it was healed
//!   watch stall: the same over events received by the busiest watchers
//!   failover: kill -9 of a gateway -> first event on the other gateway,
//!     for every watcher that was on the killed one (from when that event
//!     was first seen, if it was written after the kill)
//! ```

use std::time::Duration;

use lookout_testkit::kv_history::Nanos;
use lookout_testkit::watch_check::{SegmentEnd, WatcherHistory};

use crate::nemesis::{FaultKind, FaultRecord};

/// Watchers whose ranges see most writes (the watch stall uses them).
const BUSY: [&str; 3] = ["gw-b", "gw-b-prev", "m-b-prev"];
/// Measured up to this long after healing.
const AFTER: Nanos = 3_000_000_000;

/// One fault's stalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub kind: FaultKind,
    pub write: Duration,
    pub watch: Duration,
}

/// The longest gap between `start` and successive `times` (sorted) up to
/// the first time at or after `until`.
fn longest_gap(times: &[Nanos], start: Nanos, until: Nanos) -> Duration {
    let mut prev = start;
    let mut worst = 0;
    for &t in times.iter().skip_while(|t| **t < start) {
        worst = worst.max(t - prev);
        prev = t;
        if t >= until {
            break;
        }
    }
    Duration::from_nanos(worst)
}

/// Every fault's write and watch stall.
pub fn stalls(
    faults: &[FaultRecord],
    write_acks: &[Nanos],
    watchers: &[WatcherHistory],
) -> Vec<Stall> {
    let mut events: Vec<Vec<Nanos>> = Vec::new();
    for w in watchers.iter().filter(|w| BUSY.contains(&w.name.as_str())) {
        let mut t: Vec<Nanos> = w
            .segments
            .iter()
            .flat_map(|s| {
                s.responses
                    .iter()
                    .filter(|r| !r.events.is_empty())
                    .map(|r| r.at)
            })
            .collect();
        t.sort_unstable();
        events.push(t);
    }
    faults
        .iter()
        .map(|f| Stall {
            kind: f.kind,
            write: longest_gap(write_acks, f.start, f.healed + AFTER),
            watch: events
                .iter()
                .map(|t| longest_gap(t, f.start, f.healed + AFTER))
                .max()
                .unwrap_or_default(),
        })
        .collect()
}

/// One watcher's move to the other gateway after a kill, each time from
/// the kill.
#[derive(Debug, Clone)]
pub struct Failover {
    pub watcher: String,
    pub gateway: String,
    /// The stream on the killed gateway ended.
    pub broke: Duration,
    /// The next stream was created (None: it never was).
    pub created: Option<Duration>,
    /// Its first event arrived: from the kill, or from when the event was
    /// first seen if it was written after the kill.
    pub first_event: Duration,
}

/// For each gateway kill: kill -> first event on the next stream, for each
/// watcher whose stream on that gateway broke within 2 s of the kill. An
/// event written after the kill counts from when a member's watch first
/// saw it (`seen`, by revision): a watcher on a quiet range is not slow
/// for waiting for the next write.
pub fn failover(
    faults: &[FaultRecord],
    watchers: &[WatcherHistory],
    seen: &std::collections::BTreeMap<i64, Nanos>,
) -> Vec<Failover> {
    let mut out = Vec::new();
    for f in faults.iter().filter(|f| f.kind == FaultKind::KillGateway) {
        for w in watchers {
            for pair in w.segments.windows(2) {
                let (a, next) = (&pair[0], &pair[1]);
                let SegmentEnd::Broken { at, .. } = a.end else {
                    continue;
                };
                if a.endpoint != f.target || at < f.start || at > f.start + 2_000_000_000 {
                    continue;
                }
                let since = |t: Nanos| Duration::from_nanos(t.saturating_sub(f.start));
                if let Some(first) = next.responses.iter().find(|r| !r.events.is_empty()) {
                    out.push(Failover {
                        watcher: w.name.clone(),
                        gateway: next.endpoint.clone(),
                        broke: since(at),
                        created: next.created.map(|(t, _)| since(t)),
                        first_event: Duration::from_nanos(
                            first.at.saturating_sub(
                                first
                                    .events
                                    .first()
                                    .and_then(|e| seen.get(&e.rev()))
                                    .map_or(f.start, |s| (*s).max(f.start)),
                            ),
                        ),
                    });
                }
            }
        }
    }
    out
}

/// The `q` quantile (0..=1) of `v`, or zero when empty.
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i.min(s.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_runs_from_the_fault_to_the_first_ack_after_it() {
        let s = 1_000_000_000;
        let acks = [s / 2, s, 2 * s, 5 * s, 5 * s + 10, 9 * s];
        // Fault at 1.5 s, healed at 4 s: gaps 0.5 (1.5->2), 3 (2->5): 3 s.
        assert_eq!(longest_gap(&acks, 3 * s / 2, 4 * s), Duration::from_secs(3));
        // Stops at the first ack after `until`.
        assert_eq!(longest_gap(&acks, 5 * s, 5 * s), Duration::ZERO);
        assert_eq!(
            quantile(&[Duration::from_millis(1), Duration::from_millis(9)], 0.99),
            Duration::from_millis(9)
        );
    }
}
