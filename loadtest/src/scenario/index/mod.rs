//! Secondary-index benchmarks against real `lookout` processes, each mode
//! measured beside its baseline in the same run, on a fresh gateway per
//! mode (so peak RSS is that mode's own):
//!
//! - `index`: N JSON entries spread over M node values; W watchers each
//!   filtered to its node (server-side index) vs the same W watchers on the
//!   whole prefix (filtering on the client), a writer at R puts/s moving
//!   entries between nodes. Gateway CPU per useful event and bytes sent.
//!   The watchers share C connections (`--connections`): C = W is every
//!   agent its own client; fewer let the gateway hand a whole-prefix event
//!   to a connection's watchers in one write, a cheaper baseline.
//! - `initial`: I informers, each syncing K keys, with one initial-state
//!   watch vs list (paged) + watch from the list's revision + 1. Time until
//!   all are synced and the gateway's peak RSS.
//!
//! ```text
//!  lookout store (one) ─ preload (txns of 128 puts)
//!   per repetition, per mode: lookout gateway --index node@P=json:/node (fresh)
//!     clients: raw gRPC watch streams, responses scanned, never decoded
//!     ─> gateway CPU (/proc), bytes received, events, time, VmHWM
//! ```
//!
//! The clients only scan each response's top-level fields (flags, header
//! revision, number of events) and count bytes, so the load generator's
//! cost stays far below the gateway's even when every watcher receives the
//! whole prefix.
//!
//! Where things live: this file has what both benchmarks share (the
//! scanning codec, the processes, the preload); `filtered` is `index`,
//! `initial` is `initial`.

mod filtered;
mod initial;

pub use filtered::{IndexBenchParams, IndexRun, run_index};
pub use initial::{InitialBenchParams, InitialRun, run_initial};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use lookout_proto::pb;
use lookout_testkit::{ChildGuard, free_port, spawn_logged};
use prost::encoding::decode_varint;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use crate::conn;
use crate::error::{LoadError, Result};

// === a scanning codec: counts, never decodes ===

/// What the benchmarks need from a `WatchResponse`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan {
    /// Encoded message length.
    pub len: usize,
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub events: u32,
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct ScanCodec;

impl Codec for ScanCodec {
    type Encode = pb::WatchRequest;
    type Decode = Scan;
    type Encoder = <ProstCodec<pb::WatchRequest, pb::WatchResponse> as Codec>::Encoder;
    type Decoder = ScanDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<pb::WatchRequest, pb::WatchResponse>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ScanDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ScanDecoder;

impl Decoder for ScanDecoder {
    type Item = Scan;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut DecodeBuf<'_>,
    ) -> std::result::Result<Option<Scan>, tonic::Status> {
        let n = buf.remaining();
        let bytes = buf.copy_to_bytes(n);
        scan(&bytes)
            .map(Some)
            .ok_or_else(|| tonic::Status::internal("bad WatchResponse"))
    }
}

fn scan(mut b: &[u8]) -> Option<Scan> {
    let mut s = Scan {
        len: b.len(),
        ..Default::default()
    };
    while !b.is_empty() {
        let k = decode_varint(&mut b).ok()?;
        let (field, wire) = (k >> 3, k & 7);
        match wire {
            0 => {
                let v = decode_varint(&mut b).ok()?;
                match field {
                    2 => s.watch_id = v as i64,
                    3 => s.created = v != 0,
                    4 => s.canceled = v != 0,
                    _ => {}
                }
            }
            2 => {
                let len = decode_varint(&mut b).ok()? as usize;
                if len > b.len() {
                    return None;
                }
                let (v, rest) = b.split_at(len);
                b = rest;
                match field {
                    1 => s.revision = header_revision(v)?,
                    11 => s.events += 1,
                    _ => {}
                }
            }
            1 if b.len() >= 8 => b = &b[8..],
            5 if b.len() >= 4 => b = &b[4..],
            _ => return None,
        }
    }
    Some(s)
}

fn header_revision(mut b: &[u8]) -> Option<i64> {
    let mut rev = 0;
    while !b.is_empty() {
        let k = decode_varint(&mut b).ok()?;
        match k & 7 {
            0 => {
                let v = decode_varint(&mut b).ok()?;
                if k >> 3 == 3 {
                    rev = v as i64;
                }
            }
            _ => return None,
        }
    }
    Some(rev)
}

async fn open_stream(
    ch: &Channel,
    first: Vec<pb::WatchRequest>,
) -> Result<(
    mpsc::UnboundedSender<pb::WatchRequest>,
    tonic::Streaming<Scan>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for r in first {
        let _ = tx.send(r);
    }
    let mut grpc = tonic::client::Grpc::new(ch.clone()).max_decoding_message_size(512 << 20);
    grpc.ready()
        .await
        .map_err(|e| LoadError::InvalidArgument(format!("connection not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let s = grpc
        .streaming(
            tonic::Request::new(UnboundedReceiverStream::new(rx)),
            path,
            ScanCodec,
        )
        .await
        .map_err(|e| LoadError::InvalidArgument(format!("watch: {e}")))?
        .into_inner();
    Ok((tx, s))
}

fn create(req: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(req)),
    }
}

fn progress() -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        )),
    }
}

// === processes ===

/// A `lookout store` and fresh gateways in front of it.
struct Procs {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Kept for its Drop, which kills the store.
    _store: ChildGuard,
    store_endpoint: String,
}

impl Procs {
    async fn start(bin: &Path) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| LoadError::InvalidArgument(e.to_string()))?;
        let port = free_port();
        let store_endpoint = format!("127.0.0.1:{port}");
        let url = format!("http://{store_endpoint}");
        let mut cmd = std::process::Command::new(bin);
        cmd.env("RUST_LOG", "warn")
            .args(["store", "--name", "s1", "--data-dir"])
            .arg(dir.path().join("store"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ]);
        let store = spawn_logged(cmd, &dir.path().join("store.log"))
            .map_err(|e| LoadError::InvalidArgument(format!("spawn store: {e}")))?;
        wait_serving(&store_endpoint).await?;
        Ok(Self {
            bin: bin.to_path_buf(),
            dir,
            _store: store,
            store_endpoint,
        })
    }

    async fn gateway(&self, index: &str) -> Result<(ChildGuard, String)> {
        let port = free_port();
        let ep = format!("127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.env("RUST_LOG", "warn").args([
            "gateway",
            "--listen-addr",
            &ep,
            "--endpoints",
            &self.store_endpoint,
            "--index",
            index,
        ]);
        let g = spawn_logged(cmd, &self.dir.path().join(format!("gateway-{port}.log")))
            .map_err(|e| LoadError::InvalidArgument(format!("spawn gateway: {e}")))?;
        wait_serving(&ep).await?;
        Ok((g, ep))
    }
}

async fn wait_serving(ep: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if lookout_testkit::grpc_status(ep).await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(LoadError::InvalidArgument(format!(
        "{ep} did not serve in 60s"
    )))
}

fn node_value(node: u64, pad: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"node":"n{node}","spec":{{"pad":"{}"}}}}"#,
        "x".repeat(pad)
    ))
}

fn entry_key(prefix: &str, i: u64) -> Bytes {
    Bytes::from(format!("{prefix}e{i:07}"))
}

/// Writes `entries` keys in txns of 128 puts; returns the last revision.
async fn preload(
    ch: &Channel,
    prefix: &str,
    entries: u64,
    node_of: impl Fn(u64) -> u64,
    pad: usize,
) -> Result<i64> {
    let mut kv = conn::kv(ch);
    let mut rev = 0;
    let mut i = 0;
    while i < entries {
        let n = (entries - i).min(128);
        let ops = (i..i + n)
            .map(|j| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: entry_key(prefix, j),
                    value: node_value(node_of(j), pad),
                    ..Default::default()
                })),
            })
            .collect();
        let r = kv
            .txn(pb::TxnRequest {
                success: ops,
                ..Default::default()
            })
            .await
            .map_err(|e| LoadError::InvalidArgument(format!("preload: {e}")))?;
        rev = r.into_inner().header.map_or(rev, |h| h.revision);
        i += n;
    }
    Ok(rev)
}

fn range_end(prefix: &str) -> Bytes {
    crate::payload::prefix_range_end(&Bytes::copy_from_slice(prefix.as_bytes()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}
