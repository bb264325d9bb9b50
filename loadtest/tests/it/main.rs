//! lookout-load's own tests: each scenario driven briefly against a real
//! etcd 3.4 (and grpc-proxy), asserting the checker's verdicts, plus the
//! checker fed synthetic faults. Short on purpose: these check the tool's
//! correctness, never anyone's speed.

mod checker;
mod cli;
mod compare;
mod faults;
mod informers;
mod ops;
mod support;
mod watchers;
