//! `lookout-loadtest`: the `lookout-load` generator, its watch checker, and
//! side-by-side comparison runs against etcd.
//!
//! ```text
//!   lookout-load <scenario> ──gRPC / HTTP──> target (etcd, grpc-proxy, lookout)
//!        │  writer: stamped puts (seq, send time)        │
//!        │  watchers: WatchCheck per watcher  <──events──┘
//!        │  end: read the store's history ──> judge every watcher
//!        └──> one JSON line (stdout), progress (stderr), --report DIR (md + svg)
//!
//!   lookout-load compare ──starts──> etcd, grpc-proxy, lookout (child PIDs kept)
//!        └── same scenario matrix against each ──> side-by-side report
//! ```
//!
//! It owns the scenarios ([`scenario`]), latency histograms ([`hist`]),
//! /proc measurements ([`procstat`]), reports and plots ([`report`]) and the
//! comparison driver ([`compare`]). Watchers are judged by the project's one
//! watch checker, `lookout_testkit::checker`, against the store's history
//! read back by [`truth`].
//!
//! It must never link the code it measures (only the wire types from
//! `lookout-proto`), never decide an event is missing from the writer's view
//! alone (a timed-out put is unknown until the store's history says), and
//! never wait without a bound.

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
