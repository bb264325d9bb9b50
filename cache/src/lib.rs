//! `lookout-cache`: the watch cache, free of any transport.
//!
//! It must never import tonic server types, openraft or redb.
