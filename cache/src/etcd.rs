//! [`EtcdUpstream`]: the [`Upstream`] over lookout-proto's generated etcd v3
//! clients. It works against real etcd and any etcd-v3-compatible server.
//!
//! ```text
//!   call ──> channel() ──(none?)──> connect endpoints[i], backoff between failures
//!     │                                   │ fail: i = i+1 (next endpoint)
//!     └──> RPC ──(transport-ish error)──> drop channel, i = i+1
//! ```

use std::sync::Arc;
use std::time::Duration;

use lookout_proto::pb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, kv_client::KvClient,
    lease_client::LeaseClient, watch_client::WatchClient, watch_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::backoff::Backoff;
use crate::upstream::{Upstream, UpstreamFuture, UpstreamWatch};

/// How [`EtcdUpstream`] connects.
#[derive(Debug, Clone)]
pub struct EtcdUpstreamConfig {
    /// `host:port` or `http://host:port`, tried in order, rotating on failure.
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    /// Bound on each unary call (not on streams).
    pub request_timeout: Duration,
    /// First reconnect delay; doubles per consecutive failure up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Largest response accepted (list pages, watch batches).
    pub max_message_bytes: usize,
    /// TLS towards the upstream (etcd grpc-proxy's `--cacert`, `--cert`,
    /// `--key`); with it, endpoints without a scheme are dialled as
    /// `https://`.
    pub tls: Option<UpstreamTls>,
}

/// PEM files for TLS to the upstream, read at every (re)connect so a
/// rotated client certificate is used from the next connection on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `--cacert`: CA that signs the upstream's server certificate.
    pub cacert: Option<std::path::PathBuf>,
    /// `--cert`: client certificate presented to the upstream.
    pub cert: Option<std::path::PathBuf>,
    /// `--key`: its private key.
    pub key: Option<std::path::PathBuf>,
}

impl UpstreamTls {
    fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig, String> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))
        };
        let mut c = tonic::transport::ClientTlsConfig::new().assume_http2(true);
        if let Some(ca) = &self.cacert {
            c = c.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                c = c.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ));
            }
            (None, None) => {}
            _ => return Err("--cert and --key go together".into()),
        }
        Ok(c)
    }
}

impl EtcdUpstreamConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            max_message_bytes: 256 << 20,
            tls: None,
        }
    }
}

/// An etcd v3 client over several endpoints, reconnecting with backoff.
#[derive(Debug, Clone)]
pub struct EtcdUpstream {
    conn: Arc<Conn>,
}

#[derive(Debug)]
struct Conn {
    cfg: EtcdUpstreamConfig,
    /// The channel in use. A parking_lot mutex, not a tokio one: it is held
    /// only to read or swap the field, never across an await.
    current: parking_lot::Mutex<Current>,
    /// Serialises reconnects (held across the connect await) so a burst of
    /// failing calls makes one connection attempt, not one each.
    connecting: tokio::sync::Mutex<ConnectState>,
}

#[derive(Debug)]
struct Current {
    idx: usize,
    channel: Option<(u64, Channel)>,
    generation: u64,
}

#[derive(Debug)]
struct ConnectState {
    backoff: Backoff,
    /// The previous connect attempt failed: wait before the next one.
    failing: bool,
}

impl EtcdUpstream {
    /// Connects lazily: nothing happens until the first call.
    pub fn new(cfg: EtcdUpstreamConfig) -> Self {
        let backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
        Self {
            conn: Arc::new(Conn {
                cfg,
                current: parking_lot::Mutex::new(Current {
                    idx: 0,
                    channel: None,
                    generation: 0,
                }),
                connecting: tokio::sync::Mutex::new(ConnectState {
                    backoff,
                    failing: false,
                }),
            }),
        }
    }

    /// The endpoint in use (or to be tried next).
    pub fn current_endpoint(&self) -> String {
        let cur = self.conn.current.lock();
        self.conn
            .cfg
            .endpoints
            .get(cur.idx)
            .cloned()
            .unwrap_or_default()
    }

    /// The channel to the endpoint in use (connecting, with backoff and
    /// rotation, if there is none), for calls the [`Upstream`] trait does
    /// not cover: the gateway forwards Maintenance and Cluster requests on it.
    ///
    /// # Errors
    /// Unavailable when no endpoint can be reached.
    pub async fn channel(&self) -> Result<Channel, Status> {
        self.conn.channel().await.map(|(_, ch)| ch)
    }

    /// Drops the channel in use and moves to the next endpoint when
    /// `status` (from a call made on [`EtcdUpstream::channel`]) says the
    /// endpoint failed; a semantic error leaves it in use.
    pub fn report_failure(&self, status: &Status) {
        let generation = self.conn.current.lock().generation;
        self.conn.failed(generation, status);
    }

    fn unary<'a, T, F, Fut>(&'a self, f: F) -> UpstreamFuture<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(Channel) -> Fut + Send + 'a,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>> + Send + 'a,
    {
        Box::pin(async move {
            let (generation, ch) = self.conn.channel().await?;
            let result = match tokio::time::timeout(self.conn.cfg.request_timeout, f(ch)).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded("context deadline exceeded")),
            };
            if let Err(s) = &result {
                self.conn.failed(generation, s);
            }
            result.map(tonic::Response::into_inner)
        })
    }

    fn kv(&self, ch: Channel) -> KvClient<Channel> {
        KvClient::new(ch).max_decoding_message_size(self.conn.cfg.max_message_bytes)
    }

    fn lease(&self, ch: Channel) -> LeaseClient<Channel> {
        LeaseClient::new(ch).max_decoding_message_size(self.conn.cfg.max_message_bytes)
    }
}

impl Conn {
    async fn channel(&self) -> Result<(u64, Channel), Status> {
        if let Some(c) = self.current.lock().channel.clone() {
            return Ok(c);
        }
        let mut st = self.connecting.lock().await;
        if let Some(c) = self.current.lock().channel.clone() {
            return Ok(c);
        }
        let n = self.cfg.endpoints.len();
        if n == 0 {
            return Err(Status::unavailable(
                "lookout: no upstream endpoints configured",
            ));
        }
        let mut last_err = String::new();
        for _ in 0..n {
            if st.failing {
                tokio::time::sleep(st.backoff.next_delay()).await;
            }
            let idx = self.current.lock().idx;
            let ep = &self.cfg.endpoints[idx];
            match self.connect(ep).await {
                Ok(ch) => {
                    st.backoff.reset();
                    st.failing = false;
                    let mut cur = self.current.lock();
                    cur.generation += 1;
                    cur.channel = Some((cur.generation, ch.clone()));
                    tracing::debug!(endpoint = %ep, "connected to upstream");
                    return Ok((cur.generation, ch));
                }
                Err(e) => {
                    st.failing = true;
                    tracing::warn!(endpoint = %ep, error = %e, "upstream connect failed");
                    last_err = format!("{ep}: {e}");
                    let mut cur = self.current.lock();
                    cur.idx = (idx + 1) % n;
                }
            }
        }
        Err(Status::unavailable(format!(
            "lookout: no upstream endpoint reachable (last: {last_err})"
        )))
    }

    async fn connect(&self, ep: &str) -> Result<Channel, String> {
        let scheme = if self.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = if ep.contains("://") {
            ep.to_string()
        } else {
            format!("{scheme}://{ep}")
        };
        let mut endpoint = Endpoint::from_shared(url).map_err(|e| e.to_string())?;
        if let Some(tls) = &self.cfg.tls {
            endpoint = endpoint
                .tls_config(tls.client_config()?)
                .map_err(|e| e.to_string())?;
        }
        endpoint
            .connect_timeout(self.cfg.connect_timeout)
            .tcp_nodelay(true)
            // Keepalives notice an upstream that vanished without closing
            // the connection, so long-lived watches fail over.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| e.to_string())
    }

    /// Drops the channel of `generation` and moves to the next endpoint when
    /// `status` says the endpoint (not the request) failed.
    fn failed(&self, generation: u64, status: &Status) {
        if !is_endpoint_failure(status) {
            return;
        }
        let mut cur = self.current.lock();
        if cur.channel.as_ref().is_some_and(|(g, _)| *g == generation) {
            cur.channel = None;
            cur.idx = (cur.idx + 1) % self.cfg.endpoints.len().max(1);
            tracing::warn!(error = %status, "upstream endpoint failed; rotating");
        }
    }
}

/// Codes a dead or unreachable server produces (tonic reports transport
/// failures as Unavailable or Unknown); a server that answered with a
/// semantic error (OutOfRange, InvalidArgument, ...) stays in use.
fn is_endpoint_failure(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

impl Upstream for EtcdUpstream {
    fn range(&self, req: RangeRequest) -> UpstreamFuture<'_, RangeResponse> {
        self.unary(move |ch| async move { self.kv(ch).range(req).await })
    }

    fn watch(&self, req: WatchCreateRequest) -> UpstreamFuture<'_, UpstreamWatch> {
        Box::pin(async move {
            let (generation, ch) = self.conn.channel().await?;
            let (tx, rx) = mpsc::channel(8);
            tx.try_send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(req)),
            })
            .expect("fresh channel has room");
            let mut client =
                WatchClient::new(ch).max_decoding_message_size(self.conn.cfg.max_message_bytes);
            let opened = tokio::time::timeout(
                self.conn.cfg.request_timeout,
                client.watch(ReceiverStream::new(rx)),
            )
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("context deadline exceeded")));
            match opened {
                Ok(resp) => {
                    let conn = self.conn.clone();
                    Ok(UpstreamWatch::new(tx, resp.into_inner())
                        .with_error_hook(Arc::new(move |s: &Status| conn.failed(generation, s))))
                }
                Err(s) => {
                    self.conn.failed(generation, &s);
                    Err(s)
                }
            }
        })
    }

    fn put(&self, req: PutRequest) -> UpstreamFuture<'_, PutResponse> {
        self.unary(move |ch| async move { self.kv(ch).put(req).await })
    }

    fn delete_range(&self, req: DeleteRangeRequest) -> UpstreamFuture<'_, DeleteRangeResponse> {
        self.unary(move |ch| async move { self.kv(ch).delete_range(req).await })
    }

    fn txn(&self, req: TxnRequest) -> UpstreamFuture<'_, TxnResponse> {
        self.unary(move |ch| async move { self.kv(ch).txn(req).await })
    }

    fn compact(&self, req: CompactionRequest) -> UpstreamFuture<'_, CompactionResponse> {
        self.unary(move |ch| async move { self.kv(ch).compact(req).await })
    }

    fn lease_grant(&self, req: LeaseGrantRequest) -> UpstreamFuture<'_, LeaseGrantResponse> {
        self.unary(move |ch| async move { self.lease(ch).lease_grant(req).await })
    }

    fn lease_revoke(&self, req: LeaseRevokeRequest) -> UpstreamFuture<'_, LeaseRevokeResponse> {
        self.unary(move |ch| async move { self.lease(ch).lease_revoke(req).await })
    }

    fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> UpstreamFuture<'_, LeaseTimeToLiveResponse> {
        self.unary(move |ch| async move { self.lease(ch).lease_time_to_live(req).await })
    }

    fn lease_leases(&self, req: LeaseLeasesRequest) -> UpstreamFuture<'_, LeaseLeasesResponse> {
        self.unary(move |ch| async move { self.lease(ch).lease_leases(req).await })
    }

    fn lease_keep_alive(
        &self,
        requests: mpsc::Receiver<LeaseKeepAliveRequest>,
    ) -> UpstreamFuture<'_, Streaming<LeaseKeepAliveResponse>> {
        Box::pin(async move {
            let (generation, ch) = self.conn.channel().await?;
            match self
                .lease(ch)
                .lease_keep_alive(ReceiverStream::new(requests))
                .await
            {
                Ok(r) => Ok(r.into_inner()),
                Err(s) => {
                    self.conn.failed(generation, &s);
                    Err(s)
                }
            }
        })
    }
}
