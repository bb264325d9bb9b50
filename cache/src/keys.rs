//! Key ranges as etcd spells them live in `lookout-semantics`, shared with
//! the store; the cache's modules import them from here.

pub use lookout_semantics::keys::{KeyRange, prefix_end};
