//! Watches over HTTP: etcd's `POST /v3/watch` (a body of `WatchRequest`
//! objects, an answer of `{"result": WatchResponse}` lines) and the readable
//! `GET /v1/watch/<key>` (NDJSON, or Server-Sent Events on
//! `Accept: text/event-stream`).
//!
//! ```text
//!   client ──body──> pump task ──mpsc──> EtcdApi::watch ──replies──> body stream ──> client
//!                        ^                                               │ (dropped when the
//!                        └──────── stops when the body stream drops ─────┘  client goes away)
//! ```
//!
//! The backend's request stream is an mpsc receiver whose sender lives in
//! the response body (`/v1`) or in the pump task that stops with it
//! (`/v3`): when the client disconnects, hyper drops the body, the sender
//! goes, the request stream ends and the backend frees the watchers. A
//! [`StreamGuard`] keeps [`super::HttpMetrics::watch_streams`] honest.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use lookout_proto::pb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, watch_request::RequestUnion,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::body::JsonStream;
use super::error::{EtcdError, HttpError};
use super::request::{Params, grpc_request, path_key, prefix_end};
use super::{EtcdApi, HttpMetrics, HttpState, WatchEvent, WatchReplies, WatchReply};

/// Counts an open HTTP watch stream for as long as its body lives.
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<HttpMetrics>);

impl StreamGuard {
    fn new(m: &Arc<HttpMetrics>) -> Self {
        m.watch_streams.fetch_add(1, Relaxed);
        Self(m.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.watch_streams.fetch_sub(1, Relaxed);
    }
}

fn streaming(body: Body, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

// === /v3/watch ===

/// etcd's `/v3/watch`. The first request object is read before answering,
/// so a bad one is a 400; later ones are forwarded as they arrive, and a
/// bad later one ends the stream with grpc-gateway's error line. The watch
/// stays open after the body ends, as etcd's does.
pub(crate) async fn v3_watch<A: EtcdApi>(
    State(s): State<Arc<HttpState<A>>>,
    headers: HeaderMap,
    ext: Extensions,
    body: Body,
) -> Result<Response, EtcdError> {
    if s.stop.is_cancelled() {
        return Err(HttpError::ShuttingDown.into());
    }
    let mut requests = JsonStream::new(body, s.cfg.json_limit());
    let first = match requests.next::<WatchRequest>().await {
        Some(r) => Some(r?),
        None => None,
    };
    let (tx, rx) = mpsc::channel(16);
    let asked = first.is_some();
    if let Some(f) = first {
        tx.try_send(f).expect("fresh channel has room");
    }
    // Each create is checked as this request's sender (its Authorization
    // header travels as the token, as grpc-gateway forwards it).
    let meta = crate::api::CallMeta::of(&grpc_request(&headers, &ext, ()));
    let mut replies = s.api.watch(meta, ReceiverStream::new(rx).boxed()).await?;
    // As etcd's gateway, answer (status and headers) with the first
    // response: a client that sees the headers may rely on its watch being
    // registered (Python etcd3gw writes right after them).
    if asked {
        let first = tokio::select! {
            biased;
            _ = s.stop.cancelled() => return Err(HttpError::ShuttingDown.into()),
            r = replies.next() => r,
        };
        if let Some(r) = first {
            replies = futures::stream::iter([r]).chain(replies).boxed();
        }
    }
    let (gone_tx, gone_rx) = oneshot::channel();
    let (err_tx, err_rx) = oneshot::channel();
    tokio::spawn(pump(requests, tx, gone_rx, err_tx));
    let st = V3Watch {
        replies,
        stop: s.stop.clone(),
        bad_request: Some(err_rx),
        _gone: gone_tx,
        _guard: StreamGuard::new(&s.metrics),
        metrics: s.metrics.clone(),
        done: false,
    };
    let body = Body::from_stream(futures::stream::unfold(st, V3Watch::step));
    Ok(streaming(body, "application/json"))
}

/// Forwards the body's later request objects. Keeps `tx` (and so the
/// backend's watch) alive after the body ends, until the response body is
/// dropped (`gone` fires).
async fn pump(
    mut requests: JsonStream,
    tx: mpsc::Sender<WatchRequest>,
    mut gone: oneshot::Receiver<()>,
    bad: oneshot::Sender<HttpError>,
) {
    loop {
        tokio::select! {
            _ = &mut gone => return,
            r = requests.next::<WatchRequest>() => match r {
                Some(Ok(req)) => {
                    if tx.send(req).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = bad.send(e);
                    return;
                }
                None => break,
            }
        }
    }
    let _ = gone.await;
    drop(tx);
}

struct V3Watch<E> {
    replies: WatchReplies<E>,
    stop: CancellationToken,
    /// A bad request object the pump found; written when the replies end.
    bad_request: Option<oneshot::Receiver<HttpError>>,
    /// Dropped with the body: tells the pump to stop.
    _gone: oneshot::Sender<()>,
    _guard: StreamGuard,
    metrics: Arc<HttpMetrics>,
    done: bool,
}

impl<E: WatchEvent> V3Watch<E> {
    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.done {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            r = self.replies.next() => match r {
                Some(Ok(reply)) => {
                    self.metrics.watch_events.fetch_add(reply.events.len() as u64, Relaxed);
                    Some((Ok(v3_line(&reply)), self))
                }
                Some(Err(status)) => {
                    self.done = true;
                    Some((Ok(Bytes::from(HttpError::Api(status).stream_line())), self))
                }
                None => {
                    self.done = true;
                    let bad = self.bad_request.take().and_then(|mut rx| rx.try_recv().ok())?;
                    Some((Ok(Bytes::from(bad.stream_line())), self))
                }
            }
        }
    }
}

/// `{"result": WatchResponse}\n`, with each event's JSON spliced in as the
/// backend shares it (`events` is the last field etcd writes).
pub(crate) fn v3_line<E: WatchEvent>(r: &WatchReply<E>) -> Bytes {
    let head = serde_json::to_vec(&r.head).expect("messages serialize");
    let events: Vec<Bytes> = r.events.iter().map(|e| e.etcd_json(r.prev_kv)).collect();
    let len = head.len() + events.iter().map(|e| e.len() + 1).sum::<usize>() + 32;
    let mut out = BytesMut::with_capacity(len);
    out.put_slice(b"{\"result\":");
    if events.is_empty() {
        out.put_slice(&head);
    } else {
        out.put_slice(&head[..head.len() - 1]);
        if head.len() > 2 {
            out.put_u8(b',');
        }
        out.put_slice(b"\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(e);
        }
        out.put_slice(b"]}");
    }
    out.put_slice(b"}\n");
    out.freeze()
}

// === /v1/watch ===

/// `GET /v1/watch/<key>[?prefix=true&rev=N&index=I&value=V&initial=true]`.
///
/// With `initial=true` the stream starts with the current matching entries
/// as PUT lines, then `{"type":"SYNCED","revision":R}`, then live events
/// from R + 1.
pub(crate) async fn v1_watch<A: EtcdApi>(
    State(s): State<Arc<HttpState<A>>>,
    uri: Uri,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Response, HttpError> {
    if s.stop.is_cancelled() {
        return Err(HttpError::ShuttingDown);
    }
    let key = path_key(uri.path(), "/v1/watch");
    let params = Params::parse(
        uri.query(),
        &[
            "prefix",
            "rev",
            "progress_interval_ms",
            "index",
            "value",
            "initial",
        ],
    )?;
    let prefix = params.flag("prefix")?;
    let mut start = params.int("rev")?.unwrap_or(0);
    if start < 0 {
        return Err(HttpError::BadQuery {
            name: "rev".into(),
            message: "must not be negative".into(),
        });
    }
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if let Some(id) = headers.get("last-event-id") {
        // An SSE client resuming: the id is the last revision it has.
        let rev = id
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|r| *r >= 0)
            .ok_or_else(|| {
                HttpError::BadRequest(format!(
                    "Last-Event-ID must be a revision (a non-negative integer), got {id:?}"
                ))
            })?;
        start = rev + 1;
    }
    if key.is_empty() && !prefix {
        return Err(HttpError::BadRequest(
            "a key is required (or ?prefix=true to watch every key)".into(),
        ));
    }
    let (key, range_end) = if prefix {
        if key.is_empty() {
            (vec![0], vec![0])
        } else {
            let end = prefix_end(&key);
            (key, end)
        }
    } else {
        (key, Vec::new())
    };
    let progress_every = match params.int("progress_interval_ms")? {
        Some(ms) if ms > 0 => std::time::Duration::from_millis(ms as u64),
        _ => s.cfg.progress_interval,
    };
    let create = WatchCreateRequest {
        key: key.into(),
        range_end: range_end.into(),
        start_revision: start,
        index: params.text("index")?,
        value: params
            .get("value")
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        initial_state: params.flag("initial")?,
        ..Default::default()
    };
    // Filter and initial-state mistakes are a 400 here, not a stream that
    // is cancelled at once.
    s.api.check_watch_extensions(&create)?;
    let initial = create.initial_state;
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    };
    let (mut tx, mut replies) = open_v1(&s, &headers, &ext, &create, false).await?;
    if super::login::is_basic(&headers) {
        // A kept login the store no longer takes shows as a refused
        // create: log in again and watch once more.
        let first = replies.next().await;
        let stale = matches!(&first, Some(Ok(r)) if r.head.canceled
            && r.head.cancel_reason.contains("invalid auth token"));
        if stale {
            (tx, replies) = open_v1(&s, &headers, &ext, &create, true).await?;
        } else if let Some(f) = first {
            replies = futures::stream::iter([f]).chain(replies).boxed();
        }
    }
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let st = V1Watch {
        replies,
        requests: tx,
        tick,
        sse,
        quiet: true,
        last_id: 0,
        stop: s.stop.clone(),
        _guard: StreamGuard::new(&s.metrics),
        metrics: s.metrics.clone(),
        done: false,
        awaiting_sync: initial,
    };
    let body = Body::from_stream(futures::stream::unfold(st, V1Watch::step));
    Ok(streaming(
        body,
        if sse {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        },
    ))
}

/// Opens the backend's watch for one `/v1/watch` request: its request
/// stream (kept open by the returned sender) with `create` queued.
async fn open_v1<A: EtcdApi>(
    s: &HttpState<A>,
    headers: &HeaderMap,
    ext: &Extensions,
    create: &WatchRequest,
    fresh_login: bool,
) -> Result<(mpsc::Sender<WatchRequest>, WatchReplies<A::Event>), HttpError> {
    let meta = super::login::watch_sender(s, headers, ext, fresh_login).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(create.clone()).expect("fresh channel has room");
    let replies = s.api.watch(meta, ReceiverStream::new(rx).boxed()).await?;
    Ok((tx, replies))
}

struct V1Watch<E> {
    replies: WatchReplies<E>,
    /// The backend's request stream: dropping it (with the body) ends the
    /// backend's watch.
    requests: mpsc::Sender<WatchRequest>,
    tick: tokio::time::Interval,
    sse: bool,
    /// No event went out since the last tick.
    quiet: bool,
    /// Newest SSE id written (ids never go back).
    last_id: i64,
    stop: CancellationToken,
    _guard: StreamGuard,
    metrics: Arc<HttpMetrics>,
    done: bool,
    /// `?initial=true` and the initial state is still coming: its events
    /// carry no SSE id (their revisions are older than R, so resuming from
    /// one would skip entries), and the marker becomes a SYNCED line.
    awaiting_sync: bool,
}

/// Control lines of the readable stream.
#[derive(Serialize)]
struct Control<'a> {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compact_revision: Option<i64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    cancel_reason: &'a str,
}

/// The last line of a stream the backend broke (resume from the last
/// revision + 1, possibly elsewhere).
#[derive(Serialize)]
struct ErrorLine<'a> {
    r#type: &'static str,
    error: &'a str,
    code: i32,
}

impl<E: WatchEvent> V1Watch<E> {
    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            if self.done {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                r = self.replies.next() => match r {
                    Some(Ok(reply)) => {
                        if let Some(b) = self.encode(&reply) {
                            return Some((Ok(b), self));
                        }
                    }
                    Some(Err(status)) => {
                        self.done = true;
                        let e = HttpError::Api(status);
                        let line = serde_json::to_vec(&ErrorLine {
                            r#type: "ERROR",
                            error: &e.to_string(),
                            code: e.code() as i32,
                        })
                        .expect("plain structs serialize");
                        return Some((Ok(self.frame(&line, None)), self));
                    }
                    None => return None,
                },
                _ = self.tick.tick() => {
                    if self.quiet {
                        let progress = WatchRequest {
                            request_union: Some(RequestUnion::ProgressRequest(
                                WatchProgressRequest {},
                            )),
                        };
                        // Full means a request is already queued: skip.
                        let _ = self.requests.try_send(progress);
                    }
                    self.quiet = true;
                }
            }
        }
    }

    /// One line as NDJSON or as an SSE message (`id` when given).
    fn frame(&self, line: &[u8], id: Option<i64>) -> Bytes {
        let mut b = BytesMut::with_capacity(line.len() + 32);
        self.put(&mut b, line, id);
        b.freeze()
    }

    fn put(&self, b: &mut BytesMut, line: &[u8], id: Option<i64>) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if self.sse {
            if let Some(id) = id {
                b.put_slice(b"id: ");
                b.put_slice(id.to_string().as_bytes());
                b.put_u8(b'\n');
            }
            b.put_slice(b"data: ");
            b.put_slice(line);
            b.put_slice(b"\n\n");
        } else {
            b.put_slice(line);
            b.put_u8(b'\n');
        }
    }

    fn control(&self, c: &Control<'_>, id: Option<i64>) -> Bytes {
        let line = serde_json::to_vec(c).expect("plain structs serialize");
        self.frame(&line, id)
    }

    fn encode(&mut self, r: &WatchReply<E>) -> Option<Bytes> {
        let rev = r.head.header.map_or(0, |h| h.revision);
        if r.head.canceled {
            self.done = true;
            let c = Control {
                r#type: "CANCELED",
                revision: None,
                compact_revision: (r.head.compact_revision != 0).then_some(r.head.compact_revision),
                cancel_reason: &r.head.cancel_reason,
            };
            return Some(self.control(&c, None));
        }
        if r.head.created {
            let c = Control {
                r#type: "CREATED",
                revision: Some(rev),
                compact_revision: None,
                cancel_reason: "",
            };
            return Some(self.control(&c, None));
        }
        if r.events.is_empty() && self.awaiting_sync && r.head.watch_id != -1 {
            // The initial state is complete at `rev`: live events follow
            // from rev + 1, and an SSE client resuming from here (id = rev)
            // misses nothing.
            self.awaiting_sync = false;
            let id = (self.sse && rev > self.last_id).then_some(rev);
            if let Some(id) = id {
                self.last_id = id;
            }
            let c = Control {
                r#type: "SYNCED",
                revision: Some(rev),
                compact_revision: None,
                cancel_reason: "",
            };
            return Some(self.control(&c, id));
        }
        if r.events.is_empty() {
            // A progress answer: every event at or below `rev` went out.
            let id = (rev > self.last_id).then_some(rev);
            if let Some(id) = id {
                self.last_id = id;
            }
            let c = Control {
                r#type: "PROGRESS",
                revision: Some(rev),
                compact_revision: None,
                cancel_reason: "",
            };
            return Some(self.control(&c, id));
        }
        self.quiet = false;
        self.metrics
            .watch_events
            .fetch_add(r.events.len() as u64, Relaxed);
        let lines: Vec<Bytes> = r.events.iter().map(WatchEvent::line).collect();
        let mut b = BytesMut::with_capacity(lines.iter().map(|l| l.len() + 40).sum());
        for (i, (e, line)) in r.events.iter().zip(&lines).enumerate() {
            // The SSE id marks a whole revision delivered: only its last
            // event carries it (a txn's events share one revision).
            let last_of_rev = match r.events.get(i + 1) {
                Some(next) => next.revision() != e.revision(),
                None => !r.head.fragment,
            };
            let id =
                (self.sse && !self.awaiting_sync && last_of_rev && e.revision() > self.last_id)
                    .then(|| e.revision());
            if let Some(id) = id {
                self.last_id = id;
            }
            self.put(&mut b, line, id);
        }
        Some(b.freeze())
    }
}
