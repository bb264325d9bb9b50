//! lookout-cache against a real etcd 3.4: one binary, one module per concern.

mod index_property;
mod initial_state;
mod progress;
mod range_vs_etcd;
mod resilience;
mod slow_watchers;
mod snapshot_isolation;
mod stream_api;
mod support;
mod upstream_client;
mod watch_guarantees;
