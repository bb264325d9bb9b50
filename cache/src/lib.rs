//! `lookout-cache`: the watch cache, free of any transport server.
//!
//! It owns the upstream client ([`Upstream`], [`EtcdUpstream`]), the
//! list-then-watch loop, the current data as an immutable [`Snapshot`]
//! swapped atomically, the event history ring, and the fan-out of events to
//! watchers grouped by key range.
//!
//! ```text
//!  upstream (lookout store | etcd) ── list @R, watch hull from R+1 ──┐
//!                                                                    v
//!   Cache::start ─> applier: event ─> CachedEvent (encoded once) ─> ring
//!                          │                                  └─> snapshot (ArcSwap)
//!                          └─> registry: index.stab(key) ─> groups ─> streams' queues
//!   gateway: cache.range(req) / wait_for_revision(r) ─> Snapshot ─> evaluate_range
//!            cache.open_stream() ─> WatchHandle (create/cancel/progress)
//!                                   WatchFrames::next ─> WatchFrame (head + shared bytes)
//! ```
//!
//! Guarantees: a watcher receives every event at or after its start
//! revision, in order, once, or is cancelled with `compact_revision`; a
//! stalled consumer never slows the applier or other streams (past its byte
//! budget it reads the ring by cursor; off the ring it is compact-cancelled);
//! a snapshot is always one consistent revision.
//!
//! It must never import tonic server types, openraft or redb, and never
//! invent, drop or repeat an event: when history is lost (an upstream
//! compaction while disconnected) it relists and cancels the affected
//! watchers with `compact_revision` instead.
//!
//! For the gateway: [`Cache::start`] with an [`EtcdUpstream`]; serve
//! serializable reads with [`Cache::range`], linearizable ones with
//! [`Cache::linearizable_snapshot`] + [`Cache::range_at`]; forward writes with
//! [`Cache::upstream`] and read your write with [`Cache::wait_for_revision`];
//! per gRPC watch stream call [`Cache::open_stream`] and write each
//! [`WatchFrame`] with [`WatchFrame::write_to`] through a pass-through codec.
//! Map errors once with `tonic::Status::from(CacheError)`.

mod backoff;
mod cache;
mod error;
mod etcd;
mod event;
mod frame;
mod gosort;
mod history;
mod index;
mod keys;
mod metrics;
mod range;
mod registry;
mod snapshot;
mod splice;
mod stream;
mod upstream;

pub use backoff::Backoff;
#[doc(hidden)]
pub use cache::BenchHarness;
pub use cache::{Cache, CacheConfig};
pub use error::CacheError;
pub use etcd::{EtcdUpstream, EtcdUpstreamConfig};
pub use event::{CachedEvent, EventKind};
pub use frame::{FrameHead, WatchFrame, encode_watch_response};
pub use keys::{KeyRange, prefix_end};
pub use metrics::CacheMetrics;
pub use range::{evaluate_range, validate_range};
pub use snapshot::Snapshot;
pub use stream::{WatchFrames, WatchHandle};
pub use upstream::{ErrorHook, ListResult, Upstream, UpstreamFuture, UpstreamWatch, WatchMsg};
