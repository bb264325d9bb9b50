//! Watch streams: one per client gRPC `Watch` stream, holding that stream's
//! watchers, a byte-bounded queue of pending deliveries, and the catch-up
//! logic for watchers that read the history ring by revision cursor.
//!
//! ```text
//!  applier ──push (group, Arc<[event]>)──> queue ──┐           (Live)
//!  history ring ──cursor, no copies──────────────────┼─> frames ──> gateway
//!  splice task (upstream watch) ──Direct events──────┘  (Catchup / Upstream)
//! ```
//!
//! A watcher is in one phase at a time and moves only at revision
//! boundaries, with `next_rev` meaning "every matching event below this has
//! been handed out, none at or above it":
//!
//! - `Live`: takes events from the queue (dedup by `next_rev`);
//! - `Catchup`: reads the ring from `next_rev`; at the ring's end it turns
//!   Live under the stream lock, so nothing falls between the two; if the
//!   ring no longer holds `next_rev` it is cancelled with `compact_revision`;
//! - `Upstream`: a spliced upstream watch feeds it until that watch reaches
//!   the newer half of the ring, then it turns Catchup.
//!
//! When the queue would exceed its byte budget the applier stops pushing to
//! the stream (it never waits) and all its Live watchers turn Catchup.
//!
//! | concern | file |
//! |---|---|
//! | watchers, phases, the queue; applier pushes; splice hand-over | `state` |
//! | open, create (phase and start), cancel, progress, refuse | `handle` ([`WatchHandle`]) |
//! | removing a watcher, closing a stream | `lifecycle` |
//! | waiting, one production pass, progress answers | `frames` ([`WatchFrames`]) |
//! | ring catch-up and initial-state pages | `catchup` |
//! | cutting events into responses, merged batches | `emit` |
//! | `Vec<WatchFrame>` or gRPC buffer output | `sink` |

pub(crate) mod catchup;
pub(crate) mod emit;
pub(crate) mod frames;
pub(crate) mod handle;
pub(crate) mod lifecycle;
pub(crate) mod sink;
pub(crate) mod state;

pub use frames::WatchFrames;
pub use handle::WatchHandle;
