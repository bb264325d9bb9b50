//! `lookout-semantics`: the one home of etcd's read semantics that both
//! Lookout's store and its cache implement, so that the same request gets
//! the same answer whether the cache serves it or the store does.
//!
//! It owns:
//!
//! - **Range evaluation** ([`range`]): every `RangeRequest` option as etcd
//!   3.4 applies it (count, limit and more, min/max revision filters,
//!   keys/count only, sorting), with ties under a non-key sort target in
//!   the order Go's `sort.Sort` leaves them ([`gosort`], a port of Go
//!   1.19's pattern-defeating quicksort: etcd's sort is unstable);
//! - **key ranges** ([`keys`]): etcd's `key` + `range_end` spellings (single
//!   key, `"\0"` for "from key on", empty intervals), [`prefix_end`], borrowed
//!   bounds for map lookups and the owned [`KeyRange`];
//! - **txn compares** ([`mod@compare`]): etcd's `applyCompare` / `compareKV`.
//!
//! ```text
//!   store (consensus): key index @rev ─ handles ─┐            ┌─> encoded pairs / KeyValues
//!                      lazy redb read  ─ load ───┼─> evaluate ─┤
//!   cache:             snapshot map ─ &KeyValue ─┘  (Selection) └─> KeyValues
//! ```
//!
//! It must never do I/O, hold state, read a clock, or depend on anything
//! but `lookout-proto`, `bytes` and `thiserror`: the store's `apply` calls
//! it on every member and must stay deterministic, and the cache calls it
//! on its hot path. Deciding *which* keys a range holds at *which*
//! revision (MVCC, snapshots, history) stays with the callers.
//!
//! Layering: `lookout-proto` <- `lookout-semantics` <- `lookout-consensus`,
//! `lookout-cache`.

pub mod compare;
mod error;
pub mod gosort;
pub mod keys;
pub mod range;

pub use compare::{compare, compare_kv};
pub use error::SemanticsError;
pub use keys::{KeyBounds, KeyRange, in_range, key_bounds, prefix_end, prefix_range_end};
pub use range::{RangeEntry, Selection, evaluate, validate_range};
