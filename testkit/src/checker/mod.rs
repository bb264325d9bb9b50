//! The watch-guarantee checker, one for the whole project: does every
//! watcher see every event of its range, in order, exactly once, with the
//! store's content, and is every cancel and progress notification true?
//!
//! ```text
//!   event(rev, tag) ──> WatchCheck::observe ──> in order | duplicate | out of order
//!                        (online, O(1) per in-order event; 50k watchers in a load run)
//!   the store's history, read back once (history.rs) ──> Truth (revisions + digests)
//!   WatchCheck::judge(truth, upto) ──> Judgement: missing / undelivered / unexpected /
//!                                      content / bad cancel / bad progress
//!       ├── lookout-load: tags from the writer's stamps, CheckTotals per group
//!       └── tests: check_watcher(StoreHistory, WatcherLog) feeds whole events
//!                  and names the first violation; check_list_then_watch
//! ```
//!
//! Whether an event is *missing* is only decided at the end, against the
//! store's own history read from the store (never through the front end
//! under test): a write that timed out is unknown, and owed only if the
//! history shows it was applied. Nothing here decides from the writer's
//! point of view alone.
//!
//! Where things live: [`revset`] (runs of revisions), [`watcher`] (the
//! online record), [`truth`] (the history as entries and digests),
//! [`judge`] (the verdict), [`totals`] (sums over watchers), [`history`]
//! (reading the store back, [`StoreHistory`]), [`spec`] and [`log`] (what a
//! test's watcher asked for and received), [`recorded`] (the test-facing
//! checks).

pub mod history;
pub mod judge;
pub mod log;
pub mod recorded;
pub mod revset;
pub mod spec;
pub mod totals;
pub mod truth;
pub mod watcher;

pub use history::{HistoryQuery, StoreHistory};
pub use judge::{Judgement, ProgressFault};
pub use log::WatcherLog;
pub use recorded::{CheckReport, check_list_then_watch, check_watcher};
pub use revset::RevSet;
pub use spec::{WatchSpec, in_range};
pub use totals::CheckTotals;
pub use truth::{Truth, fnv1a};
pub use watcher::{Delivery, WatchCheck, WatchEnd};
