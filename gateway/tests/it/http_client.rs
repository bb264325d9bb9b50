//! A small real HTTP/1.1 client (hyper) for the HTTP API tests, and the
//! two servers they run against: an in-process `lookout store` serving
//! gRPC + HTTP on one loopback port, and an in-process gateway in front of
//! one ([`Backend`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use lookout_consensus::{Store, StoreConfig};
use lookout_gateway::http::{HttpConfig, HttpMetrics, serve_store};
use serde_json::Value;

/// Bound on every single request and every line read in these tests.
pub const STEP: Duration = Duration::from_secs(10);

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (http::response::Parts, Incoming, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).expect("request");
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let (parts, body) = resp.into_parts();
    (parts, body, driver)
}

/// One request on a fresh connection, whole answer read (bounded).
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let (parts, body, driver) = send(addr, method, path, headers, body.into()).await;
    let body = tokio::time::timeout(STEP, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    driver.abort();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// `POST path` with a JSON body, as etcd's gateway takes it.
pub async fn post(addr: &str, path: &str, body: &str) -> Reply {
    call(addr, "POST", path, &[], body.to_string()).await
}

/// A streamed answer read line by line; dropping it closes the socket.
#[derive(Debug)]
pub struct Lines {
    pub status: u16,
    pub headers: http::HeaderMap,
    body: Incoming,
    buf: Vec<u8>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Lines {
    /// Opens a stream (the request body is sent whole).
    pub async fn open(
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Self {
        let (parts, body, driver) = send(addr, method, path, headers, body.into()).await;
        Self {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            buf: Vec::new(),
            driver,
        }
    }

    /// The next line without its newline; `None` when the stream ended.
    /// Panics if nothing arrives within [`STEP`].
    pub async fn next_line(&mut self) -> Option<String> {
        self.next_line_within(STEP)
            .await
            .unwrap_or_else(|| panic!("no line within {STEP:?}"))
    }

    /// `None` when nothing came within `wait`; `Some(None)` at the end.
    pub async fn next_line_within(&mut self, wait: Duration) -> Option<Option<String>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return Some(Some(
                    String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                ));
            }
            let frame = match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return None,
                Ok(f) => f,
            };
            match frame {
                None | Some(Err(_)) => return Some(None),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }

    /// The next JSON line (panics at the end of the stream).
    pub async fn next_json(&mut self) -> Value {
        let line = self.next_line().await.expect("stream still open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// The next Server-Sent Event: `(id, data)`.
    pub async fn next_sse(&mut self) -> Option<(Option<i64>, Value)> {
        let mut id = None;
        let mut data = None;
        loop {
            let line = self.next_line().await?;
            if line.is_empty() {
                if let Some(d) = data {
                    return Some((id, d));
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).expect("JSON data"));
            }
        }
    }
}

/// A store served in-process on a loopback port, gRPC and HTTP together.
#[derive(Debug)]
pub struct TestStore {
    /// "127.0.0.1:port".
    pub addr: String,
    pub store: Store,
    pub metrics: Arc<HttpMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    _dir: tempfile::TempDir,
}

impl TestStore {
    pub async fn start() -> Self {
        Self::start_with(HttpConfig::default(), |_| {}).await
    }

    pub async fn start_with(http: HttpConfig, tweak: impl FnOnce(&mut StoreConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = StoreConfig::new(dir.path().join("data"));
        cfg.name = "http-test".into();
        tweak(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        cfg.client_urls = vec![format!("http://{addr}")];
        let store = Store::open(cfg).expect("open store");
        let metrics = Arc::new(HttpMetrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_store(
            listener,
            store.clone(),
            http,
            metrics.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            store,
            metrics,
            stop: Some(tx),
            server,
            _dir: dir,
        }
    }

    /// Starts the graceful shutdown.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub fn watch_streams(&self) -> i64 {
        self.metrics
            .watch_streams
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        self.stop();
        self.server.abort();
        self.store.close();
    }
}

/// Standard base64, as etcd's JSON wants bytes.
pub fn b64(s: &str) -> String {
    b64_bytes(s.as_bytes())
}

pub fn b64_bytes(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// What an HTTP test runs against: the store itself, or a gateway (cache)
/// in front of a store. Same HTTP layer, different [`lookout_gateway::http::EtcdApi`].
#[derive(Debug)]
pub enum Backend {
    Store(TestStore),
    Gateway {
        gw: crate::harness::TestGateway,
        store: TestStore,
    },
}

impl Backend {
    pub async fn store() -> Self {
        Self::Store(TestStore::start().await)
    }

    pub async fn gateway() -> Self {
        let store = TestStore::start().await;
        let gw = crate::harness::TestGateway::start(&[&store.addr]).await;
        Self::Gateway { gw, store }
    }

    /// The HTTP (and gRPC) address clients use.
    pub fn addr(&self) -> &str {
        match self {
            Self::Store(s) => &s.addr,
            Self::Gateway { gw, .. } => &gw.endpoint,
        }
    }

    /// Open HTTP watch streams, as the server counts them.
    pub async fn http_watch_streams(&self) -> i64 {
        match self {
            Self::Store(s) => s.watch_streams(),
            Self::Gateway { gw, .. } => metric(&gw.endpoint, "lookout_http_watch_streams").await,
        }
    }

    /// What an open watch holds below the HTTP layer: the cache's watcher
    /// gauge on the gateway; on the store (which exports no watcher count)
    /// the runtime's live tasks, each watch stream being one.
    pub async fn watch_load(&self) -> i64 {
        match self {
            Self::Store(_) => tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as i64,
            Self::Gateway { gw, .. } => metric(&gw.endpoint, "lookout_watchers").await,
        }
    }

    /// Stops the serving side gracefully; returns once it has stopped.
    pub async fn stop(self) {
        match self {
            Self::Store(mut s) => {
                s.stop();
                tokio::time::timeout(STEP, &mut s.server)
                    .await
                    .expect("store server drains in time")
                    .expect("server task")
                    .expect("server result");
            }
            Self::Gateway { gw, store } => {
                gw.stop().await.expect("gateway stops cleanly");
                drop(store);
            }
        }
    }
}

/// One sample of the gateway's /metrics.
pub async fn metric(addr: &str, name: &str) -> i64 {
    let r = call(addr, "GET", "/metrics", &[], "").await;
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}")) as i64
}

/// Runs an async test case once against the store and once against a
/// gateway in front of a store.
#[macro_export]
macro_rules! on_both {
    ($($name:ident => $case:ident;)*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn store() {
                super::$case($crate::http_client::Backend::store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gateway() {
                super::$case($crate::http_client::Backend::gateway().await).await;
            }
        }
    )*};
}
