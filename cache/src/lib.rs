//! `lookout-cache`: the watch cache, free of any transport server.
//!
//! It owns the upstream client ([`Upstream`], [`EtcdUpstream`]), the
//! list-then-watch loop, the current data as an immutable [`Snapshot`]
//! swapped atomically, the event history ring, and the fan-out of events to
//! watchers grouped by key range. How a Range's options apply (limits,
//! filters, Go's sort order for ties) and what a key range means are
//! `lookout-semantics`', shared with the store, so a Range gets the same
//! answer from the cache as from the store it forwards to.
//!
//! ```text
//!  upstream (lookout store | etcd) ── list @R, watch hull from R+1 ──┐
//!                                                                    v
//!   Cache::start ─> applier: event ─> CachedEvent (encoded once, + index values) ─> ring
//!                          │                                  └─> snapshot + secondary indexes (ArcSwap)
//!                          └─> registry: index.stab(key) ─> groups ─> streams' queues
//!                                        filtered[(index, old|new value)].stab(key) ─> filtered groups
//!   gateway: cache.range(req) / wait_for_revision(r) ─> Snapshot ─> evaluate_range
//!            cache.open_stream() ─> WatchHandle (create/cancel/progress/refuse)
//!                                   WatchFrames::next_grpc ─> gRPC messages in a byte buffer
//!                                   WatchFrames::next ─> WatchFrame (head + shared bytes)
//!            cache.check_compaction(start) ─> one coalesced store probe ─> ring trimmed
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
//! # Where things live
//!
//! | concern | module |
//! |---|---|
//! | the front the gateway holds: reads, waits, opening streams | `cache` ([`Cache`]) |
//! | how a cache behaves | `config` ([`CacheConfig`]) |
//! | state the applier, front, streams and splice tasks share | `inner` |
//! | list-then-watch, applying a batch, fan-out call | `applier` |
//! | the upstream: trait, etcd client, reconnect backoff | `upstream`, `etcd`, `backoff` |
//! | data at one revision, its map key, secondary indexes | `snapshot`, `mapkey`, `secondary` |
//! | history ring | `history` |
//! | an event encoded once; watch response bytes | `event`, `frame` |
//! | Range over a snapshot | `range` |
//! | watch groups: spec, registry and fan-out, interval index, slots | `group`, `registry`, `index`, `slots` |
//! | watch streams: state, handle, lifecycle, production, catch-up, emit, sinks | `stream/` (map in its doc) |
//! | watchers below the ring (upstream splice) | `splice` |
//! | store compaction probes before past-revision watches | `compaction` |
//! | admission of initial states | `gate` |
//! | key ranges, errors, metrics | `keys`, `error`, `metrics` |
//!
//! Files depend one way: the front and the applier on the shared state,
//! the streams on the state and the registry, the registry on the
//! streams' state only; `python3 scripts/import-cycles.py cache` finds no
//! file importing one that imports it back.
//!
//! # For the gateway
//!
//! | need | call |
//! |---|---|
//! | start | [`Cache::start`]`(Arc::new(`[`EtcdUpstream::new`]`(..)), `[`CacheConfig`]`)`, then [`Cache::wait_ready`] |
//! | serializable Range | [`Cache::range`] (header filled, every option as etcd 3.4, ties sorted by Go's algorithm) |
//! | linearizable Range | [`Cache::linearizable_snapshot`] then [`Cache::range_at`]; [`CacheError::Timeout`] maps to Unavailable |
//! | Range at an old revision | [`CacheError::RevisionNotCached`] from `range`: forward with [`Cache::upstream`]`().range(..)` |
//! | Put/Delete/Txn/Compact/Lease* | [`Cache::upstream`]; then [`Cache::wait_for_revision`]`(w)` so the client reads its write |
//! | a gRPC Watch stream | [`Cache::open_stream`] -> ([`WatchHandle`], [`WatchFrames`]): `create` / `cancel` / `request_progress` / `refuse` from the request side; on the response side [`WatchFrames::next_grpc`] writes ready responses as gRPC messages straight into the connection's buffer (the hot path), or [`WatchFrames::next`] hands out [`WatchFrame`]s (head + shared events) for other encodings |
//! | a watch from a past revision | [`Cache::check_compaction`]`(start)` first: compactions made on the store directly or through another gateway then cancel it with `compact_revision`, as etcd does |
//! | /metrics | [`Cache::metrics`] ([`CacheMetrics`], plain atomics) |
//! | secondary indexes | [`CacheConfig::indexes`] ([`IndexSet`] of [`IndexDef::parse`]`("node@/p/=json:/spec/nodeName")`); requests carry `index`/`value` (filtered Range via [`Cache::range_at`], filtered Watch via [`WatchHandle::create`]); [`Cache::indexes`]`().resolve(..)` checks a filter early |
//! | watch with initial state | `initial_state` on the create: PUT pages at R from the snapshot, a marker (no events, revision R), live from R + 1; at most [`CacheConfig::max_concurrent_initial`] stream at once |
//! | errors | `tonic::Status::from(`[`CacheError`]`)` (etcd's codes and messages) |
//!
//! # Choices worth knowing
//!
//! - `prev_kv` comes from the cache's own state, not from the upstream: the
//!   cache holds the previous value anyway, and asking etcd for it would
//!   double the bytes of every event and make etcd read the old revision
//!   from its backend per event. Events are encoded once in both variants
//!   (see [`CachedEvent`]).
//! - The upstream watch covers the hull of the configured ranges with
//!   `progress_notify`; with the default (all keys) every store revision
//!   carries an event, so linearizable reads never depend on progress
//!   responses. With prefixes, the cache asks for progress while a read
//!   waits; etcd before 3.4.25 may answer such a request ahead of pending
//!   events (etcd issue 15220), counted in
//!   [`CacheMetrics::progress_regressions`] (events are still applied, never
//!   dropped). A report at R is therefore trusted for R - 1 (etcd applies
//!   in order) and for R only when a second report confirms it, or at once
//!   when the gateway says R was its own write outside the cached ranges
//!   ([`Cache::wait_for_write`], [`WriteScope`]); a gateway's own write
//!   inside them is answered only once its event is applied.
//! - The applier changes its snapshot in place and readers get O(1) copies
//!   on demand (see the `snapshot` module): a write pays a persistent-map
//!   path copy only when a reader took a snapshot since. Map keys of up to
//!   38 bytes live inside the B-tree nodes ([`MapKey`]).
//! - A delivery is the only per-watcher work: the applier pushes one shared
//!   batch per (stream, group); the stream's consumer merges what queued
//!   up, walks the group's watchers (dense slots, not a hash map) and
//!   writes a head of a few varints plus a copy of the shared event bytes
//!   per watcher, bounded by an output budget per pass.
//! - Secondary indexes live in the snapshot (persistent maps, value ->
//!   key -> entry), so a filtered read at R is exact; each event carries
//!   its old and new index values, and with them the DELETE a watcher
//!   filtered on the old value receives when the entry moves away. A
//!   filtered Range at a past revision is rebuilt from the ring's
//!   `prev_kv`s; the store is never asked (it would answer unfiltered).
//! - Watchers below the ring are served by an upstream watch over the hull
//!   from their start revision, handed to the ring once it reaches the
//!   ring's newer half (slack against eviction); no progress response is
//!   trusted for the hand-over.

mod applier;
mod backoff;
mod cache;
mod compaction;
mod config;
mod error;
mod etcd;
mod event;
mod frame;
mod gate;
mod group;
mod history;
mod index;
mod inner;
mod keys;
mod mapkey;
mod metrics;
mod range;
mod registry;
mod secondary;
mod slots;
mod snapshot;
mod splice;
mod stream;
mod upstream;

#[doc(hidden)]
pub use applier::BenchHarness;
pub use backoff::Backoff;
pub use cache::Cache;
pub use config::CacheConfig;
pub use error::CacheError;
pub use etcd::{EtcdUpstream, EtcdUpstreamConfig, UpstreamTls};
pub use event::{CachedEvent, DERIVED_SLOTS, EventKind};
pub use frame::{FrameHead, WatchFrame, encode_watch_response};
pub use inner::WriteScope;
pub use keys::{KeyRange, prefix_end};
pub use mapkey::{KvMap, MapKey};
pub use metrics::CacheMetrics;
pub use range::{evaluate_range, validate_range};
pub use secondary::{IndexDef, IndexFilter, IndexSet, IndexSpecError};
pub use snapshot::Snapshot;
pub use stream::{WatchFrames, WatchHandle};
pub use upstream::{ErrorHook, ListResult, Upstream, UpstreamFuture, UpstreamWatch, WatchMsg};
