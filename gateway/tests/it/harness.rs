//! Shared helpers: an in-process gateway on 127.0.0.1:0, plain etcd v3
//! clients over lookout-proto, a deterministic write workload, and a gRPC
//! watch client that records every response into the checker's logs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lookout_gateway::{Gateway, GatewayConfig, GatewayError};
use lookout_proto::pb::{
    WatchCreateRequest, WatchRequest, watch_client::WatchClient, watch_request,
};
use lookout_testkit::checker::WatcherLog;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

pub const WAIT: Duration = Duration::from_secs(30);

pub use lookout_testkit::kv::{b, channel, churn, compact, kv, put, put_op, txn};

/// A gateway running in this process.
#[derive(Debug)]
pub struct TestGateway {
    /// "127.0.0.1:port".
    pub endpoint: String,
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), GatewayError>>>,
}

/// Test defaults: quick reconnects, every key cached.
pub fn config(endpoints: &[&str]) -> GatewayConfig {
    let mut c = GatewayConfig::new(endpoints.iter().map(|s| s.to_string()));
    c.upstream.backoff_base = Duration::from_millis(20);
    c.upstream.backoff_max = Duration::from_millis(500);
    c.upstream.connect_timeout = Duration::from_secs(1);
    c.cache.backoff_base = Duration::from_millis(20);
    c.cache.backoff_max = Duration::from_millis(500);
    c.shutdown_timeout = Duration::from_secs(5);
    c
}

impl TestGateway {
    pub async fn start(endpoints: &[&str]) -> Self {
        Self::start_with(config(endpoints)).await
    }

    /// Starts a gateway on an ephemeral port and waits until its cache has
    /// listed the store.
    pub async fn start_with(cfg: GatewayConfig) -> Self {
        let gw = Self::start_unready(cfg).await;
        lookout_testkit::wait_for("gateway cache ready", WAIT, || {
            let ep = gw.endpoint.clone();
            async move { health_ok(&ep).await.then_some(()) }
        })
        .await;
        gw
    }

    /// Starts a gateway without waiting for its cache.
    pub async fn start_unready(cfg: GatewayConfig) -> Self {
        Self::start_on(cfg, "127.0.0.1:0").await
    }

    /// Starts a gateway on `addr` (a restarted gateway takes its old port).
    pub async fn start_on(cfg: GatewayConfig, addr: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind gateway");
        let gw = Gateway::start(cfg, listener).await.expect("start gateway");
        let endpoint = gw.local_addr().to_string();
        let metrics_addr = gw.metrics_addr();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        Self {
            endpoint,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// SIGTERM's path: stops the gateway and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), GatewayError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("gateway stops in bounded time")
            .expect("gateway task")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// GET http://endpoint/path over HTTP/1.1 with a bounded wait; (status, body).
pub async fn http_get(endpoint: &str, path: &str) -> Option<(u16, String)> {
    lookout_testkit::http1::get(endpoint, path, Duration::from_secs(5))
        .await
        .ok()
}

pub async fn health_ok(endpoint: &str) -> bool {
    matches!(http_get(endpoint, "/health").await, Some((200, _)))
}

pub fn prefix_watch(prefix: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: b(prefix),
        range_end: lookout_cache::prefix_end(prefix.as_bytes())
            .unwrap_or_else(|| Bytes::from_static(&[0])),
        start_revision: start,
        ..Default::default()
    }
}

pub fn all_keys_watch(start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: Bytes::from_static(&[0]),
        range_end: Bytes::from_static(&[0]),
        start_revision: start,
        ..Default::default()
    }
}

/// How a watch stream ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEnd {
    Open,
    Ok,
    Status(tonic::Code, String),
}

/// One gRPC Watch stream through a real connection, recording every
/// response by watch id. Watch ids are chosen by the client, so a watcher
/// resumed on another stream keeps its log.
#[derive(Debug)]
pub struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    pub logs: Arc<Mutex<HashMap<i64, WatcherLog>>>,
    pub end: Arc<Mutex<StreamEnd>>,
    /// `cancel_reason`s of created+canceled responses with watch id -1.
    pub refusals: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchStream {
    /// Opens a stream on `endpoint`, logging into fresh logs.
    pub async fn open(endpoint: &str) -> Self {
        Self::open_with(endpoint, Arc::new(Mutex::new(HashMap::new()))).await
    }

    /// Opens a stream that records into existing `logs` (a client resuming).
    pub async fn open_with(endpoint: &str, logs: Arc<Mutex<HashMap<i64, WatcherLog>>>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let mut client =
            WatchClient::new(channel(endpoint).await).max_decoding_message_size(usize::MAX);
        let end = Arc::new(Mutex::new(StreamEnd::Open));
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let (l, e, f) = (logs.clone(), end.clone(), refusals.clone());
        let task = tokio::spawn(async move {
            let mut stream = match client
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    *e.lock() = StreamEnd::Status(s.code(), s.message().to_string());
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.watch_id == -1 && resp.canceled {
                            f.lock().push(resp.cancel_reason.clone());
                        }
                        if let Some(log) = l.lock().get_mut(&resp.watch_id) {
                            log.record(&resp);
                        } else if resp.watch_id == -1 && !resp.created {
                            // Stream-wide progress: every watcher has it.
                            for log in l.lock().values_mut() {
                                log.record(&resp);
                            }
                        }
                    }
                    Ok(None) => {
                        *e.lock() = StreamEnd::Ok;
                        return;
                    }
                    Err(s) => {
                        *e.lock() = StreamEnd::Status(s.code(), s.message().to_string());
                        return;
                    }
                }
            }
        });
        Self {
            tx,
            logs,
            end,
            refusals,
            task,
        }
    }

    /// Creates watcher `id` (client-chosen) from `req`. A new id starts a
    /// new log; a known id (a resumed watcher) keeps appending to its log.
    pub async fn watch(&self, id: i64, mut req: WatchCreateRequest) {
        req.watch_id = id;
        self.logs
            .lock()
            .entry(id)
            .or_insert_with(|| WatcherLog::new(&req));
        self.send(watch_request::RequestUnion::CreateRequest(req))
            .await;
    }

    pub async fn send(&self, r: watch_request::RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .expect("stream open");
    }

    /// The first refusal's reason, if any.
    pub fn raw_refusals(&self) -> Option<String> {
        self.refusals.lock().first().cloned()
    }

    pub fn log(&self, id: i64) -> WatcherLog {
        self.logs.lock()[&id].clone()
    }

    pub fn ended(&self) -> StreamEnd {
        self.end.lock().clone()
    }

    /// Waits until watcher `id` has an event at or above `rev`, or is cancelled.
    pub async fn wait_until(&self, id: i64, rev: i64) {
        lookout_testkit::wait_for(
            &format!("watcher {id} to reach revision {rev}"),
            WAIT,
            || {
                let log = self.log(id);
                let done = log.canceled || log.last_revision().is_some_and(|r| r >= rev);
                async move { done.then_some(()) }
            },
        )
        .await;
    }

    /// Waits for watcher `id`'s `created` response; returns its revision.
    pub async fn wait_created(&self, id: i64) -> i64 {
        lookout_testkit::wait_for(&format!("watcher {id} created"), WAIT, || {
            let r = self.log(id).created_rev;
            async move { r }
        })
        .await
    }

    /// Waits until the stream has ended; returns how.
    pub async fn wait_end(&self) -> StreamEnd {
        lookout_testkit::wait_for("watch stream to end", WAIT, || {
            let e = self.ended();
            async move { (e != StreamEnd::Open).then_some(e) }
        })
        .await
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
