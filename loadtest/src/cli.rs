//! Command-line flags. `main.rs` only parses them and calls [`run`].

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::cmdline::{fresh_prefix, own_command, parse_duration, parse_labeled, parse_pid};
use crate::compare::{self, CompareArgs};
use crate::error::Result;
use crate::report;
use crate::result::RunResult;
use crate::scenario::RunCtx;
use crate::scenario::fanout::{
    self, CatchupParams, FailoverParams, FanoutParams, HttpParams, SlowParams,
};
use crate::scenario::informers::{self, InformerParams};
use crate::scenario::memory::{self, MemoryParams};
use crate::scenario::ops::{self, Op, OpsParams};
use crate::watch::http::HttpApi;

/// Load generator and checker for etcd-v3-compatible servers.
#[derive(Debug, Parser)]
#[command(name = "lookout-load", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put throughput: N clients over C connections, `--total` puts.
    Put(PutArgs),
    /// Range throughput over preloaded keys.
    Range(RangeArgs),
    /// W prefix watchers over C connections, a writer at R puts/s over K keys.
    Fanout(FanoutArgs),
    /// Fan-out where a fraction of the watchers stop reading for a while.
    Slow(SlowArgs),
    /// N clients list a prefix and watch from its revision + 1 at once,
    /// then a burst every client must see exactly once.
    Informers(InformerArgs),
    /// Watchers starting N revisions behind head.
    Catchup(CatchupArgs),
    /// Fan-out with some or all watchers on the HTTP NDJSON watch stream.
    Http(HttpArgs),
    /// Fan-out where every watch stream is killed mid-run and resumed on a
    /// second endpoint (another gateway) from its last revision + 1.
    Failover(FailoverArgs),
    /// Server RSS per idle watcher, per stream and per connection.
    Memory(MemoryArgs),
    /// Start etcd, etcd grpc-proxy and Lookout, run the same matrix against
    /// each, write a side-by-side report.
    Compare(CompareArgs),
    /// Secondary index: W watchers filtered to their node by the gateway vs
    /// the same W on the whole prefix; gateway CPU per useful event, bytes.
    Index(IndexArgs),
    /// Informers with initial-state watches vs list + watch: time to all
    /// synced, peak gateway RSS.
    Initial(InitialArgs),
}

/// `lookout-load index` flags (starts its own `lookout store` and a fresh
/// `lookout gateway --index` per mode and repetition).
#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    /// The `lookout` binary (default: next to lookout-load, or LOOKOUT_BIN).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
    pub entries: u64,
    #[arg(long, default_value_t = 1000)]
    pub nodes: u64,
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Puts per second (each moves a random entry to a random node).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Padding inside each JSON value, in bytes.
    #[arg(long, default_value_t = 200)]
    pub pad: usize,
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Append the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `lookout-load initial` flags.
#[derive(Debug, Clone, Args)]
pub struct InitialArgs {
    #[arg(long)]
    pub bin: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    pub informers: usize,
    /// Keys every informer syncs.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// List page size of the list + watch informers (Kubernetes: 500).
    #[arg(long, default_value_t = 500)]
    pub page_size: i64,
    #[arg(long, default_value_t = 100)]
    pub pad: usize,
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn write_report(out: Option<&std::path::Path>, text: &str) -> Result<()> {
    println!("{text}");
    if let Some(p) = out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| crate::error::LoadError::io(p, e))?;
        writeln!(f, "{text}").map_err(|e| crate::error::LoadError::io(p, e))?;
    }
    Ok(())
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// gRPC endpoints of the target ("host:port" or "http://host:port"),
    /// comma separated as etcd's tools take them; connections are spread
    /// over them in turn. `--endpoint` is the same flag.
    #[arg(
        long = "endpoints",
        visible_alias = "endpoint",
        value_delimiter = ',',
        num_args = 1..,
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// The store behind the target, read at the end as the checker's truth
    /// (default: the first of --endpoints).
    #[arg(long)]
    pub truth_endpoint: Option<String>,
    /// A server process to measure (CPU seconds, RSS): PID or LABEL=PID.
    #[arg(long = "server-pid", value_parser = parse_pid)]
    pub server_pid: Vec<(String, u32)>,
    /// A Prometheus /metrics to read at the start and end of the run
    /// (HOST:PORT or LABEL=HOST:PORT; Lookout serves it on its client port).
    #[arg(long = "metrics-endpoint", value_parser = parse_labeled)]
    pub metrics_endpoint: Vec<(String, String)>,
    /// Write a markdown table and an SVG latency plot into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Key prefix for this run (default: a fresh "lookout-load/ID/").
    #[arg(long)]
    pub prefix: Option<String>,
    /// The target's name in the result.
    #[arg(long, default_value = "target")]
    pub label: String,
    /// No progress bar on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

/// Fan-out load shape, shared by fanout, slow, http and catchup.
#[derive(Debug, Clone, Args)]
pub struct WatchLoad {
    /// W: watchers on the prefix.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// C: connections the watchers share.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Watch streams per connection (watches are multiplexed on them).
    #[arg(long, default_value_t = 1)]
    pub streams_per_connection: usize,
    /// R: puts per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// K: distinct keys the writer cycles over.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// V: value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// T: how long the writer writes ("10s", "2m", "500ms").
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 1)]
    pub writer_connections: usize,
    /// A put without an answer by then is unknown (maybe applied).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub put_timeout: Duration,
    /// Outstanding puts at most; the writer falls behind schedule beyond.
    #[arg(long, default_value_t = 10_000)]
    pub max_inflight: usize,
    /// Bound on creating all watchers.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
    /// Bound on watchers catching up after the last put.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Reopen attempts per broken watch stream.
    #[arg(long, default_value_t = 5)]
    pub max_resumes: u32,
}

impl WatchLoad {
    pub fn params(&self) -> FanoutParams {
        FanoutParams {
            watchers: self.watchers,
            connections: self.connections,
            streams_per_connection: self.streams_per_connection,
            rate: self.rate,
            keys: self.keys,
            value_size: self.value_size,
            duration: self.duration,
            writer_connections: self.writer_connections,
            put_timeout: self.put_timeout,
            max_inflight: self.max_inflight,
            setup_timeout: self.setup_timeout,
            drain_timeout: self.drain_timeout,
            max_resumes: self.max_resumes,
            slow: None,
            http: None,
            catchup: None,
            failover: None,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: WatchLoad,
    /// Where the killed streams resume ("host:port", e.g. a second gateway).
    #[arg(long)]
    pub resume_endpoint: String,
    /// When the streams are killed, after the writer starts.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub switch_after: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    #[command(flatten)]
    pub common: Common,
    /// W: idle watchers on one stream.
    #[arg(long, default_value_t = 10_000)]
    pub watchers: usize,
    /// S: streams on one connection, one watcher each.
    #[arg(long, default_value_t = 1_000)]
    pub streams: usize,
    /// C: connections with one stream and one watcher each.
    #[arg(long, default_value_t = 1_000)]
    pub connections: usize,
    /// Quiet time before each RSS reading.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: WatchLoad,
}

#[derive(Debug, Clone, Args)]
pub struct SlowArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: WatchLoad,
    /// Fraction of watchers that stop reading (on their own connections).
    #[arg(long, default_value_t = 0.01)]
    pub slow_fraction: f64,
    /// When they stop, after the writer starts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub slow_after: Duration,
    /// How long they do not read.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub slow_for: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: WatchLoad,
    /// Fraction of watchers on HTTP streams (one connection each).
    #[arg(long, default_value_t = 1.0)]
    pub http_fraction: f64,
    /// Which HTTP watch API the target serves.
    #[arg(long, value_enum, default_value = "lookout")]
    pub http_api: HttpApi,
    /// HTTP "host:port" (default: --endpoint).
    #[arg(long)]
    pub http_endpoint: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: WatchLoad,
    /// N: watchers start this many revisions behind head.
    #[arg(long, default_value_t = 10_000)]
    pub behind: u64,
}

#[derive(Debug, Clone, Args)]
pub struct InformerArgs {
    #[command(flatten)]
    pub common: Common,
    /// N: informer clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Connections they share (0: one each).
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Keys in the prefix before they start.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Puts after all are synced; each informer must see each exactly once.
    #[arg(long, default_value_t = 100)]
    pub burst: u64,
    /// Serializable lists (default linearizable).
    #[arg(long)]
    pub serializable: bool,
    /// List page size (0: one Range).
    #[arg(long, default_value_t = 0)]
    pub page_size: i64,
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub sync_timeout: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub put_timeout: Duration,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl InformerArgs {
    pub fn params(&self) -> InformerParams {
        InformerParams {
            clients: self.clients,
            connections: self.connections,
            keys: self.keys,
            value_size: self.value_size,
            burst: self.burst,
            serializable: self.serializable,
            page_size: self.page_size,
            sync_timeout: self.sync_timeout,
            put_timeout: self.put_timeout,
            drain_timeout: self.drain_timeout,
            ..InformerParams::default()
        }
    }
}

/// put and range share their flags.
#[derive(Debug, Clone, Args)]
pub struct OpsLoad {
    /// Concurrent clients (each one request at a time).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Requests in total.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: OpsLoad,
}

#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: OpsLoad,
    /// Serializable reads (default linearizable, as etcd's default).
    #[arg(long)]
    pub serializable: bool,
    /// Range the whole prefix per request instead of one key.
    #[arg(long)]
    pub whole_prefix: bool,
}

impl OpsLoad {
    fn params(&self, op: Op) -> OpsParams {
        OpsParams {
            op,
            clients: self.clients,
            connections: self.connections,
            total: self.total,
            key_size: self.key_size,
            value_size: self.value_size,
            keys: self.keys,
            timeout: self.timeout,
            ..OpsParams::default()
        }
    }
}

fn ctx(c: &Common, stop: CancellationToken) -> RunCtx {
    RunCtx {
        target: c.label.clone(),
        endpoint: c.endpoints.join(","),
        truth_endpoint: c
            .truth_endpoint
            .clone()
            .unwrap_or_else(|| c.endpoints[0].clone()),
        prefix: Bytes::from(c.prefix.clone().unwrap_or_else(fresh_prefix)),
        server_pids: c.server_pid.clone(),
        metrics_endpoints: c.metrics_endpoint.clone(),
        progress: !c.no_progress,
        stop,
        command: own_command(),
    }
}

/// Runs one command: prints the JSON line(s) on stdout, writes reports.
///
/// # Errors
/// When a scenario cannot start or a report cannot be written.
pub async fn run(cli: Cli, stop: CancellationToken) -> Result<()> {
    // Thousands of watchers or HTTP streams need descriptors; a failure
    // here only matters if the run needs them, and then it says so.
    if let Err(e) = compare::raise_nofile() {
        eprintln!("lookout-load: could not raise the open-file limit: {e}");
    }
    let (common, res): (Common, RunResult) = match cli.cmd {
        Command::Compare(args) => return compare::run(args, stop).await.map(|_| ()),
        Command::Index(a) => {
            let p = crate::scenario::index::IndexBenchParams {
                bin: a
                    .bin
                    .clone()
                    .unwrap_or_else(lookout_testkit::lookout_stack::default_bin),
                entries: a.entries,
                nodes: a.nodes,
                watchers: a.watchers,
                connections: a.connections,
                rate: a.rate,
                duration: a.duration,
                pad: a.pad,
                repeat: a.repeat.max(1),
                drain_timeout: a.drain_timeout,
            };
            let text = crate::scenario::index::run_index(&p).await?;
            return write_report(a.out.as_deref(), &format!("{}\n\n{text}", own_command()));
        }
        Command::Initial(a) => {
            let p = crate::scenario::index::InitialBenchParams {
                bin: a
                    .bin
                    .clone()
                    .unwrap_or_else(lookout_testkit::lookout_stack::default_bin),
                informers: a.informers,
                keys: a.keys,
                connections: a.connections,
                page_size: a.page_size,
                pad: a.pad,
                repeat: a.repeat.max(1),
                timeout: a.timeout,
            };
            let text = crate::scenario::index::run_initial(&p).await?;
            return write_report(a.out.as_deref(), &format!("{}\n\n{text}", own_command()));
        }
        Command::Put(a) => {
            let r = ops::run(&ctx(&a.common, stop), &a.load.params(Op::Put)).await?;
            (a.common, r)
        }
        Command::Range(a) => {
            let mut p = a.load.params(Op::Range);
            p.serializable = a.serializable;
            p.whole_prefix = a.whole_prefix;
            let r = ops::run(&ctx(&a.common, stop), &p).await?;
            (a.common, r)
        }
        Command::Fanout(a) => {
            let r = fanout::run(&ctx(&a.common, stop), &a.load.params()).await?;
            (a.common, r)
        }
        Command::Slow(a) => {
            let mut p = a.load.params();
            p.slow = Some(SlowParams {
                fraction: a.slow_fraction,
                after: a.slow_after,
                for_: a.slow_for,
            });
            let r = fanout::run(&ctx(&a.common, stop), &p).await?;
            (a.common, r)
        }
        Command::Http(a) => {
            let mut p = a.load.params();
            p.http = Some(HttpParams {
                fraction: a.http_fraction,
                api: a.http_api,
                addr: crate::conn::host_port(
                    a.http_endpoint.as_deref().unwrap_or(&a.common.endpoints[0]),
                ),
            });
            let r = fanout::run(&ctx(&a.common, stop), &p).await?;
            (a.common, r)
        }
        Command::Catchup(a) => {
            let mut p = a.load.params();
            p.catchup = Some(CatchupParams { behind: a.behind });
            let r = fanout::run(&ctx(&a.common, stop), &p).await?;
            (a.common, r)
        }
        Command::Informers(a) => {
            let r = informers::run(&ctx(&a.common, stop), &a.params()).await?;
            (a.common, r)
        }
        Command::Failover(a) => {
            let mut p = a.load.params();
            p.failover = Some(FailoverParams {
                after: a.switch_after,
                endpoint: crate::conn::host_port(&a.resume_endpoint),
            });
            let r = fanout::run(&ctx(&a.common, stop), &p).await?;
            (a.common, r)
        }
        Command::Memory(a) => {
            let p = MemoryParams {
                watchers: a.watchers,
                streams: a.streams,
                connections: a.connections,
                settle: a.settle,
                ..MemoryParams::default()
            };
            let r = memory::run(&ctx(&a.common, stop), &p).await?;
            (a.common, r)
        }
    };
    println!("{}", res.to_json_line());
    if let Some(dir) = &common.report {
        report::write_single(dir, &res)?;
        eprintln!("report written to {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_etcds_spelling_and_the_old_one() {
        use clap::Parser;
        let ctx_of = |args: &[&str]| {
            let mut all = vec!["lookout-load", "fanout"];
            all.extend(args);
            let cli = Cli::try_parse_from(all).unwrap();
            let Command::Fanout(f) = cli.cmd else {
                panic!("fanout")
            };
            ctx(&f.common, CancellationToken::new())
        };
        let c = ctx_of(&["--endpoints", "127.0.0.1:1,http://127.0.0.1:2"]);
        assert_eq!(c.endpoint, "127.0.0.1:1,http://127.0.0.1:2");
        assert_eq!(c.truth_endpoint, "127.0.0.1:1");
        let c = ctx_of(&["--endpoint", "127.0.0.1:3"]);
        assert_eq!(c.endpoint, "127.0.0.1:3");
        let c = ctx_of(&["--endpoints=127.0.0.1:4", "--truth-endpoint=127.0.0.1:5"]);
        assert_eq!(
            (c.endpoint.as_str(), c.truth_endpoint.as_str()),
            ("127.0.0.1:4", "127.0.0.1:5")
        );
        assert_eq!(ctx_of(&[]).endpoint, "127.0.0.1:2379");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
