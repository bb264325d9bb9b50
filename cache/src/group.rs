//! What makes watchers share a group, and which event a group's watchers
//! receive for an applied one. Its own room because the registry (which
//! groups them), the streams (which hold a watcher's spec) and the splice
//! tasks (which filter upstream events with it) all need it, and none of
//! them should import another for it.

use std::sync::Arc;

use crate::event::{CachedEvent, EventKind};
use crate::keys::KeyRange;
use crate::secondary::IndexFilter;

/// What makes watchers share a group: same range, same filters, same
/// prev_kv, same index filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupSpec {
    pub(crate) range: KeyRange,
    pub(crate) no_put: bool,
    pub(crate) no_delete: bool,
    pub(crate) prev_kv: bool,
    pub(crate) filter: Option<IndexFilter>,
}

impl GroupSpec {
    pub(crate) fn accepts_kind(&self, kind: EventKind) -> bool {
        match kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        }
    }

    /// The event this group's watchers receive for `ev`, if any: `ev`
    /// itself, or with an index filter the DELETE of an entry that stopped
    /// matching (`ev` is a Put that changed the entry's value away from the
    /// filter's).
    pub(crate) fn resolve<'a>(&self, ev: &'a Arc<CachedEvent>) -> Option<&'a Arc<CachedEvent>> {
        if !self.range.contains(ev.key()) {
            return None;
        }
        let out = match &self.filter {
            None => ev,
            Some(f) => {
                let (old, new) = ev.index_values(f.index);
                if new == Some(&f.value) {
                    ev
                } else if old == Some(&f.value) {
                    match ev.kind() {
                        EventKind::Delete => ev,
                        EventKind::Put => ev.moved_out()?,
                    }
                } else {
                    return None;
                }
            }
        };
        self.accepts_kind(out.kind()).then_some(out)
    }
}
