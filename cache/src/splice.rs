//! Watchers starting below the history ring: an upstream watch from their
//! start revision feeds them until it reaches the newer half of the ring,
//! where they switch to the ring (and then to the live stream).
//!
//! ```text
//!   upstream watch (cache hull, from start) ──> [start .. handover)  Direct
//!                  first rev in the ring's newer half (handover) ──> ring cursor
//! ```
//!
//! The splice watch covers the cache's whole hull, not just the watcher's
//! range: the ring's events are a subset of the hull's, so as soon as the
//! ring holds anything the upstream watch delivers a revision at or above the
//! ring's middle and the hand-over happens without relying on progress
//! notifications (which etcd before 3.4.25 may send ahead of events).
//! Handing over in the ring's newer half rather than at its oldest revision
//! leaves the consumer half a ring of slack before eviction.

use std::sync::Arc;

use lookout_proto::pb::WatchCreateRequest;

use crate::backoff::Backoff;
use crate::error::is_compacted_status;
use crate::event::CachedEvent;
use crate::frame::{FrameHead, WatchFrame};
use crate::group::GroupSpec;
use crate::inner::CacheInner;
use crate::stream::lifecycle::remove_watcher;
use crate::stream::state::{SpliceStep, StreamShared};
use crate::upstream::WatchMsg;

pub(crate) fn spawn(
    cache: Arc<CacheInner>,
    stream: Arc<StreamShared>,
    watch_id: i64,
    spec: Arc<GroupSpec>,
    start: i64,
) -> tokio::task::AbortHandle {
    cache
        .metrics
        .splices
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(run(cache, stream, watch_id, spec, start)).abort_handle()
}

async fn run(
    cache: Arc<CacheInner>,
    stream: Arc<StreamShared>,
    watch_id: i64,
    spec: Arc<GroupSpec>,
    start: i64,
) {
    let mut next = start;
    let mut backoff = Backoff::new(cache.config.backoff_base, cache.config.backoff_max);
    let (key, range_end) = cache.hull.to_request();
    loop {
        let req = WatchCreateRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            start_revision: next,
            // An index filter needs each entry's old value to see it move
            // out, so it asks for prev_kv whatever the client asked.
            prev_kv: spec.prev_kv || spec.filter.is_some(),
            ..Default::default()
        };
        let mut watch = match cache.upstream.watch(req).await {
            Ok(w) => w,
            Err(s) if is_compacted_status(&s) => {
                cancel_compacted(&cache, &stream, watch_id, 0);
                return;
            }
            Err(s) => {
                tracing::debug!(error = %s, "splice watch failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        loop {
            match watch.recv().await {
                Ok(Some(WatchMsg::Events { events, .. })) => {
                    backoff.reset();
                    // Encode outside any lock; only matching events are kept.
                    let batch: Vec<(i64, Option<Arc<CachedEvent>>)> = events
                        .iter()
                        .map(|e| {
                            let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                            let ev =
                                Arc::new(CachedEvent::from_event_indexed(e, &cache.config.indexes));
                            (rev, spec.resolve(&ev).cloned())
                        })
                        .collect();
                    if !stream
                        .wait_for_space(watch_id, cache.config.stream_queue_bytes)
                        .await
                    {
                        return;
                    }
                    match stream.splice_deliver(&cache.history, watch_id, next, batch, spec.prev_kv)
                    {
                        SpliceStep::Gone | SpliceStep::HandedOver => return,
                        SpliceStep::Continue { next: n } => next = n,
                    }
                }
                Ok(Some(WatchMsg::Compacted {
                    compact_revision, ..
                })) => {
                    cancel_compacted(&cache, &stream, watch_id, compact_revision);
                    return;
                }
                Ok(Some(WatchMsg::Created { .. } | WatchMsg::Progress { .. })) => {}
                Ok(Some(WatchMsg::Canceled { reason, .. })) => {
                    tracing::debug!(%reason, "splice watch cancelled upstream; retrying");
                    break;
                }
                Ok(None) => break,
                Err(s) => {
                    tracing::debug!(error = %s, "splice watch broke; retrying");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn cancel_compacted(
    cache: &CacheInner,
    stream: &StreamShared,
    watch_id: i64,
    compact_revision: i64,
) {
    // No revision in the header: etcd's compact cancel carries none.
    let frame = WatchFrame::new(
        &FrameHead {
            header: cache.header(0),
            watch_id,
            canceled: true,
            compact_revision: compact_revision.max(1),
            ..Default::default()
        },
        Vec::new(),
        false,
    );
    if remove_watcher(cache, stream, watch_id, frame) {
        cache
            .metrics
            .compact_cancels
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
