//! The Watch service, hand-written around [`WatchCodec`] so responses are
//! the cache's pre-encoded frames. One gRPC stream is one cache stream.
//!
//! ```text
//!   client ──WatchRequest──> reader task ── create/cancel/progress ──> WatchHandle
//!                                  └── gateway-made frames (out of scope) ─┐
//!   client <──WatchFrame bytes── response stream <── WatchFrames::next ────┴─ mpsc
//! ```
//!
//! The response stream is polled only as fast as HTTP/2 flow control lets
//! frames out, so a client that stops reading stops pulling from its cache
//! stream, whose byte budget then moves its watchers to the history ring:
//! nobody else waits for it. When the cache closes (shutdown) the stream
//! ends with Unavailable, which etcd clients answer by resuming elsewhere
//! from their last revision + 1.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use futures::stream::BoxStream;
use lookout_cache::{CacheError, FrameHead, WatchFrame, WatchFrames, WatchHandle};
use lookout_proto::pb::{WatchCreateRequest, WatchRequest, watch_request::RequestUnion};
use tokio::sync::mpsc;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Status, Streaming};

use crate::codec::WatchCodec;
use crate::error::GatewayError;
use crate::server::Shared;

/// `etcdserverpb.Watch` as a tower service.
#[derive(Debug, Clone)]
pub(crate) struct WatchServer {
    shared: Arc<Shared>,
    max_decoding: usize,
}

impl WatchServer {
    pub(crate) fn new(shared: Arc<Shared>, max_decoding: usize) -> Self {
        Self {
            shared,
            max_decoding,
        }
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

impl<B> Service<http::Request<B>> for WatchServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/etcdserverpb.Watch/Watch" {
            return Box::pin(async move { Ok(Status::unimplemented("").into_http()) });
        }
        let rpc = WatchRpc {
            shared: self.shared.clone(),
        };
        let max = self.max_decoding;
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(WatchCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(rpc, req).await)
        })
    }
}

/// One Watch call.
#[derive(Debug, Clone)]
struct WatchRpc {
    shared: Arc<Shared>,
}

type FrameStream = BoxStream<'static, Result<WatchFrame, Status>>;

impl tonic::server::StreamingService<WatchRequest> for WatchRpc {
    type Response = WatchFrame;
    type ResponseStream = FrameStream;
    type Future = BoxFuture<tonic::Response<FrameStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<WatchRequest>>) -> Self::Future {
        let shared = self.shared.clone();
        // Set by the authz layer only when --auth-config is given.
        let principal = request
            .extensions()
            .get::<crate::authz::Principal>()
            .cloned();
        Box::pin(async move { open(shared, request.into_inner(), principal).await })
    }
}

/// What the response stream owns.
struct Outbound {
    frames: WatchFrames,
    /// Frames the gateway makes itself (refusals the cache cannot queue).
    local: mpsc::Receiver<WatchFrame>,
    ready: VecDeque<WatchFrame>,
    buf: Vec<WatchFrame>,
    done: bool,
    _guard: RpcGuard,
}

/// Ends the request reader with the response stream and keeps the gauge.
struct RpcGuard {
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for RpcGuard {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared.metrics.watch_rpcs.fetch_sub(1, Relaxed);
    }
}

async fn open(
    shared: Arc<Shared>,
    inbound: Streaming<WatchRequest>,
    principal: Option<crate::authz::Principal>,
) -> Result<tonic::Response<FrameStream>, Status> {
    shared.ready().await?;
    let (handle, frames) = shared.cache.open_stream();
    let (local_tx, local) = mpsc::channel(16);
    let reader = match principal {
        // Each create is checked before the cache sees it (authz.rs).
        Some(p) => {
            let inbound =
                crate::authz::guard_watch_requests(shared.clone(), p, inbound, local_tx.clone());
            tokio::spawn(read_requests(shared.clone(), inbound, handle, local_tx))
        }
        None => tokio::spawn(read_requests(shared.clone(), inbound, handle, local_tx)),
    };
    shared.metrics.watch_rpcs.fetch_add(1, Relaxed);
    let out = Outbound {
        frames,
        local,
        ready: VecDeque::new(),
        buf: Vec::new(),
        done: false,
        _guard: RpcGuard {
            shared: shared.clone(),
            reader,
        },
    };
    let stream = futures::stream::unfold(out, |mut o| async move {
        loop {
            if let Some(f) = o.ready.pop_front() {
                return Some((Ok(f), o));
            }
            if o.done {
                return None;
            }
            tokio::select! {
                Some(f) = o.local.recv() => o.ready.push_back(f),
                r = o.frames.next(&mut o.buf) => match r {
                    Ok(()) => o.ready.extend(o.buf.drain(..)),
                    Err(_) => {
                        o.done = true;
                        return Some((Err(GatewayError::ShuttingDown.into()), o));
                    }
                },
            }
        }
    });
    Ok(tonic::Response::new(Box::pin(stream)))
}

/// Maps the client's requests onto the cache stream until the client
/// closes its side (then the responses keep flowing, as etcd keeps them)
/// or the stream breaks (then the cache stream closes).
///
/// Generic over the request stream so the HTTP layer's watches (whose
/// requests come from a JSON body or the URL) share this code.
pub(crate) async fn read_requests<S>(
    shared: Arc<Shared>,
    mut inbound: S,
    handle: WatchHandle,
    local: mpsc::Sender<WatchFrame>,
) where
    S: futures::Stream<Item = Result<WatchRequest, Status>> + Unpin,
{
    use futures::StreamExt;
    loop {
        let msg = match inbound.next().await {
            Some(Ok(m)) => m,
            None => return,
            Some(Err(_)) => {
                handle.close();
                return;
            }
        };
        match msg.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                let c = normalize(c);
                match handle.create(&c) {
                    Ok(_) => {}
                    // The cache queued etcd's own answer for these.
                    Err(CacheError::EmptyWatchRange | CacheError::DuplicateWatchId) => {}
                    Err(CacheError::Closed) => return,
                    Err(e) => {
                        let reason = match e {
                            CacheError::OutOfScope => GatewayError::OutOfScope.to_string(),
                            other => other.to_string(),
                        };
                        let frame = refusal(&shared, reason);
                        if local.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Some(RequestUnion::CancelRequest(c)) => {
                handle.cancel(c.watch_id);
            }
            Some(RequestUnion::ProgressRequest(_)) => handle.request_progress(),
            None => {}
        }
    }
}

/// etcd's spelling rules for a watch key (`v3rpc/watch.go`): an empty key
/// is `"\0"`, the smallest key.
fn normalize(mut c: WatchCreateRequest) -> WatchCreateRequest {
    if c.key.is_empty() {
        c.key = Bytes::from_static(&[0]);
    }
    c
}

/// A created-and-cancelled response for a watch this gateway cannot serve,
/// with the reason, as etcd answers a watch it refuses.
fn refusal(shared: &Shared, reason: String) -> WatchFrame {
    refusal_with_id(shared, -1, reason)
}

/// [`refusal`] naming the watch id the client asked for (etcd's answer to
/// a watch outside the caller's permissions).
pub(crate) fn refusal_with_id(shared: &Shared, watch_id: i64, reason: String) -> WatchFrame {
    WatchFrame::new(
        &FrameHead {
            header: shared.cache.header(shared.cache.revision()),
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        },
        Vec::new(),
        false,
    )
}
