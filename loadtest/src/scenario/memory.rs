//! Memory per watcher, per stream and per connection, measured as what the
//! server process's RSS grows by when idle watches are added, in three
//! steps on one running target (nothing is closed in between: freed memory
//! is not reliably returned to the OS, so each step measures an increment):
//!
//! ```text
//!   settle ─> RSS0
//!   1 connection, 1 stream, W watchers        ─> RSS1   per watcher    = (RSS1-RSS0)/W
//!   1 connection, S streams x 1 watcher       ─> RSS2   per stream     = (RSS2-RSS1)/S - per watcher
//!   C connections x 1 stream x 1 watcher      ─> RSS3   per connection = (RSS3-RSS2)/C - per stream - per watcher
//! ```
//!
//! Every watch is on the same prefix and idle (no writes), as etcd's own
//! published figures are measured (~350 B per watcher, ~18 KB per stream,
//! ~17 KB per connection). A step waits until every create is answered, then
//! for the RSS to settle, before it reads the number.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lookout_proto::pb;
use lookout_proto::pb::watch_request::RequestUnion;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::{ClientProc, RunCtx, p, secs};
use crate::conn;
use crate::error::{LoadError, Result};
use crate::payload;
use crate::procstat::ProcWatch;
use crate::result::{MemoryStats, RunResult};
use crate::watch::grpc::open_watch;
use crate::watch::lite::LiteResponse;

/// How many of each to open.
#[derive(Debug, Clone)]
pub struct MemoryParams {
    /// W: watchers on one stream.
    pub watchers: usize,
    /// S: streams on one connection, one watcher each.
    pub streams: usize,
    /// C: connections, one stream with one watcher each.
    pub connections: usize,
    /// Bound on each step's creates.
    pub setup_timeout: Duration,
    /// Quiet time before RSS is read (the server finishes allocating).
    pub settle: Duration,
}

impl Default for MemoryParams {
    fn default() -> Self {
        Self {
            watchers: 10_000,
            streams: 1_000,
            connections: 1_000,
            setup_timeout: Duration::from_secs(60),
            settle: Duration::from_secs(1),
        }
    }
}

impl MemoryParams {
    pub fn params(&self) -> BTreeMap<String, serde_json::Value> {
        let mut m = BTreeMap::new();
        m.insert("watchers".into(), p(self.watchers));
        m.insert("streams".into(), p(self.streams));
        m.insert("connections".into(), p(self.connections));
        m.insert("settle_s".into(), p(secs(self.settle)));
        m
    }
}

/// One open stream whose watchers were all created: kept until the end.
struct Held {
    _tx: mpsc::UnboundedSender<pb::WatchRequest>,
    _stream: Streaming<LiteResponse>,
}

/// Opens a stream on `ch` with `n` idle watchers and waits for every
/// `created`.
async fn open_stream(ch: &Channel, target: &crate::watch::WatchTarget, n: usize) -> Result<Held> {
    let (tx, rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        let req = pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: target.key.clone(),
                range_end: target.range_end.clone(),
                ..Default::default()
            })),
        };
        tx.send(req)
            .map_err(|_| LoadError::InvalidArgument("request stream closed".into()))?;
    }
    let mut stream = open_watch(ch, UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| LoadError::rpc("watch", s))?
        .into_inner();
    let mut created = 0;
    while created < n {
        match stream.message().await {
            Ok(Some(r)) if r.created && !r.canceled => created += 1,
            Ok(Some(r)) if r.canceled => {
                return Err(LoadError::InvalidArgument(format!(
                    "watch refused: {}",
                    r.cancel_reason
                )));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(LoadError::InvalidArgument("stream closed".into())),
            Err(s) => return Err(LoadError::rpc("watch stream", s)),
        }
    }
    Ok(Held {
        _tx: tx,
        _stream: stream,
    })
}

/// Runs `count` stream openings, `parallel` at a time, under `bound`.
async fn open_many(
    chans: &[Channel],
    target: &crate::watch::WatchTarget,
    count: usize,
    per_stream: usize,
    bound: Duration,
) -> Result<Vec<Held>> {
    use futures::StreamExt;
    let work = futures::stream::iter(0..count)
        .map(|i| open_stream(&chans[i % chans.len()], target, per_stream))
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    let all = tokio::time::timeout(bound, work)
        .await
        .map_err(|_| LoadError::Timeout {
            what: format!("opening {count} watch streams"),
            secs: bound.as_secs_f64(),
        })?;
    all.into_iter().collect()
}

/// The front process's RSS once it has been quiet for `settle`.
async fn settled_rss(w: &ProcWatch, settle: Duration) -> u64 {
    tokio::time::sleep(settle).await;
    w.rss_each().first().copied().unwrap_or(0)
}

/// Runs the three steps against `ctx`.
///
/// # Errors
/// When a step cannot open its watches in time or the target refuses them.
pub async fn run(ctx: &RunCtx, prm: &MemoryParams) -> Result<RunResult> {
    if ctx.server_pids.is_empty() {
        return Err(LoadError::InvalidArgument(
            "memory needs --server-pid (the process whose RSS is measured)".into(),
        ));
    }
    let started = Instant::now();
    let loadavg_1m = super::loadavg_1m();
    let client = ClientProc::start();
    let target = crate::watch::WatchTarget {
        key: ctx.prefix.clone(),
        range_end: payload::prefix_range_end(&ctx.prefix),
    };
    let watch = ProcWatch::start(&ctx.server_pids);
    let rss0 = settled_rss(&watch, prm.settle).await;

    let t = Instant::now();
    let one = conn::connect(&ctx.endpoint).await?;
    let shared = open_many(
        std::slice::from_ref(&one),
        &target,
        1,
        prm.watchers,
        prm.setup_timeout,
    )
    .await?;
    let s1 = t.elapsed().as_secs_f64();
    let rss1 = settled_rss(&watch, prm.settle).await;

    let t = Instant::now();
    let two = conn::connect(&ctx.endpoint).await?;
    let streams = open_many(
        std::slice::from_ref(&two),
        &target,
        prm.streams,
        1,
        prm.setup_timeout,
    )
    .await?;
    let s2 = t.elapsed().as_secs_f64();
    let rss2 = settled_rss(&watch, prm.settle).await;

    let t = Instant::now();
    let chans = conn::connect_many(&ctx.endpoint, prm.connections).await?;
    let conns = open_many(&chans, &target, prm.connections, 1, prm.setup_timeout).await?;
    let s3 = t.elapsed().as_secs_f64();
    let rss3 = settled_rss(&watch, prm.settle).await;

    let servers = watch.finish();
    drop((shared, streams, conns, chans, one, two));

    let per_watcher = (rss1 as f64 - rss0 as f64) / prm.watchers.max(1) as f64;
    let per_stream = (rss2 as f64 - rss1 as f64) / prm.streams.max(1) as f64 - per_watcher;
    let per_connection =
        (rss3 as f64 - rss2 as f64) / prm.connections.max(1) as f64 - per_stream - per_watcher;
    let mut res = RunResult {
        scenario: "memory".into(),
        target: ctx.target.clone(),
        endpoint: ctx.endpoint.clone(),
        params: prm.params(),
        command: ctx.command.clone(),
        sustained: true,
        setup_s: Some(s1 + s2 + s3),
        servers,
        memory: Some(MemoryStats {
            rss_start_bytes: rss0,
            rss_watchers_bytes: rss1,
            rss_streams_bytes: rss2,
            rss_connections_bytes: rss3,
            per_watcher_bytes: per_watcher,
            per_stream_bytes: per_stream,
            per_connection_bytes: per_connection,
            setup_s: [s1, s2, s3],
        }),
        ..RunResult::default()
    };
    if rss0 == 0 {
        res.problem("could not read the server's RSS");
    }
    res.client = client.finish();
    res.duration_s = started.elapsed().as_secs_f64();
    res.loadavg_1m = loadavg_1m;
    Ok(res)
}
