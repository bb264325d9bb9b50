//! The control half of a watch stream ([`WatchHandle`]): opening a
//! stream, creating watchers (picking each one's phase and start), cancel,
//! progress requests and refusals. It queues answers; it never builds
//! event responses (see `frames`).

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use lookout_proto::pb::{WatchCreateRequest, watch_create_request::FilterType};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::CacheError;
use crate::frame::{FrameHead, WatchFrame};
use crate::group::GroupSpec;
use crate::inner::CacheInner;
use crate::keys::KeyRange;
use crate::splice;
use crate::stream::frames::WatchFrames;
use crate::stream::lifecycle::{close, remove_watcher};
use crate::stream::state::{InitialState, Pending, Phase, StreamShared, StreamState, Watcher};

/// The control half of a watch stream: create, cancel, request progress.
/// Cheap to clone; the gateway's request-reading task holds it.
#[derive(Debug, Clone)]
pub struct WatchHandle {
    shared: Arc<StreamShared>,
    cache: Arc<CacheInner>,
}

pub(crate) fn open(cache: &Arc<CacheInner>) -> (WatchHandle, WatchFrames) {
    let shared = Arc::new(StreamShared {
        id: cache.next_stream.fetch_add(1, Relaxed),
        state: Mutex::new(StreamState::default()),
        wake: Notify::new(),
        space: Notify::new(),
    });
    cache.registry.write().add_stream(&shared);
    cache.metrics.streams.fetch_add(1, Relaxed);
    let interval = cache.config.progress_notify_interval;
    (
        WatchHandle {
            shared: shared.clone(),
            cache: cache.clone(),
        },
        WatchFrames::new(shared, cache.clone(), interval),
    )
}

impl WatchHandle {
    /// Creates a watcher as etcd's `WatchCreateRequest` describes it and
    /// returns its watch id. The `created` response (and everything after)
    /// comes out of [`WatchFrames::next`], in order.
    ///
    /// `start_revision`: `<= 0` is "now"; inside the history ring replays from
    /// it; older but not compacted upstream is served by an upstream watch
    /// spliced in by revision; compacted upstream ends in a cancel with
    /// `compact_revision`, as etcd does.
    ///
    /// # Errors
    /// [`CacheError::NotReady`] before the initial list; [`CacheError::OutOfScope`]
    /// for a range outside the cached prefixes; [`CacheError::EmptyWatchRange`]
    /// and [`CacheError::DuplicateWatchId`] (etcd's created+canceled response
    /// with watch id -1 is queued for these); [`CacheError::Closed`].
    pub fn create(&self, req: &WatchCreateRequest) -> Result<i64, CacheError> {
        let cache = &self.cache;
        if !cache.is_ready() {
            return Err(CacheError::NotReady);
        }
        let range = KeyRange::from_request(&req.key, &req.range_end);
        if range.is_empty() {
            self.queue_create_failure(CacheError::EmptyWatchRange);
            return Err(CacheError::EmptyWatchRange);
        }
        if !cache.covers(&range) {
            return Err(CacheError::OutOfScope);
        }
        let filter = cache
            .config
            .indexes
            .resolve(&range, &req.index, &req.value)?;
        // An initial state is never older than the revision the client
        // says it has seen (start_revision - 1): the snapshot taken below
        // is at or after the fan-out revision read here.
        if req.initial_state && req.start_revision > 1 {
            let cached = cache.fanout_rev.load(Acquire);
            if cached < req.start_revision - 1 {
                return Err(CacheError::InitialStateBehind {
                    wanted: req.start_revision,
                    needed: req.start_revision - 1,
                    cached,
                });
            }
        }
        let spec = GroupSpec {
            range,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            filter,
        };
        // Lock order everywhere: registry -> stream -> history. The registry
        // write lock also keeps the applier's fan-out out while we pick the
        // watcher's starting point.
        let mut reg = cache.registry.write();
        let mut st = self.shared.state.lock();
        if st.closed {
            return Err(CacheError::Closed);
        }
        let id = if req.watch_id == 0 {
            while st.watchers.contains_key(&st.next_id) {
                st.next_id += 1;
            }
            st.next_id += 1;
            st.next_id - 1
        } else if st.watchers.contains_key(&req.watch_id) {
            drop(st);
            drop(reg);
            self.queue_create_failure(CacheError::DuplicateWatchId);
            return Err(CacheError::DuplicateWatchId);
        } else {
            req.watch_id
        };
        let (group, spec) = reg.join(spec, &self.shared, &cache.metrics);
        let fanout = cache.fanout_rev.load(Acquire);
        let ring_start = cache.history.read().start();
        let start = req.start_revision;
        // The initial state is the snapshot at R; the watcher then reads the
        // ring from R + 1 (taken under the registry lock, so no batch above
        // R can be fanned out before the watcher exists).
        let initial = req.initial_state.then(|| cache.snapshot_now()).map(|snap| {
            Box::new(InitialState {
                snap,
                after: None,
                permit: None,
            })
        });
        let (phase, next_rev) = if let Some(i) = &initial {
            (Phase::Initial, i.snap.revision() + 1)
        } else if start <= 0 {
            (Phase::Live, fanout + 1)
        } else if start > fanout {
            (Phase::Live, start)
        } else if start >= ring_start {
            (Phase::Catchup, start)
        } else {
            (Phase::Upstream, start)
        };
        // A stream already over budget gets no live pushes: start by reading
        // the ring, which turns Live (and clears the overflow) at its end.
        let phase = if phase == Phase::Live && st.overflowed {
            Phase::Catchup
        } else {
            phase
        };
        let created_rev = initial.as_ref().map_or(fanout, |i| i.snap.revision());
        let created = WatchFrame::new(
            &FrameHead {
                header: cache.header(created_rev),
                watch_id: id,
                created: true,
                ..Default::default()
            },
            Vec::new(),
            false,
        );
        st.queue.push_back(Pending::Control {
            frame: Box::new(created),
            announces: Some(id),
        });
        let slot = st.watchers.insert(
            id,
            Watcher {
                group,
                spec: spec.clone(),
                next_rev,
                phase,
                progress_notify: req.progress_notify,
                fragment: req.fragment,
                sent_since_tick: false,
                splice: None,
                announced: false,
                initial,
            },
        );
        st.groups.entry(group).or_default().push(slot);
        if matches!(phase, Phase::Catchup | Phase::Initial) {
            st.catchup.push_back(id);
        }
        cache.metrics.watchers.fetch_add(1, Relaxed);
        if phase == Phase::Upstream {
            let h = splice::spawn(cache.clone(), self.shared.clone(), id, spec, start);
            st.watchers.get_mut(&id).expect("just inserted").splice = Some(h);
        }
        drop(st);
        drop(reg);
        self.shared.wake.notify_one();
        Ok(id)
    }

    /// Cancels watcher `watch_id`; queues etcd's `canceled` response. False
    /// when no such watcher exists (etcd then answers nothing).
    pub fn cancel(&self, watch_id: i64) -> bool {
        let fanout = self.cache.fanout_rev.load(Acquire);
        let frame = WatchFrame::new(
            &FrameHead {
                header: self.cache.header(fanout),
                watch_id,
                canceled: true,
                ..Default::default()
            },
            Vec::new(),
            false,
        );
        remove_watcher(&self.cache, &self.shared, watch_id, frame)
    }

    /// etcd's `WatchProgressRequest`: a response with watch id -1 and a
    /// revision every watcher on the stream has fully received; deferred
    /// while any watcher is still catching up (as etcd >= 3.4.25 does).
    pub fn request_progress(&self) {
        let mut st = self.shared.state.lock();
        st.progress_requested = true;
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Closes the stream: every watcher is removed, `WatchFrames::next` ends.
    pub fn close(&self) {
        close(&self.cache, &self.shared);
    }

    /// etcd's answer to a create its watch stream refuses: created +
    /// canceled, watch id -1, the mvcc error's text as `cancel_reason`.
    fn queue_create_failure(&self, e: CacheError) {
        self.refuse(e.to_string());
    }

    /// Answers a create the caller will not pass to the cache (refused by
    /// the gateway: out of scope, over capacity) as etcd answers a create it
    /// cannot serve: created + canceled, watch id -1, with `reason`. The
    /// answer is queued in order with the other creates' answers, which
    /// clients match to their requests by position.
    pub fn refuse(&self, reason: String) {
        self.refuse_with_id(-1, reason)
    }

    /// [`WatchHandle::refuse`] naming the watch id the client asked for
    /// (etcd's answer to a watch outside the caller's permissions).
    pub fn refuse_with_id(&self, watch_id: i64, reason: String) {
        let fanout = self.cache.fanout_rev.load(Acquire);
        let frame = WatchFrame::new(
            &FrameHead {
                header: self.cache.header(fanout),
                watch_id,
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            },
            Vec::new(),
            false,
        );
        self.shared.push_control(Pending::Control {
            frame: Box::new(frame),
            announces: None,
        });
    }
}
