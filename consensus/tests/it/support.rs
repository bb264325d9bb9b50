//! In-process store servers and gRPC clients for the tests.

use std::time::Duration;

use lookout_consensus::{Store, StoreConfig};
use lookout_proto::pb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient,
};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A store served on an ephemeral loopback port; stops on drop.
pub struct TestServer {
    pub store: Store,
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut StoreConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tweak).await
    }

    /// Starts on an existing data dir (restart tests).
    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut StoreConfig)) -> Self {
        let mut cfg = StoreConfig::new(dir.path().join("data"));
        tweak(&mut cfg);
        // A restart in the same test reopens the files the previous
        // instance had: its connection tasks may still be letting go of
        // them on a loaded machine, so retry (bounded) while that lasts.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let store = loop {
            match Store::open(cfg.clone()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "store not reopened yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("store did not reopen within 15 s: {e}"),
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let (stop, rx) = oneshot::channel();
        let s = store.clone();
        let task = tokio::spawn(async move {
            lookout_consensus::serve(listener, s, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            store,
            endpoint,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops serving, closes the store and hands back its data dir.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown().await;
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || s.close())
            .await
            .unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// gRPC clients for one endpoint.
#[derive(Clone)]
pub struct Clients {
    pub kv: KvClient<Channel>,
    pub watch: WatchClient<Channel>,
    pub lease: LeaseClient<Channel>,
    pub maint: MaintenanceClient<Channel>,
}

pub async fn connect(endpoint: &str) -> Clients {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let big = 64 * 1024 * 1024;
    Clients {
        kv: KvClient::new(ch.clone())
            .max_decoding_message_size(big)
            .max_encoding_message_size(big),
        watch: WatchClient::new(ch.clone()).max_decoding_message_size(big),
        lease: LeaseClient::new(ch.clone()),
        maint: MaintenanceClient::new(ch),
    }
}

pub fn put(key: &str, value: &str) -> lookout_proto::pb::PutRequest {
    lookout_proto::pb::PutRequest {
        key: key.to_string().into(),
        value: value.to_string().into(),
        ..Default::default()
    }
}

pub fn get(key: &str) -> lookout_proto::pb::RangeRequest {
    lookout_proto::pb::RangeRequest {
        key: key.to_string().into(),
        ..Default::default()
    }
}

/// `range_end` of every key starting with `prefix` (etcdctl's `--prefix`).
pub fn prefix_end(prefix: &str) -> bytes::Bytes {
    lookout_semantics::prefix_range_end(prefix.as_bytes())
}
