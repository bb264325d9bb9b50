//! The client listener's admission: how many connections may be open, how
//! long a TLS handshake and the first request head may take, and how large
//! that head may be. What one connection may do afterwards (streams,
//! header lists, message bytes, watchers) is set on the HTTP/2 server and
//! the services (`server.rs`, `watch.rs`).
//!
//! ```text
//!  TcpListener ──accept──> ConnGate: a permit, or the socket is closed at once
//!       │                  (counted in lookout_connections_refused_total)
//!       ├─ TLS: handshake task per connection, bounded by --tls-handshake-timeout
//!       v
//!  FirstRequest: the HTTP/2 preface or a whole HTTP/1.1 request head within
//!       --request-header-timeout and --max-header-bytes, else closed
//!       v
//!  tonic / hyper (the permit is released when the connection closes)
//! ```
//!
//! Why the first request needs its own deadline: hyper tells HTTP/1.1 from
//! HTTP/2 by reading the first bytes and has no deadline for that, so a
//! client that connects and says nothing would hold its connection (and
//! its permit) forever; and hyper's own HTTP/1.1 header deadline is not
//! configurable through tonic. Later requests on a connection are bounded
//! by hyper (HTTP/1.1 heads: 30 s, ~400 KiB) and by HTTP/2 keep-alive
//! pings (a peer that stops answering is closed).
//!
//! It must never block the accept loop on one client (handshakes run in
//! their own tasks), and never count a connection twice or forget one (the
//! permit lives inside the connection's IO and goes with it).

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// The HTTP/2 connection preface every gRPC client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The listener's limits (flags of `lookout gateway`, see `args.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Open client connections, TLS handshakes in progress included.
    pub max_connections: usize,
    /// Longest a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// Longest from accept (or the end of the TLS handshake) to the
    /// HTTP/2 preface or a complete HTTP/1.1 request head.
    pub request_header_timeout: Duration,
    /// Largest HTTP/1.1 request head, and HTTP/2 header list, accepted.
    pub max_header_bytes: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tls_handshake_timeout: lookout_consensus::tls::HANDSHAKE_TIMEOUT,
            request_header_timeout: Duration::from_secs(10),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
/// Default `--max-header-bytes` (64 KiB: etcd tokens and gRPC metadata
/// are a few hundred bytes; hyper's HTTP/1.1 buffer is ~400 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Live numbers of the listener (relaxed atomics).
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    /// Gauge: connections holding a permit.
    pub open: AtomicI64,
    /// Counter: connections closed at accept because all permits were taken.
    pub refused: AtomicU64,
    /// Counter: connections closed for a slow or oversized first request.
    pub slow_requests: AtomicU64,
}

/// Hands out one permit per open connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnGate {
    permits: Arc<Semaphore>,
    metrics: Arc<ListenerMetrics>,
}

impl ConnGate {
    pub(crate) fn new(max: usize, metrics: Arc<ListenerMetrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            metrics,
        }
    }

    fn admit(&self) -> Option<ConnPermit> {
        let p = self.permits.clone().try_acquire_owned().ok()?;
        self.metrics.open.fetch_add(1, Relaxed);
        Some(ConnPermit {
            _permit: p,
            metrics: self.metrics.clone(),
        })
    }
}

/// A connection's place under `--max-connections`; freed on drop.
#[derive(Debug)]
struct ConnPermit {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<ListenerMetrics>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.metrics.open.fetch_sub(1, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A TCP connection that holds its permit for as long as it lives.
    #[derive(Debug)]
    pub(crate) struct Admitted {
        #[pin]
        tcp: TcpStream,
        permit: ConnPermit,
    }
}

impl Connected for Admitted {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().tcp.poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().tcp.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().tcp.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().tcp.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().tcp.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Accepted connections that got a permit (with TCP_NODELAY, as etcd's
/// sockets have it); the others are closed on the spot. Accepting stops
/// when the stream is dropped.
pub(crate) fn admitted(
    listener: TcpListener,
    gate: ConnGate,
) -> impl Stream<Item = (Admitted, SocketAddr)> + Send + 'static {
    futures::stream::unfold((listener, gate), |(listener, gate)| async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving
                    // the connections we have, retry shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(permit) = gate.admit() else {
                let n = gate.metrics.refused.fetch_add(1, Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(%peer, refused = n + 1, "connection refused: --max-connections reached");
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            return Some(((Admitted { tcp, permit }, peer), (listener, gate)));
        }
    })
}

pin_project_lite::pin_project! {
    /// A connection that must deliver its first request head (HTTP/1.1)
    /// or the HTTP/2 preface in time and within the header byte limit;
    /// reads fail (and hyper closes the connection) otherwise.
    #[derive(Debug)]
    pub(crate) struct FirstRequest<IO> {
        #[pin]
        io: IO,
        // Armed until the first request head is complete.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        // Bytes of the first head read so far.
        seen: usize,
        max_bytes: usize,
        // The head so far could still be the HTTP/2 preface.
        maybe_h2: bool,
        // HTTP/1.1: we are right after a line feed (optionally followed
        // by a carriage return); another line feed ends the head.
        after_lf: bool,
        metrics: Arc<ListenerMetrics>,
    }
}

impl<IO> FirstRequest<IO> {
    pub(crate) fn new(io: IO, limits: &ListenerLimits, metrics: Arc<ListenerMetrics>) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(limits.request_header_timeout))),
            seen: 0,
            max_bytes: limits.max_header_bytes,
            maybe_h2: true,
            after_lf: false,
            metrics,
        }
    }
}

/// Scans newly read bytes of the first request; true once the head is
/// complete (the whole preface, or an empty line after HTTP/1.1 headers).
fn head_complete(seen: &mut usize, maybe_h2: &mut bool, after_lf: &mut bool, new: &[u8]) -> bool {
    for &b in new {
        if *maybe_h2 {
            if H2_PREFACE.get(*seen) == Some(&b) {
                *seen += 1;
                if *seen == H2_PREFACE.len() {
                    return true;
                }
                continue;
            }
            *maybe_h2 = false;
            // "PRI * HTTP/2.0\r\n\r\n" alone is a complete HTTP/1 head.
            if *seen >= 18 {
                return true;
            }
        }
        *seen += 1;
        match b {
            b'\n' if *after_lf => return true,
            b'\n' => *after_lf = true,
            b'\r' => {}
            _ => *after_lf = false,
        }
    }
    false
}

impl<IO: AsyncRead> AsyncRead for FirstRequest<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let Some(deadline) = this.deadline.as_mut() else {
            return this.io.poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if head_complete(this.seen, this.maybe_h2, this.after_lf, new) {
                    *this.deadline = None;
                } else if *this.seen > *this.max_bytes {
                    this.metrics.slow_requests.fetch_add(1, Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "request head larger than --max-header-bytes",
                    )));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if deadline.as_mut().poll(cx).is_ready() {
                    this.metrics.slow_requests.fetch_add(1, Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within --request-header-timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for FirstRequest<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for FirstRequest<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(chunks: &[&[u8]]) -> Option<usize> {
        let (mut seen, mut h2, mut lf) = (0, true, false);
        for (i, c) in chunks.iter().enumerate() {
            if head_complete(&mut seen, &mut h2, &mut lf, c) {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn heads_end_at_the_preface_or_an_empty_line() {
        assert_eq!(complete(&[&H2_PREFACE[..10], &H2_PREFACE[10..]]), Some(1));
        assert_eq!(complete(&[b"GET / HTTP/1.0\r\n", b"\r\n"]), Some(1));
        assert_eq!(
            complete(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r", b"\n"]),
            Some(2)
        );
        assert_eq!(complete(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        assert_eq!(complete(&[b"PRI * HTTP/1.1\r\nHost: a\r\n"]), None);
        assert_eq!(complete(&[b"PRI * HTTP/1.1\r\n\r\n"]), Some(0));
        assert_eq!(complete(&[b"GET /slow"]), None);
    }
}
