//! Shared helpers: a KV client on real etcd, a deterministic workload, and a
//! recorder that drives a cache watch stream and keeps every response.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lookout_cache::{
    Cache, CacheConfig, EtcdUpstream, EtcdUpstreamConfig, WatchFrames, WatchHandle,
};
use lookout_proto::pb::{WatchCreateRequest, WatchResponse};
use lookout_testkit::checker::WatcherLog;
use parking_lot::Mutex;

pub const WAIT: Duration = Duration::from_secs(30);

pub use lookout_testkit::kv::{b, churn, compact, kv, put};

pub fn upstream(endpoints: &[&str]) -> Arc<EtcdUpstream> {
    let mut cfg = EtcdUpstreamConfig::new(endpoints.iter().map(|s| s.to_string()));
    cfg.backoff_base = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.connect_timeout = Duration::from_secs(1);
    Arc::new(EtcdUpstream::new(cfg))
}

pub fn config() -> CacheConfig {
    CacheConfig {
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        ..Default::default()
    }
}

pub async fn start_cache(endpoints: &[&str], cfg: CacheConfig) -> Cache {
    let cache = Cache::start(upstream(endpoints), cfg);
    cache.wait_ready(WAIT).await.expect("cache ready");
    cache
}

/// Every response one stream produced, by watch id (-1: stream-wide).
#[derive(Debug, Default)]
pub struct Responses {
    by_id: HashMap<i64, Vec<WatchResponse>>,
}

/// Drives a stream's `WatchFrames` in a task and records what comes out.
#[derive(Debug)]
pub struct Recorder {
    pub handle: WatchHandle,
    responses: Arc<Mutex<Responses>>,
    requests: Mutex<HashMap<i64, WatchCreateRequest>>,
    reading: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub fn spawn(cache: &Cache) -> Self {
        let (handle, frames) = cache.open_stream();
        Self::drive(handle, frames, true)
    }

    /// A recorder that does not read its stream until [`Recorder::resume`]:
    /// a stalled client.
    pub fn spawn_paused(cache: &Cache) -> Self {
        let (handle, frames) = cache.open_stream();
        Self::drive(handle, frames, false)
    }

    pub fn resume(&self) {
        self.reading.send_replace(true);
    }

    /// A recorder reading the gateway's way: gRPC messages written into a
    /// byte buffer by `next_grpc` (a small soft limit, so passes are cut
    /// often), split and decoded here as a client would.
    pub fn spawn_grpc(cache: &Cache) -> Self {
        let (handle, mut frames) = cache.open_stream();
        let responses = Arc::new(Mutex::new(Responses::default()));
        let sink = responses.clone();
        let (reading, _gate) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            let mut buf = bytes::BytesMut::new();
            while let Ok(n) = frames.next_grpc(&mut buf, 2048).await {
                let mut r = sink.lock();
                let mut got = 0;
                while !buf.is_empty() {
                    use bytes::Buf;
                    use prost::Message;
                    assert_eq!(buf[0], 0, "uncompressed");
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    buf.advance(5);
                    let msg = buf.split_to(len);
                    let resp = WatchResponse::decode(msg.freeze()).expect("valid protobuf");
                    r.by_id.entry(resp.watch_id).or_default().push(resp);
                    got += 1;
                }
                assert_eq!(got, n, "next_grpc counts the messages it wrote");
            }
        });
        Self {
            handle,
            responses,
            requests: Mutex::new(HashMap::new()),
            reading,
            task,
        }
    }

    fn drive(handle: WatchHandle, mut frames: WatchFrames, reading: bool) -> Self {
        let responses = Arc::new(Mutex::new(Responses::default()));
        let sink = responses.clone();
        let (reading, mut gate) = tokio::sync::watch::channel(reading);
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            if gate.wait_for(|r| *r).await.is_err() {
                return;
            }
            while frames.next(&mut out).await.is_ok() {
                let mut r = sink.lock();
                for f in out.drain(..) {
                    // Every frame must be valid protobuf, byte for byte.
                    let resp = f.decode();
                    r.by_id.entry(resp.watch_id).or_default().push(resp);
                }
            }
        });
        Self {
            handle,
            responses,
            requests: Mutex::new(HashMap::new()),
            reading,
            task,
        }
    }

    pub fn watch(&self, req: WatchCreateRequest) -> i64 {
        let id = self.handle.create(&req).expect("create watcher");
        self.requests.lock().insert(id, req);
        id
    }

    pub fn log(&self, id: i64) -> WatcherLog {
        let req = self.requests.lock()[&id].clone();
        let mut log = WatcherLog::new(&req);
        let r = self.responses.lock();
        for resp in r.by_id.get(&id).into_iter().flatten() {
            log.record(resp);
        }
        log
    }

    pub fn responses(&self, id: i64) -> Vec<WatchResponse> {
        self.responses
            .lock()
            .by_id
            .get(&id)
            .cloned()
            .unwrap_or_default()
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
}

impl Recorder {
    /// Waits for watcher `id`'s `created` response; returns its revision.
    pub async fn wait_created(&self, id: i64) -> i64 {
        lookout_testkit::wait_for(&format!("watcher {id} created"), WAIT, || {
            let r = self.log(id).created_rev;
            async move { r }
        })
        .await
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
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
