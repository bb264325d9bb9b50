//! The crate's one error type: requests etcd refuses before reading
//! anything. Texts are etcd's own (clients match on them); the store and
//! the cache map each variant onto their own error once.

/// A request etcd's gRPC layer would refuse (InvalidArgument in both
/// crates' mappings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SemanticsError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
}
