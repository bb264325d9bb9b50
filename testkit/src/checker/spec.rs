//! What a watcher asked for, in etcd's terms: a key range, a start
//! revision, `prev_kv` and the put/delete filters.

use bytes::Bytes;
use lookout_proto::mvccpb::{Event, event::EventType};
use lookout_proto::pb::{WatchCreateRequest, watch_create_request::FilterType};

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

    /// Whether an event of the store belongs in this watcher's stream.
    pub fn wants(&self, ev: &Event) -> bool {
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

/// The revision of an event (its kv's mod_revision).
pub(super) fn rev_of(ev: &Event) -> i64 {
    ev.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}
