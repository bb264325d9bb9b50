//! Leases, as etcd's: a TTL granted through raft, keys attached to it,
//! and a revoke (by the client, or by the leader once the TTL ran out)
//! that deletes them in one revision.
//!
//! What lives here is the lease logic that stands on its own: the store's
//! lease API (`api.rs`), the leader's expiry loop (`expiry.rs`) and the
//! Lease gRPC service (`grpc.rs`). Three parts stay with what they are
//! part of, because they share its state and its transaction:
//!
//! - applying grant and revoke, and attaching keys to a lease, is in
//!   `mvcc/apply.rs`: a revoke deletes keys in the same redb write as the
//!   rest of the apply, and the lease table is an MVCC table (`LeaseState`
//!   in `mvcc/state.rs`);
//! - the deadlines are the state machine's (`Shared::expiry` in
//!   `raft/sm/`), set as entries apply, so every member's map follows the
//!   log;
//! - a new leader's renewal of every lease (etcd's lessor promotion) is in
//!   the task that follows leadership changes (`store/background.rs`).

mod api;
pub(crate) mod expiry;
mod grpc;
