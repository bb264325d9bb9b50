//! What the cache needs from the store it fronts: an etcd v3 server, ours or
//! a real etcd. One trait, object safe, so the gateway holds an
//! `Arc<dyn Upstream>` and tests can wrap the real one.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use lookout_proto::mvccpb::{Event, KeyValue};
use lookout_proto::pb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, watch_request,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::keys::KeyRange;

/// A boxed future answering with the upstream's own status on failure.
pub type UpstreamFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'a>>;

/// An etcd v3 server the cache lists, watches and forwards writes to.
///
/// Every method returns the upstream's response or status unchanged, so the
/// gateway can hand them to its clients as etcd would. Implementations
/// reconnect on their own; a call that fails returns the failure and the next
/// call may use another endpoint.
pub trait Upstream: Send + Sync + std::fmt::Debug + 'static {
    /// A `Range` (reads at revisions the cache does not hold, paged lists).
    fn range(&self, req: RangeRequest) -> UpstreamFuture<'_, RangeResponse>;

    /// Opens a watch stream with one watcher created by `req`.
    fn watch(&self, req: WatchCreateRequest) -> UpstreamFuture<'_, UpstreamWatch>;

    fn put(&self, req: PutRequest) -> UpstreamFuture<'_, PutResponse>;
    fn delete_range(&self, req: DeleteRangeRequest) -> UpstreamFuture<'_, DeleteRangeResponse>;
    fn txn(&self, req: TxnRequest) -> UpstreamFuture<'_, TxnResponse>;
    fn compact(&self, req: CompactionRequest) -> UpstreamFuture<'_, CompactionResponse>;
    fn lease_grant(&self, req: LeaseGrantRequest) -> UpstreamFuture<'_, LeaseGrantResponse>;
    fn lease_revoke(&self, req: LeaseRevokeRequest) -> UpstreamFuture<'_, LeaseRevokeResponse>;
    fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> UpstreamFuture<'_, LeaseTimeToLiveResponse>;
    fn lease_leases(&self, req: LeaseLeasesRequest) -> UpstreamFuture<'_, LeaseLeasesResponse>;

    /// Opens a `LeaseKeepAlive` stream fed by `requests`; responses come back
    /// as the upstream sends them. etcd sends its response headers with its
    /// first answer, so queue the first request before awaiting this.
    fn lease_keep_alive(
        &self,
        requests: mpsc::Receiver<LeaseKeepAliveRequest>,
    ) -> UpstreamFuture<'_, Streaming<LeaseKeepAliveResponse>>;

    /// The store's current revision from one cheap linearizable request: a
    /// `count_only` `Range` of the single key `"\0"` (nothing to read, but it
    /// still goes through the read index, so the revision is current).
    fn current_revision(&self) -> UpstreamFuture<'_, i64> {
        Box::pin(async move {
            let resp = self
                .range(RangeRequest {
                    key: Bytes::from_static(&[0]),
                    count_only: true,
                    limit: 1,
                    ..Default::default()
                })
                .await?;
            Ok(resp.header.map_or(0, |h| h.revision))
        })
    }

    /// Whether the store has compacted past `revision` (a watch from it
    /// would be cancelled): `None` if not, else the store's compaction
    /// revision. Costs one serializable `count_only` Range at `revision`
    /// (etcd checks compaction before reading anything); only when that
    /// fails does a watch from `revision` learn the exact number, which etcd
    /// answers at once, without scanning history.
    ///
    /// # Errors
    /// The upstream's status for anything but "compacted".
    fn compacted_since(&self, revision: i64) -> UpstreamFuture<'_, Option<i64>> {
        Box::pin(async move {
            let probe = self
                .range(RangeRequest {
                    key: Bytes::from_static(&[0]),
                    count_only: true,
                    serializable: true,
                    revision,
                    ..Default::default()
                })
                .await;
            match probe {
                Ok(_) => return Ok(None),
                Err(s) if crate::error::is_compacted_status(&s) => {}
                Err(s) => return Err(s),
            }
            let mut w = self
                .watch(WatchCreateRequest {
                    key: Bytes::from_static(&[0]),
                    start_revision: revision,
                    ..Default::default()
                })
                .await?;
            // Created (maybe), then the cancel with the number; bounded.
            for _ in 0..4 {
                match w.recv().await? {
                    Some(WatchMsg::Compacted {
                        compact_revision, ..
                    }) => return Ok(Some(compact_revision)),
                    Some(WatchMsg::Created { .. } | WatchMsg::Progress { .. }) => continue,
                    _ => break,
                }
            }
            // Compacted, but the number did not come: the store compacted
            // past `revision`, so `revision + 1` is a floor it has reached.
            Ok(Some(revision + 1))
        })
    }

    /// Lists `range` at `revision` (`0`: the current one) in pages of
    /// `page_size` keys, every page at the same revision.
    ///
    /// # Errors
    /// The upstream's status; a compaction between pages surfaces as etcd's
    /// OutOfRange "required revision has been compacted" and the caller lists
    /// again.
    fn list<'a>(
        &'a self,
        range: &'a KeyRange,
        revision: i64,
        page_size: i64,
    ) -> UpstreamFuture<'a, ListResult> {
        Box::pin(async move {
            let (mut key, range_end) = range.to_request();
            let mut out = ListResult {
                revision,
                header: ResponseHeader::default(),
                kvs: Vec::new(),
            };
            loop {
                let resp = self
                    .range(RangeRequest {
                        key: key.clone(),
                        range_end: range_end.clone(),
                        limit: page_size.max(1),
                        revision: out.revision.max(0),
                        ..Default::default()
                    })
                    .await?;
                let header = resp.header.unwrap_or_default();
                if out.revision <= 0 {
                    out.revision = header.revision;
                }
                out.header = header;
                let last = resp.kvs.last().map(|kv| kv.key.clone());
                out.kvs.extend(resp.kvs);
                match last {
                    Some(last) if resp.more && range.single_key().is_none() => {
                        let mut next = Vec::with_capacity(last.len() + 1);
                        next.extend_from_slice(&last);
                        next.push(0);
                        key = Bytes::from(next);
                    }
                    _ => return Ok(out),
                }
            }
        })
    }
}

/// One consistent list: all of a range at one revision.
#[derive(Debug, Clone, Default)]
pub struct ListResult {
    pub revision: i64,
    /// The last page's header (cluster and member ids, raft term).
    pub header: ResponseHeader,
    pub kvs: Vec<KeyValue>,
}

/// What one upstream `WatchResponse` means to the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMsg {
    /// The watcher exists; `revision` is the store's revision at creation.
    Created {
        watch_id: i64,
        header: ResponseHeader,
    },
    /// Events of one or more complete revisions, ascending.
    Events {
        header: ResponseHeader,
        events: Vec<Event>,
    },
    /// No events: the watcher has received everything up to `header.revision`.
    Progress { header: ResponseHeader },
    /// The start revision was compacted; the watcher is gone.
    Compacted {
        header: ResponseHeader,
        compact_revision: i64,
    },
    /// The upstream cancelled the watcher for another reason.
    Canceled {
        header: ResponseHeader,
        reason: String,
    },
}

impl WatchMsg {
    /// Classifies a raw response. etcd sets `canceled` together with
    /// `compact_revision` on a compacted start; older servers may set only
    /// `compact_revision`, which means the same.
    pub fn classify(resp: WatchResponse) -> Self {
        let header = resp.header.unwrap_or_default();
        if resp.compact_revision != 0 {
            Self::Compacted {
                header,
                compact_revision: resp.compact_revision,
            }
        } else if resp.canceled {
            Self::Canceled {
                header,
                reason: resp.cancel_reason,
            }
        } else if resp.created {
            Self::Created {
                watch_id: resp.watch_id,
                header,
            }
        } else if resp.events.is_empty() {
            Self::Progress { header }
        } else {
            Self::Events {
                header,
                events: resp.events,
            }
        }
    }
}

/// Called with the status that broke a watch stream (an implementation uses
/// it to fail over to another endpoint).
pub type ErrorHook = std::sync::Arc<dyn Fn(&Status) + Send + Sync>;

/// Called with the reason when the upstream cancels the watcher (an
/// implementation logs in again when the reason is its token).
pub type CancelHook = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// An open upstream watch stream with one watcher on it.
pub struct UpstreamWatch {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
    on_error: Option<ErrorHook>,
    on_cancel: Option<CancelHook>,
}

impl std::fmt::Debug for UpstreamWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamWatch").finish_non_exhaustive()
    }
}

impl UpstreamWatch {
    /// Wraps a bidirectional stream whose first request (the create) has
    /// already been queued on `requests`.
    pub fn new(requests: mpsc::Sender<WatchRequest>, responses: Streaming<WatchResponse>) -> Self {
        Self {
            requests,
            responses,
            on_error: None,
            on_cancel: None,
        }
    }

    /// Calls `hook` with the status when the stream breaks.
    pub fn with_error_hook(mut self, hook: ErrorHook) -> Self {
        self.on_error = Some(hook);
        self
    }

    /// Calls `hook` with the reason when the upstream cancels the watcher
    /// (for anything but a compaction).
    pub fn with_cancel_hook(mut self, hook: CancelHook) -> Self {
        self.on_cancel = Some(hook);
        self
    }

    /// The next message; `Ok(None)` when the upstream closed the stream.
    ///
    /// # Errors
    /// The stream's status (the connection broke, the server went away).
    pub async fn recv(&mut self) -> Result<Option<WatchMsg>, Status> {
        match self.responses.message().await {
            Ok(m) => {
                let m = m.map(WatchMsg::classify);
                if let (Some(WatchMsg::Canceled { reason, .. }), Some(hook)) = (&m, &self.on_cancel)
                {
                    hook(reason);
                }
                Ok(m)
            }
            Err(s) => {
                if let Some(hook) = &self.on_error {
                    hook(&s);
                }
                Err(s)
            }
        }
    }

    /// Asks the upstream for a progress response; false when the stream is
    /// closed or its request queue is full (a request is already pending).
    pub fn request_progress(&self) -> bool {
        self.requests
            .try_send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::ProgressRequest(
                    WatchProgressRequest {},
                )),
            })
            .is_ok()
    }

    /// Cancels the watcher (best effort; dropping the stream also ends it).
    pub fn cancel(&self, watch_id: i64) -> bool {
        self.requests
            .try_send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CancelRequest(
                    WatchCancelRequest { watch_id },
                )),
            })
            .is_ok()
    }
}
