//! `lookout-proto`: the etcd v3 API as Rust types and tonic stubs.
//!
//! ```text
//!   proto/*.proto --protox--> FileDescriptorSet --tonic-prost-build--> OUT_DIR/*.rs
//! ```
//!
//! This crate owns the wire format only: the message types, the gRPC client
//! and server traits, and small helpers on them. It must never hold logic
//! that belongs to the store or the cache, and must stay wire compatible with
//! etcd 3.4 (same packages, field numbers and types).

#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The store-to-store (peer) protocol: versioned envelopes around raft
/// messages and forwarded requests.
#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod peer {
    tonic::include_proto!("lookout.peer");
}

pub use etcdserverpb as pb;
