//! The store's watch hub: the registry of live watchers that each commit's
//! events are offered to, in revision order.
//!
//! A watcher becomes live only when it has already delivered every event
//! up to the hub's revision (registration is refused otherwise), so the
//! switch from history to live has no gap; the watch stream drops any live
//! event below its next revision, so it has no duplicate either. A stream
//! whose buffer is full is not waited for: its slot is removed and told to
//! catch up from history from the first revision it missed.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use lookout_proto::mvccpb::Event;
use tokio::sync::{Notify, mpsc};

use lookout_semantics::in_range;

/// Events of one revision that matched one slot's range.
#[derive(Debug)]
pub(crate) struct HubMsg {
    pub slot: u64,
    pub rev: i64,
    pub events: Vec<Event>,
}

/// What the hub tells a stream out of band: these slots were dropped for
/// being slow and must catch up from the given revision.
#[derive(Debug, Default)]
pub(crate) struct Lagged {
    // A std Mutex: held for a push or a drain, never across an await.
    pub slots: parking_lot::Mutex<Vec<(u64, i64)>>,
    pub notify: Notify,
}

#[derive(Debug)]
struct Slot {
    key: Bytes,
    range_end: Bytes,
    tx: mpsc::Sender<HubMsg>,
    lagged: Arc<Lagged>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Revision of the last published commit.
    rev: i64,
    next_slot: u64,
    slots: HashMap<u64, Slot>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    // parking_lot Mutex: publish and register are short, never await, and
    // must be mutually exclusive (that exclusion is the no-gap guarantee).
    inner: parking_lot::Mutex<Inner>,
}

impl Hub {
    pub fn new(rev: i64) -> Self {
        Self {
            inner: parking_lot::Mutex::new(Inner {
                rev,
                ..Default::default()
            }),
        }
    }

    pub fn rev(&self) -> i64 {
        self.inner.lock().rev
    }

    /// Registers a live slot for a watcher whose next undelivered revision
    /// is `next_rev`; `None` if events at or after `next_rev` were already
    /// published (the watcher must read more history first).
    pub fn register(
        &self,
        key: Bytes,
        range_end: Bytes,
        next_rev: i64,
        tx: mpsc::Sender<HubMsg>,
        lagged: Arc<Lagged>,
    ) -> Option<u64> {
        let mut g = self.inner.lock();
        if next_rev <= g.rev {
            return None;
        }
        let id = g.next_slot;
        g.next_slot += 1;
        g.slots.insert(
            id,
            Slot {
                key,
                range_end,
                tx,
                lagged,
            },
        );
        Some(id)
    }

    pub fn unregister(&self, slot: u64) {
        self.inner.lock().slots.remove(&slot);
    }

    /// The store jumped to `rev` without events (a snapshot was
    /// installed): every live slot is dropped and told to re-read history
    /// from the first revision it has not been offered.
    pub fn reset(&self, rev: i64) {
        let mut g = self.inner.lock();
        let from = g.rev + 1;
        for (id, slot) in g.slots.drain() {
            slot.lagged.slots.lock().push((id, from));
            slot.lagged.notify.notify_one();
        }
        g.rev = g.rev.max(rev);
    }

    /// Offers one commit batch's events (grouped by revision, ascending)
    /// to every slot, then advances the hub's revision to `rev`.
    pub fn publish(&self, batch: &[(i64, Vec<Event>)], rev: i64) {
        let mut g = self.inner.lock();
        let mut dead = Vec::new();
        for (&id, slot) in g.slots.iter() {
            for (r, events) in batch {
                let matched: Vec<Event> = events
                    .iter()
                    .filter(|e| {
                        e.kv.as_ref()
                            .is_some_and(|kv| in_range(&kv.key, &slot.key, &slot.range_end))
                    })
                    .cloned()
                    .collect();
                if matched.is_empty() {
                    continue;
                }
                let msg = HubMsg {
                    slot: id,
                    rev: *r,
                    events: matched,
                };
                match slot.tx.try_send(msg) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        slot.lagged.slots.lock().push((id, *r));
                        slot.lagged.notify.notify_one();
                        dead.push(id);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        dead.push(id);
                        break;
                    }
                }
            }
        }
        for id in dead {
            g.slots.remove(&id);
        }
        g.rev = g.rev.max(rev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookout_proto::mvccpb::KeyValue;

    fn ev(key: &str, rev: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.to_string().into(),
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn registration_refused_behind_the_hub_and_events_arrive_in_order() {
        let hub = Hub::new(5);
        let (tx, mut rx) = mpsc::channel(16);
        let lag = Arc::new(Lagged::default());
        assert!(
            hub.register("a".into(), "b".into(), 5, tx.clone(), lag.clone())
                .is_none()
        );
        let slot = hub.register("a".into(), "b".into(), 6, tx, lag).unwrap();
        hub.publish(
            &[(6, vec![ev("a", 6), ev("z", 6)]), (7, vec![ev("a1", 7)])],
            7,
        );
        let m = rx.try_recv().unwrap();
        assert_eq!((m.slot, m.rev, m.events.len()), (slot, 6, 1));
        let m = rx.try_recv().unwrap();
        assert_eq!((m.rev, m.events.len()), (7, 1));
        assert_eq!(hub.rev(), 7);
    }

    #[test]
    fn a_full_stream_is_dropped_and_told_where_to_resume() {
        let hub = Hub::new(1);
        let (tx, _rx) = mpsc::channel(1);
        let lag = Arc::new(Lagged::default());
        let slot = hub
            .register("a".into(), vec![0].into(), 2, tx, lag.clone())
            .unwrap();
        hub.publish(&[(2, vec![ev("a", 2)]), (3, vec![ev("b", 3)])], 3);
        assert_eq!(*lag.slots.lock(), vec![(slot, 3)]);
        // The slot is gone: later events are not offered.
        hub.publish(&[(4, vec![ev("c", 4)])], 4);
        assert_eq!(lag.slots.lock().len(), 1);
    }
}
