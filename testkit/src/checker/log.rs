//! Everything one watcher of a test received, whole, in order: what
//! [`super::check_watcher`] and [`super::check_list_then_watch`] judge.

use lookout_proto::mvccpb::Event;
use lookout_proto::pb::{WatchCreateRequest, WatchResponse};

use super::spec::{WatchSpec, rev_of};

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
