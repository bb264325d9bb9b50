//! The Watch service, hand-written so responses are the cache's frames
//! written straight into gRPC DATA chunks. One gRPC stream is one cache
//! stream.
//!
//! ```text
//!   client ──WatchRequest──> reader task: permission check ─> resume wait ─> catch-up gate
//!                            ─> compaction check ─> create / cancel / progress ─> WatchHandle
//!   client <──DATA chunks (gRPC messages)── response body <── WatchFrames::next_grpc
//!                                              (created, events, refusals, in order)
//! ```
//!
//! The response body is polled only as fast as HTTP/2 flow control lets
//! chunks out, so a client that stops reading stops pulling from its cache
//! stream, whose byte budget then moves its watchers to the history ring:
//! nobody else waits for it. When the cache closes (shutdown) the stream
//! ends with Unavailable, which etcd clients answer by resuming elsewhere
//! from their last revision + 1.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::StreamBody;
use lookout_cache::{CacheError, WatchFrames, WatchHandle};
use lookout_proto::pb::{WatchCreateRequest, WatchRequest, watch_request::RequestUnion};
use tonic::codec::Codec;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Status, Streaming};

use crate::codec::WatchCodec;
use crate::error::GatewayError;
use crate::shared::Shared;

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
            return Box::pin(async move { Ok(crate::error::unimplemented_path().into_http()) });
        }
        let shared = self.shared.clone();
        let max = self.max_decoding;
        Box::pin(async move {
            // etcd clients never compress; a compressed request is refused
            // as tonic refuses an encoding it was not configured for.
            if let Some(enc) = req.headers().get("grpc-encoding")
                && enc.as_bytes() != b"identity"
            {
                return Ok(crate::error::compressed_request(&String::from_utf8_lossy(
                    enc.as_bytes(),
                ))
                .into_http());
            }
            // Each create is checked with these (resolved again per create).
            let creds = Arc::new(crate::auth::Creds::of(req.headers(), req.extensions()));
            let decoder = WatchCodec.decoder();
            let inbound = Streaming::new_request(decoder, req.into_body(), None, Some(max));
            Ok(match open(shared, inbound, creds).await {
                Ok(body) => {
                    let mut resp = http::Response::new(body);
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    resp
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// What the response body owns.
struct Outbound {
    frames: WatchFrames,
    /// gRPC messages being gathered into the next DATA chunk.
    buf: BytesMut,
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

/// A DATA chunk is cut once this many bytes of messages are gathered: large
/// enough that per-chunk costs (a poll, an HTTP/2 frame header, a syscall
/// share) vanish next to the bytes, small enough that a stalled client
/// pins little memory (HTTP/2 holds at most about two chunks past its
/// window per stream).
const CHUNK_BYTES: usize = 64 << 10;

/// The response body: gRPC messages written straight from the cache
/// stream into DATA chunks ([`WatchFrames::next_grpc`]), then trailers.
/// This skips tonic's per-message encoder and stream plumbing: a delivery
/// is a 5-byte prefix, a head of a few varints and a copy of the shared
/// event bytes into the chunk.
async fn next_chunk(mut o: Outbound) -> Option<(Result<Frame<Bytes>, Infallible>, Outbound)> {
    if o.done {
        return None;
    }
    // The cache reserves about a chunk at its first write (one allocation,
    // not a doubling series), never while the stream waits: 1,000 streams
    // waiting for their turn (initial states) or for events pin no buffers.
    if o.frames.next_grpc(&mut o.buf, CHUNK_BYTES).await.is_err() {
        // The cache closed (shutdown): end with Unavailable so clients
        // resume elsewhere from their last revision + 1.
        o.done = true;
        let mut trailers = http::HeaderMap::new();
        let status: Status = GatewayError::ShuttingDown.into();
        let _ = status.add_header(&mut trailers);
        return Some((Ok(Frame::trailers(trailers)), o));
    }
    let chunk = o.buf.split().freeze();
    // Drop the unused tail of the allocation too, so the chunk alone keeps
    // it alive, only until HTTP/2 has written it.
    o.buf = BytesMut::new();
    Some((Ok(Frame::data(chunk)), o))
}

async fn open(
    shared: Arc<Shared>,
    inbound: Streaming<WatchRequest>,
    creds: Arc<crate::auth::Creds>,
) -> Result<tonic::body::Body, Status> {
    shared.ready().await?;
    let (handle, frames) = shared.cache.open_stream();
    let reader = tokio::spawn(read_requests(shared.clone(), inbound, handle, creds));
    shared.metrics.watch_rpcs.fetch_add(1, Relaxed);
    let out = Outbound {
        frames,
        buf: BytesMut::new(),
        done: false,
        _guard: RpcGuard {
            shared: shared.clone(),
            reader,
        },
    };
    let stream = futures::stream::unfold(out, next_chunk);
    Ok(tonic::body::Body::new(StreamBody::new(stream)))
}

/// Maps the client's requests onto the cache stream until the client
/// closes its side (then the responses keep flowing, as etcd keeps them)
/// or the stream breaks (then the cache stream closes). Requests are
/// handled one at a time, in order, so answers to creates come back in the
/// order clients expect them.
///
/// Generic over the request stream so the HTTP layer's watches (whose
/// requests come from a JSON body or the URL) share this code. Each create
/// is checked as etcd checks it (the sender of `creds` resolved again, read
/// permission on the range): a refused one never reaches the cache (so no
/// shared group ever serves it) and is answered with etcd's
/// created+canceled refusal, in order with the other answers.
pub(crate) async fn read_requests<S>(
    shared: Arc<Shared>,
    mut inbound: S,
    handle: WatchHandle,
    creds: Arc<crate::auth::Creds>,
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
                if let Err(reason) = shared.auth.watch_allowed(&creds, &c).await {
                    tracing::debug!(%reason, "watch refused");
                    handle.refuse_with_id(c.watch_id, reason);
                    continue;
                }
                let stream_open = create(&shared, &handle, c).await;
                if !stream_open {
                    return;
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

/// One create: wait if the client resumes ahead of this gateway, pass
/// storm control if it replays history, learn a compaction the store made
/// behind our back, then create. False when the stream is gone.
async fn create(shared: &Shared, handle: &WatchHandle, c: WatchCreateRequest) -> bool {
    let cache = &shared.cache;
    // One client's stream must not hold unbounded memory: past the limit
    // the create gets etcd's created + canceled answer with a reason, and
    // the stream's other watchers carry on.
    let max = shared.config.max_watchers_per_stream;
    if handle.watcher_count() >= max {
        shared.metrics.watchers_refused.fetch_add(1, Relaxed);
        handle.refuse(format!(
            "etcdserver: too many watchers on this stream (--max-watchers-per-stream={max})"
        ));
        return true;
    }
    let start = c.start_revision;
    // A client resuming here from another gateway asks for the revision
    // after the last one it saw; if this gateway has not reached it yet,
    // wait (bounded) so the stream starts from where the client is, never
    // with a "future revision" failure. Past the bound the watch is created
    // anyway and its events come as the cache reaches them.
    if start > 1 && start - 1 > cache.revision() {
        shared.metrics.resume_waits.fetch_add(1, Relaxed);
        if cache
            .wait_for_revision(start - 1, shared.config.read_timeout)
            .await
            .is_err()
        {
            shared.metrics.resume_wait_timeouts.fetch_add(1, Relaxed);
        }
    }
    // An initial state replays no history: neither the catch-up gate nor
    // the compaction probe concern it (its own gate admits it).
    let replays = start > 0 && !c.initial_state;
    let _permit = if replays && start <= cache.revision() {
        match shared.catchups.enter(&shared.metrics.catchups).await {
            Ok(p) => Some(p),
            Err(st) => {
                handle.refuse(st.message().to_string());
                return true;
            }
        }
    } else {
        None
    };
    if replays {
        cache.check_compaction(start).await;
    }
    match handle.create(&c) {
        Ok(_) => true,
        // The cache queued etcd's own answer for these.
        Err(CacheError::EmptyWatchRange | CacheError::DuplicateWatchId) => true,
        Err(CacheError::Closed) => false,
        Err(e) => {
            let reason = match e {
                CacheError::OutOfScope => GatewayError::OutOfScope.to_string(),
                other => other.to_string(),
            };
            handle.refuse(reason);
            true
        }
    }
}

/// The checks the cache makes on a create's extension fields (index
/// filter, `initial_state`), made early for the readable HTTP API.
///
/// # Errors
/// InvalidArgument naming the problem.
pub(crate) fn check_extensions(shared: &Shared, c: &WatchCreateRequest) -> Result<(), Status> {
    let c = normalize(c.clone());
    let range = lookout_cache::KeyRange::from_request(&c.key, &c.range_end);
    if !c.index.is_empty() && !shared.cache.covers(&range) {
        return Err(GatewayError::FilterOutOfScope.into());
    }
    shared.cache.indexes().resolve(&range, &c.index, &c.value)?;
    Ok(())
}

/// etcd's spelling rules for a watch key (`v3rpc/watch.go`): an empty key
/// is `"\0"`, the smallest key.
fn normalize(mut c: WatchCreateRequest) -> WatchCreateRequest {
    if c.key.is_empty() {
        c.key = Bytes::from_static(&[0]);
    }
    c
}
