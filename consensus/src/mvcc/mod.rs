//! Multi-version state on redb: revisions, the key index, the applied
//! `MvccState`, the redb tables, how one replicated request applies, and the
//! checks and encodings around it. Nothing here knows about raft or gRPC.

pub(crate) mod apply;
pub(crate) mod backend;
pub(crate) mod encode;
pub(crate) mod hub;
pub(crate) mod keyindex;
pub(crate) mod request;
pub(crate) mod revision;
pub(crate) mod state;
pub(crate) mod validate;
