//! [`EtcdUpstream`]: the [`Upstream`] over lookout-proto's generated etcd v3
//! clients. It works against real etcd and any etcd-v3-compatible server.
//!
//! ```text
//!   call ──> channel() ──(none?)──> connect endpoints[i], backoff between failures
//!     │                                   │ fail: i = i+1 (next endpoint)
//!     ├──> RPC ──(transport-ish error)──> drop channel, i = i+1
//!     └──> RPC ──(auth error, as the gateway)──> log in again, retry once
//! ```
//!
//! # Whose credentials
//!
//! Every call carries a token or none ([`CallAs`]). The [`Upstream`]
//! methods (the cache's list, watch and probes, the gateway's own writes)
//! carry the gateway's: logged in with [`UpstreamCredentials`] only once
//! the upstream asks for a token (auth is off until then), again whenever
//! the upstream calls the token invalid, its revision old or the request
//! nameless (auth enabled meanwhile, a token expired, `auth disable`
//! dropped it), as clientv3 does. Calls a gateway forwards for a client
//! ([`EtcdUpstream::call_as`] with [`CallAs::Client`]) carry the client's
//! token or nothing, never the gateway's, and are never retried: the
//! upstream judges the client itself.

use std::sync::Arc;
use std::time::Duration;

use lookout_proto::pb::{
    AuthenticateRequest, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient,
    watch_client::WatchClient, watch_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
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
    /// The gateway's own credentials (etcdctl's `--user`), used once the
    /// upstream has auth enabled.
    pub credentials: Option<UpstreamCredentials>,
}

/// Who the gateway is towards an upstream with auth enabled.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamCredentials {
    /// A user and password: `Authenticate` when the upstream asks for a
    /// token, and again whenever it refuses the one in use.
    Password { user: String, password: String },
    /// A token sent with every call as it is (`lookout dev` hands its
    /// in-process gateway one its store maps to root).
    Token(String),
}

impl std::fmt::Debug for UpstreamCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line.
        match self {
            Self::Password { user, .. } => write!(f, "Password {{ user: {user:?} }}"),
            Self::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// Whose token a call carries upstream.
#[derive(Debug, Clone)]
pub enum CallAs {
    /// The gateway's own (logged in as needed; retried once after an auth
    /// error).
    Gateway,
    /// A client's: its token as it sent it, or none. Never retried.
    Client(Option<AsciiMetadataValue>),
}

/// A channel whose calls carry a token (or none) in etcd's `token`
/// metadata.
pub type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

/// Puts the sender's token (or the mark of a nameless call) into every
/// request's metadata.
#[derive(Debug, Clone)]
pub struct TokenInterceptor(Sender);

#[derive(Debug, Clone)]
enum Sender {
    Token(AsciiMetadataValue),
    /// A client that sent no token: named by nothing, not even the
    /// gateway's client certificate.
    Nobody,
    /// The gateway without a token: its connection (client certificate)
    /// names it, if anything does.
    Connection,
}

impl TokenInterceptor {
    /// What `who` sends, the gateway's token being `gateway_token`.
    fn new(who: &CallAs, gateway_token: Option<AsciiMetadataValue>) -> Self {
        Self(match who {
            CallAs::Gateway => gateway_token.map_or(Sender::Connection, Sender::Token),
            CallAs::Client(Some(t)) => Sender::Token(t.clone()),
            CallAs::Client(None) => Sender::Nobody,
        })
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let md: &mut MetadataMap = r.metadata_mut();
        md.remove("token");
        md.remove("authorization");
        match &self.0 {
            Sender::Token(t) => {
                md.insert("token", t.clone());
            }
            // etcd takes a request with this as nameless even when the
            // connection has a client certificate (it marks its own JSON
            // gateway's calls so): the gateway's certificate must not
            // name a client's call.
            Sender::Nobody => {
                md.insert(
                    "grpcgateway-accept",
                    AsciiMetadataValue::from_static("lookout"),
                );
            }
            Sender::Connection => {}
        }
        Ok(r)
    }
}

/// Whether `s` is the upstream refusing the token a call carried (or
/// asking for one): logging in again may fix it.
pub fn is_token_error(s: &Status) -> bool {
    match s.code() {
        Code::Unauthenticated => true,
        Code::InvalidArgument => matches!(
            s.message(),
            "etcdserver: user name is empty" | "etcdserver: revision of auth store is old"
        ),
        _ => false,
    }
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
            credentials: None,
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
    /// The gateway's own token.
    login: Login,
}

/// The gateway's token and how it is renewed.
#[derive(Debug)]
struct Login {
    credentials: Option<UpstreamCredentials>,
    /// The token calls as the gateway carry (none until the upstream asks
    /// for one) and how many times it was replaced. A parking_lot mutex:
    /// read or swapped, never held across an await.
    token: parking_lot::Mutex<(u64, Option<AsciiMetadataValue>)>,
    /// Serialises logins, so a burst of refused calls logs in once.
    logging_in: tokio::sync::Mutex<()>,
}

impl Login {
    fn new(credentials: Option<UpstreamCredentials>) -> Self {
        let token = match &credentials {
            Some(UpstreamCredentials::Token(t)) => AsciiMetadataValue::try_from(t.as_str()).ok(),
            _ => None,
        };
        Self {
            credentials,
            token: parking_lot::Mutex::new((0, token)),
            logging_in: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> (u64, Option<AsciiMetadataValue>) {
        self.token.lock().clone()
    }

    /// Logs in again unless someone did since `seen` (then the new token
    /// is used as it is). Ok(false): there is nothing to log in with.
    async fn renew(&self, ch: Channel, seen: u64, timeout: Duration) -> Result<bool, Status> {
        let Some(UpstreamCredentials::Password { user, password }) = &self.credentials else {
            return Ok(false);
        };
        let _one = self.logging_in.lock().await;
        if self.token.lock().0 != seen {
            return Ok(true);
        }
        let mut client = AuthClient::new(ch);
        let ask = client.authenticate(AuthenticateRequest {
            name: user.clone(),
            password: password.clone(),
        });
        let token = match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(r)) => {
                let t = r.into_inner().token;
                Some(AsciiMetadataValue::try_from(t.as_str()).map_err(|_| {
                    Status::internal("lookout: the upstream issued a token that is not ASCII")
                })?)
            }
            // Auth is off: calls carry no token.
            Ok(Err(s)) if s.message() == "etcdserver: authentication is not enabled" => None,
            Ok(Err(s)) => {
                tracing::warn!(user = %user, error = %s, "gateway login to the upstream failed");
                return Err(s);
            }
            Err(_) => return Err(Status::deadline_exceeded("context deadline exceeded")),
        };
        let mut cur = self.token.lock();
        cur.0 += 1;
        cur.1 = token;
        Ok(true)
    }
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
                current: parking_lot::Mutex::new(Current {
                    idx: 0,
                    channel: None,
                    generation: 0,
                }),
                connecting: tokio::sync::Mutex::new(ConnectState {
                    backoff,
                    failing: false,
                }),
                login: Login::new(cfg.credentials.clone()),
                cfg,
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
        F: Fn(AuthChannel) -> Fut + Send + Sync + 'a,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>> + Send + 'a,
    {
        Box::pin(self.call_as(&CallAs::Gateway, f))
    }

    /// One unary call (or the opening of a stream) as `who`, bounded by
    /// the request timeout, on the endpoint in use. As the gateway, an
    /// auth error logs in again and the call is made once more.
    ///
    /// # Errors
    /// The upstream's status, or Unavailable when no endpoint answers.
    pub async fn call_as<T, F, Fut>(&self, who: &CallAs, f: F) -> Result<T, Status>
    where
        F: Fn(AuthChannel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (generation, ch) = self.conn.channel().await?;
        let (seen, token) = self.conn.login.current();
        let mut result = self.bounded(f(self.authed(ch.clone(), who, token))).await;
        if let (CallAs::Gateway, Err(s)) = (who, &result)
            && is_token_error(s)
        {
            let timeout = self.conn.cfg.request_timeout;
            if let Ok(true) = self.conn.login.renew(ch.clone(), seen, timeout).await {
                let (_, token) = self.conn.login.current();
                result = self.bounded(f(self.authed(ch, who, token))).await;
            }
        }
        if let Err(s) = &result {
            self.conn.failed(generation, s);
        }
        result.map(tonic::Response::into_inner)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.conn.cfg.request_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("context deadline exceeded")),
        }
    }

    /// `ch` with `who`'s token on every request (`gateway_token` is the
    /// gateway's, when `who` is the gateway).
    fn authed(
        &self,
        ch: Channel,
        who: &CallAs,
        gateway_token: Option<AsciiMetadataValue>,
    ) -> AuthChannel {
        InterceptedService::new(ch, TokenInterceptor::new(who, gateway_token))
    }

    /// The channel in use, every call on it carrying `who`'s credentials
    /// (streams a gateway forwards: Lock, Election, Snapshot).
    ///
    /// # Errors
    /// Unavailable when no endpoint can be reached.
    pub async fn channel_as(&self, who: &CallAs) -> Result<AuthChannel, Status> {
        let (_, ch) = self.conn.channel().await?;
        let (_, token) = self.conn.login.current();
        Ok(self.authed(ch, who, token))
    }

    /// Logs the gateway in again now (after the auth state moved: a JWT
    /// carries the revision it was issued at) and answers the new token
    /// (`None`: auth is off, or there are no credentials to log in with).
    ///
    /// # Errors
    /// The upstream refused the credentials, or could not be reached.
    pub async fn relogin(&self) -> Result<Option<String>, Status> {
        let (_, ch) = self.conn.channel().await?;
        let (seen, _) = self.conn.login.current();
        self.conn
            .login
            .renew(ch, seen, self.conn.cfg.request_timeout)
            .await?;
        Ok(self
            .conn
            .login
            .current()
            .1
            .and_then(|t| t.to_str().ok().map(str::to_string)))
    }

    /// Whether the gateway has credentials of its own.
    pub fn has_credentials(&self) -> bool {
        self.conn.login.credentials.is_some()
    }

    fn kv(&self, ch: AuthChannel) -> KvClient<AuthChannel> {
        KvClient::new(ch).max_decoding_message_size(self.conn.cfg.max_message_bytes)
    }

    fn lease(&self, ch: AuthChannel) -> LeaseClient<AuthChannel> {
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
        self.unary(move |ch| {
            let req = req.clone();
            async move { self.kv(ch).range(req).await }
        })
    }

    fn watch(&self, req: WatchCreateRequest) -> UpstreamFuture<'_, UpstreamWatch> {
        Box::pin(async move {
            let (generation, ch) = self.conn.channel().await?;
            let (tx, rx) = mpsc::channel(8);
            tx.try_send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(req)),
            })
            .expect("fresh channel has room");
            let (seen, token) = self.conn.login.current();
            let mut client = WatchClient::new(self.authed(ch.clone(), &CallAs::Gateway, token))
                .max_decoding_message_size(self.conn.cfg.max_message_bytes);
            let opened = tokio::time::timeout(
                self.conn.cfg.request_timeout,
                client.watch(ReceiverStream::new(rx)),
            )
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("context deadline exceeded")));
            match opened {
                Ok(resp) => {
                    let conn = self.conn.clone();
                    let on_cancel = self.conn.clone();
                    Ok(UpstreamWatch::new(tx, resp.into_inner())
                        .with_error_hook(Arc::new(move |s: &Status| conn.failed(generation, s)))
                        .with_cancel_hook(Arc::new(move |reason: &str| {
                            // A create refused for its token: log in again
                            // before the cache watches again.
                            if reason.contains("auth token")
                                || reason.contains("user name is empty")
                                || reason.contains("revision of auth store is old")
                            {
                                let conn = on_cancel.clone();
                                let ch = ch.clone();
                                tokio::spawn(async move {
                                    let t = conn.cfg.request_timeout;
                                    let _ = conn.login.renew(ch, seen, t).await;
                                });
                            }
                        })))
                }
                Err(s) => {
                    self.conn.failed(generation, &s);
                    Err(s)
                }
            }
        })
    }

    fn put(&self, req: PutRequest) -> UpstreamFuture<'_, PutResponse> {
        self.unary(move |ch| {
            let req = req.clone();
            async move { self.kv(ch).put(req).await }
        })
    }

    fn delete_range(&self, req: DeleteRangeRequest) -> UpstreamFuture<'_, DeleteRangeResponse> {
        self.unary(move |ch| {
            let req = req.clone();
            async move { self.kv(ch).delete_range(req).await }
        })
    }

    fn txn(&self, req: TxnRequest) -> UpstreamFuture<'_, TxnResponse> {
        self.unary(move |ch| {
            let req = req.clone();
            async move { self.kv(ch).txn(req).await }
        })
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
            let (_, token) = self.conn.login.current();
            match self
                .lease(self.authed(ch, &CallAs::Gateway, token))
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
