//! Calls a gateway forwards to its upstream, each carrying the
//! credentials its client's identity calls for ([`CallAs`]: the client's
//! token, nothing, or the gateway's own after a check made here; see
//! `auth`). One typed client per etcd service over the upstream's channel.
//!
//! ```text
//!   service ─ who ─> CallAs ─> Forward::kv / lease / maintenance / cluster
//!                                 └─> EtcdUpstream::call_as (token metadata, timeout,
//!                                     endpoint rotation; the gateway's own calls
//!                                     log in again on an auth error)
//! ```

use std::sync::atomic::Ordering::Relaxed;

use lookout_cache::{AuthChannel, CallAs};
use lookout_proto::pb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient,
};
use tonic::{Response, Status};

use crate::shared::Shared;

/// Forwarded calls as one sender.
#[derive(Debug)]
pub(crate) struct Forward<'a> {
    s: &'a Shared,
    who: CallAs,
}

impl Shared {
    /// Forwards calls as `who`.
    pub(crate) fn forward(&self, who: CallAs) -> Forward<'_> {
        Forward { s: self, who }
    }
}

macro_rules! client {
    ($name:ident, $client:ident) => {
        /// One call on this service, `f` made with a fresh client and a
        /// clone of `req` (the gateway's own calls may be made twice).
        ///
        /// # Errors
        /// The upstream's status, unchanged.
        pub(crate) async fn $name<Req, Resp, F, Fut>(&self, req: Req, f: F) -> Result<Resp, Status>
        where
            Req: Clone,
            F: Fn($client<AuthChannel>, Req) -> Fut,
            Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
        {
            self.s.metrics.forwarded.fetch_add(1, Relaxed);
            self.s
                .upstream
                .call_as(&self.who, |ch| {
                    let c = $client::new(ch)
                        .max_decoding_message_size(usize::MAX)
                        .max_encoding_message_size(usize::MAX);
                    f(c, req.clone())
                })
                .await
        }
    };
}

impl Forward<'_> {
    client!(kv, KvClient);
    client!(lease, LeaseClient);
    client!(maintenance, MaintenanceClient);
    client!(cluster, ClusterClient);
}
