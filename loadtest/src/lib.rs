//! `lookout-loadtest`: the `lookout-load` generator, checked watchers, and
//! side-by-side comparison runs against etcd.
//!
//! ```text
//!   lookout-load <scenario> ──gRPC / HTTP──> target (etcd, grpc-proxy, lookout)
//!        │  writer: stamped puts (seq, send time)        │
//!        │  watchers: WatchCheck per watcher  <──events──┘   (testkit's checker)
//!        │  end: read the store's history ──> judge every watcher
//!        └──> one JSON line (stdout), progress (stderr), --report DIR (md + svg)
//!
//!   lookout-load compare ──starts──> etcd, grpc-proxy, lookout (child PIDs kept)
//!        └── same scenario matrix against each ──> side-by-side report
//! ```
//!
//! It owns the scenarios ([`scenario`]), the watchers and their wire
//! decoding ([`watch`]), the paced writer ([`writer`]), latency histograms
//! ([`hist`]), /proc measurements ([`procstat`]), reports and plots
//! ([`report`]) and the comparison driver ([`compare`]). Whether a watcher
//! got what it was owed is judged by the project's one watch checker,
//! `lookout_testkit::checker`, against the store's history read back by
//! [`truth`].
//!
//! It must never link the code it measures (only the wire types from
//! `lookout-proto` and the test kit), never decide an event is missing from
//! the writer's view alone (a timed-out put is unknown until the store's
//! history says), and never wait without a bound: every phase ends by its
//! own deadline or the run's cancellation token.
//!
//! Where things live:
//!
//! | concern | module |
//! |---|---|
//! | flags, `main`'s one call | [`cli`]; flag values and the command line: [`cmdline`] |
//! | scenarios: fanout (+ slow, http, catchup, failover), informers, memory, put/range, index | [`scenario`] and its children |
//! | what the watch scenarios share at the end (judging, writer cross-check) | `scenario::verdict` |
//! | gRPC and HTTP watchers, the one-pass response decoder | [`watch`] |
//! | the value stamp (seq, send time) and the checker's content tag | [`payload`] |
//! | the store's history as the checker's truth | [`truth`] |
//! | connections, writer, counters and progress bar | [`conn`], [`writer`], [`progress`] |
//! | results, histograms, /proc, Prometheus scrapes | [`result`], [`hist`], [`procstat`], [`promscrape`] |
//! | markdown and SVG reports | [`report`] |
//! | `compare`: targets, matrix, run loop, README | [`compare`] |
//! | errors | [`error`] |

pub mod cli;
pub mod cmdline;
pub mod compare;
pub mod conn;
pub mod error;
pub mod hist;
pub mod payload;
pub mod procstat;
pub mod progress;
pub mod promscrape;
pub mod report;
pub mod result;
pub mod scenario;
pub mod truth;
pub mod watch;
pub mod writer;

pub use error::{LoadError, Result};
pub use result::RunResult;
