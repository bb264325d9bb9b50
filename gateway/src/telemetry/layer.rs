//! The tower layer that counts every gRPC request into [`GrpcMetrics`]:
//! started when the request arrives, messages and bytes as the bodies
//! flow, handled when the response body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use http_body::{Body, Frame};

use super::grpc::{GrpcMetrics, Key};

/// Counts every gRPC request of the router it wraps (HTTP requests pass
/// untouched).
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer(pub Arc<GrpcMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

fn status_of(h: &http::HeaderMap) -> Option<i32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<S> tower::Service<Request> for GrpcMetricsService<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(key) = self.metrics.key(&req) else {
            return Box::pin(self.inner.call(req));
        };
        let metrics = self.metrics.clone();
        let started = Instant::now();
        metrics.started(&key);
        let req = req.map(|body| {
            axum::body::Body::new(CountingBody {
                inner: body,
                frames: Frames::default(),
                metrics: metrics.clone(),
                key: key.clone(),
                sent: false,
                done: None,
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            crate::error::oversized_as_grpc_go(resp.headers_mut());
            if let Some(code) = status_of(resp.headers()) {
                metrics.handled(&key, code, started);
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let body = CountingBody {
                inner: body,
                frames: Frames::default(),
                metrics: metrics.clone(),
                key,
                sent: true,
                done: Some(started),
            };
            Ok(Response::from_parts(parts, axum::body::Body::new(body)))
        })
    }
}

/// Follows gRPC's length-prefixed framing (1 flag byte, 4 length bytes,
/// the message) across body chunks.
#[derive(Debug, Default)]
struct Frames {
    /// Header bytes seen of the current frame (0 = between frames).
    header: u8,
    len: u32,
    /// Message bytes still to come in the current frame.
    remaining: u64,
}

impl Frames {
    /// Feeds one chunk: (messages started in it, message bytes in it).
    fn feed(&mut self, mut b: &[u8]) -> (u64, u64) {
        let (mut msgs, mut bytes) = (0, 0);
        while !b.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(b.len());
                self.remaining -= n as u64;
                bytes += n as u64;
                b = &b[n..];
                continue;
            }
            if self.header > 0 {
                self.len = (self.len << 8) | u32::from(b[0]);
            }
            self.header += 1;
            b = &b[1..];
            if self.header == 5 {
                msgs += 1;
                self.remaining = u64::from(self.len);
                self.header = 0;
                self.len = 0;
            }
        }
        (msgs, bytes)
    }
}

/// A request or response body that counts gRPC messages and their bytes;
/// a response body also records its grpc-status from the trailers (or
/// Canceled when dropped before them).
struct CountingBody {
    inner: axum::body::Body,
    frames: Frames,
    metrics: Arc<GrpcMetrics>,
    key: Key,
    /// A response (sent) body rather than a request body.
    sent: bool,
    /// For a response: when the call started, until it is recorded.
    done: Option<Instant>,
}

impl CountingBody {
    fn finish(&mut self, code: i32) {
        if let Some(started) = self.done.take() {
            self.metrics.handled(&self.key, code, started);
        }
    }
}

impl Body for CountingBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &mut r
            && let Some(t) = f.trailers_mut()
        {
            crate::error::oversized_as_grpc_go(t);
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let this = &mut *self;
                    let (msgs, bytes) = this.frames.feed(d);
                    this.metrics.messages(&this.key, this.sent, msgs, bytes);
                } else if let Some(code) = f.trailers_ref().and_then(status_of) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(2),
            // Ended without trailers: tonic always sends them, so the
            // stream was cut; count it as gRPC would see it.
            Poll::Ready(None) => self.finish(14),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.finish(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_followed_across_chunks() {
        // Two messages (3 and 0 bytes) and the start of a third (2 of 4).
        let wire = [
            0, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, b'x', b'y',
        ];
        for split in 0..wire.len() {
            let mut f = Frames::default();
            let (m1, b1) = f.feed(&wire[..split]);
            let (m2, b2) = f.feed(&wire[split..]);
            assert_eq!((m1 + m2, b1 + b2), (3, 5), "split at {split}");
            assert_eq!(f.remaining, 2);
        }
    }
}
