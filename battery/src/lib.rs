//! `lookout-battery`: the fault battery. It runs a 3-member store with two
//! gateways in front (Lookout's, or etcd 3.4 with etcd's grpc-proxy as the
//! baseline), many clients on both, and a seeded nemesis (kill -9, SIGSTOP,
//! partitions, one-way loss, delay) through fault proxies on every link;
//! then it checks every recorded history with the checkers in
//! `lookout-testkit` (linearizability, watch guarantees, lease safety,
//! durability).
//!
//! ```text
//!   run(seed) ─> Topology (topology.rs: processes + FaultProxy per link)
//!            ─> workload/* clients record ops, watch streams, leases
//!            ─> nemesis.rs: schedule(seed) steps, inject / hold / heal
//!            ─> checkers on the histories ─> RunResult ─> report.rs table
//! ```
//!
//! It owns the orchestration only: the checkers and the proxy live in
//! testkit so other crates' tests can use them. It must never kill a
//! process it did not start, never listen outside 127.0.0.1, and never
//! call a run good that it did not check: a run whose history could not be
//! collected is a violation, not a pass.

pub mod client;
pub mod metrics;
pub mod nemesis;
pub mod report;
pub mod run;
pub mod topology;
pub mod workload;

pub use nemesis::FaultKind;
pub use run::{RunConfig, RunResult, run};
pub use topology::Target;

/// Why a run could not be carried out (faults found are not errors: they
/// are violations in the [`RunResult`]).
#[derive(Debug, thiserror::Error)]
pub enum BatteryError {
    #[error("could not start {0}: {1}")]
    Spawn(String, String),
    #[error("{0} does not serve:\n{1}")]
    NotServing(String, String),
    #[error("no agreed leader after {0:?}:\n{1}")]
    NoLeader(std::time::Duration, String),
    #[error("i/o: {0}")]
    Io(String),
}
