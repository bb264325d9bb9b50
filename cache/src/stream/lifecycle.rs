//! Taking watchers and streams down: a watcher's removal (client cancel,
//! splice compaction or failure) and a stream's close. Both leave the
//! registry's groups under the lock order registry -> stream.

use std::sync::atomic::Ordering::Relaxed;

use crate::frame::WatchFrame;
use crate::inner::CacheInner;
use crate::stream::state::{Pending, StreamShared};

/// Removes a watcher and queues `frame` (its cancel response) after whatever
/// was queued for it. Used by cancel, splice compaction and splice failures.
pub(crate) fn remove_watcher(
    cache: &CacheInner,
    shared: &StreamShared,
    watch_id: i64,
    frame: WatchFrame,
) -> bool {
    let mut reg = cache.registry.write();
    let mut st = shared.state.lock();
    let Some((slot, w)) = st.watchers.remove(&watch_id) else {
        return false;
    };
    if let Some(h) = &w.splice {
        h.abort();
    }
    if let Some(ids) = st.groups.get_mut(&w.group) {
        ids.retain(|s| *s != slot);
        if ids.is_empty() {
            st.groups.remove(&w.group);
        }
    }
    st.queue.push_back(Pending::Control {
        frame: Box::new(frame),
        announces: None,
    });
    reg.leave(w.group, shared.id, &cache.metrics);
    cache.metrics.watchers.fetch_sub(1, Relaxed);
    drop(st);
    drop(reg);
    shared.wake.notify_one();
    shared.space.notify_waiters();
    true
}

pub(super) fn close(cache: &CacheInner, shared: &StreamShared) {
    let mut reg = cache.registry.write();
    let mut st = shared.state.lock();
    if st.closed {
        return;
    }
    st.closed = true;
    for (_, w) in st.watchers.drain() {
        if let Some(h) = &w.splice {
            h.abort();
        }
        reg.leave(w.group, shared.id, &cache.metrics);
        cache.metrics.watchers.fetch_sub(1, Relaxed);
    }
    st.groups.clear();
    st.catchup.clear();
    st.queue.clear();
    st.queued_bytes = 0;
    reg.remove_stream(shared.id);
    cache.metrics.streams.fetch_sub(1, Relaxed);
    drop(st);
    drop(reg);
    shared.wake.notify_one();
    shared.space.notify_waiters();
}
