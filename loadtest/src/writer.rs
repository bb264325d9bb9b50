//! The paced writer: single-key puts at a fixed rate (open loop), each value
//! stamped with its sequence number and send time.
//!
//! ```text
//!   schedule: put i due at t0 + i/R ──> send (stamp now) ──> ack(rev) | timeout | error
//!                                      (up to max_inflight outstanding)
//! ```
//!
//! Open loop: a slow server does not slow the schedule down (that would hide
//! the latency the server causes); the writer only stops sending when
//! `max_inflight` puts are outstanding, and reports how far it fell behind.
//! A put that timed out or failed is *unknown*, not absent: the store may
//! still have applied it, and the checker asks the store's history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lookout_proto::pb;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::conn;
use crate::hist::{LatencyHist, LatencySummary};
use crate::payload;
use crate::progress::Counters;

/// What to write.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub prefix: Bytes,
    /// Distinct keys cycled over.
    pub keys: u64,
    pub value_size: usize,
    /// Puts in total.
    pub total: u64,
    /// Puts per second; `None` sends as fast as `max_inflight` allows.
    pub rate: Option<f64>,
    pub put_timeout: Duration,
    pub max_inflight: usize,
    /// Sequence number of the first put, so several phases of one run never
    /// reuse a sequence number.
    pub first_seq: u64,
}

/// A put's outcome, by sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Never sent (the run stopped first).
    NotSent,
    /// Acknowledged at this revision.
    Acked(i64),
    /// Timed out or failed: may or may not have been applied.
    Unknown,
}

/// Everything the writer did.
#[derive(Debug)]
pub struct WriterReport {
    pub first_seq: u64,
    /// Indexed by `seq - first_seq`.
    pub outcomes: Vec<PutOutcome>,
    pub sent: u64,
    pub acked: u64,
    pub timed_out: u64,
    pub failed: u64,
    /// Error message -> count, for the report.
    pub errors: BTreeMap<String, u64>,
    pub put_latency: LatencyHist,
    pub started: Instant,
    /// When the last put resolved.
    pub finished: Instant,
    /// Worst delay of a send behind its schedule.
    pub max_lag: Duration,
    /// True when the stop signal cut the schedule short.
    pub interrupted: bool,
}

impl WriterReport {
    /// Highest acknowledged revision (0 if none).
    pub fn max_acked_rev(&self) -> i64 {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                PutOutcome::Acked(r) => Some(*r),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Acknowledged revisions, ascending.
    pub fn acked_revisions(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .outcomes
            .iter()
            .filter_map(|o| match o {
                PutOutcome::Acked(r) => Some(*r),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    }

    pub fn outcome(&self, seq: u64) -> Option<PutOutcome> {
        seq.checked_sub(self.first_seq)
            .and_then(|i| self.outcomes.get(i as usize))
            .copied()
    }

    /// The serialisable summary.
    pub fn stats(&self) -> WriterStats {
        let secs = self.finished.duration_since(self.started).as_secs_f64();
        WriterStats {
            sent: self.sent,
            acked: self.acked,
            timed_out: self.timed_out,
            failed: self.failed,
            achieved_rate: if secs > 0.0 {
                self.acked as f64 / secs
            } else {
                0.0
            },
            max_lag_ms: self.max_lag.as_secs_f64() * 1e3,
            errors: self.errors.clone(),
            put_latency: self.put_latency.summary(),
            unknown_applied: 0,
            unknown_absent: 0,
            acked_lost: 0,
        }
    }
}

/// The writer's part of a result line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WriterStats {
    pub sent: u64,
    pub acked: u64,
    pub timed_out: u64,
    pub failed: u64,
    /// Acknowledged puts per second over the writer's whole run.
    pub achieved_rate: f64,
    pub max_lag_ms: f64,
    pub errors: BTreeMap<String, u64>,
    pub put_latency: LatencySummary,
    /// Unknown puts the store's history shows were applied.
    pub unknown_applied: u64,
    /// Unknown puts absent from the store's history at the end.
    pub unknown_absent: u64,
    /// Acknowledged puts that are not in the store's history: a lost write.
    pub acked_lost: u64,
}

/// [`run`] on its own thread with its own connections and runtime, as a
/// separate writer process would be: with thousands of watchers the load
/// generator's main runtime is busy decoding events, and a writer sharing
/// it would measure its own queueing as the target's put latency (and
/// stamp puts late). Falls back to `fallback` channels on the caller's
/// runtime if the thread or its connections cannot be set up.
pub async fn run_isolated(
    endpoint: &str,
    connections: usize,
    cfg: &WriterConfig,
    counters: Arc<Counters>,
    stop: CancellationToken,
    fallback: &[Channel],
) -> WriterReport {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (ep, cfg2, counters2, stop2) = (
        endpoint.to_string(),
        cfg.clone(),
        counters.clone(),
        stop.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name("lookout-load-writer".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return,
            };
            rt.block_on(async move {
                let Ok(chs) = conn::connect_many(&ep, connections.max(1)).await else {
                    return;
                };
                let rep = run(&chs, &cfg2, counters2, stop2).await;
                let _ = tx.send(rep);
            });
        });
    if spawned.is_ok()
        && let Ok(rep) = rx.await
    {
        return rep;
    }
    run(fallback, cfg, counters, stop).await
}

/// Runs the writer over `channels` (round robin) until `total` puts are
/// resolved or `stop` fires. Never errors: failures are outcomes.
pub async fn run(
    channels: &[Channel],
    cfg: &WriterConfig,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> WriterReport {
    let clients: Vec<_> = channels.iter().map(conn::kv).collect();
    let mut rep = WriterReport {
        first_seq: cfg.first_seq,
        outcomes: vec![PutOutcome::NotSent; cfg.total as usize],
        sent: 0,
        acked: 0,
        timed_out: 0,
        failed: 0,
        errors: BTreeMap::new(),
        put_latency: LatencyHist::new(),
        started: Instant::now(),
        finished: Instant::now(),
        max_lag: Duration::ZERO,
        interrupted: false,
    };
    if clients.is_empty() || cfg.total == 0 {
        return rep;
    }
    let t0 = tokio::time::Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut next: u64 = 0;
    loop {
        let can_send = next < cfg.total && inflight.len() < cfg.max_inflight.max(1);
        if !can_send && inflight.is_empty() {
            break;
        }
        let due = match cfg.rate {
            Some(r) if r > 0.0 => t0 + Duration::from_secs_f64(next as f64 / r),
            _ => t0,
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                rep.interrupted = true;
                break;
            }
            Some((idx, took, res)) = inflight.next(), if !inflight.is_empty() => {
                record(&mut rep, &counters, idx, took, res);
            }
            _ = tokio::time::sleep_until(due), if can_send => {
                let lag = tokio::time::Instant::now().saturating_duration_since(due);
                rep.max_lag = rep.max_lag.max(lag);
                let seq = cfg.first_seq + next;
                let req = pb::PutRequest {
                    key: payload::key_for(&cfg.prefix, seq, cfg.keys),
                    value: payload::encode(seq, cfg.value_size),
                    ..Default::default()
                };
                let mut kv = clients[next as usize % clients.len()].clone();
                let timeout = cfg.put_timeout;
                let idx = next as usize;
                inflight.push(async move {
                    let t = Instant::now();
                    let res = tokio::time::timeout(timeout, kv.put(req)).await;
                    (idx, t.elapsed(), res)
                });
                rep.sent += 1;
                Counters::add(&counters.puts_sent, 1);
                next += 1;
            }
        }
    }
    // Puts still in flight when stopped stay Unknown: they may land later.
    drop(inflight);
    for (i, o) in rep.outcomes.iter_mut().enumerate() {
        if *o == PutOutcome::NotSent && (i as u64) < next {
            *o = PutOutcome::Unknown;
        }
    }
    rep.finished = Instant::now();
    rep
}

type PutResult =
    Result<Result<tonic::Response<pb::PutResponse>, tonic::Status>, tokio::time::error::Elapsed>;

fn record(rep: &mut WriterReport, counters: &Counters, idx: usize, took: Duration, res: PutResult) {
    match res {
        Ok(Ok(resp)) => {
            let rev = resp.into_inner().header.map(|h| h.revision).unwrap_or(0);
            rep.outcomes[idx] = if rev > 0 {
                PutOutcome::Acked(rev)
            } else {
                PutOutcome::Unknown
            };
            rep.acked += 1;
            rep.put_latency.record_ns(took.as_nanos() as u64);
            Counters::add(&counters.puts_acked, 1);
        }
        Ok(Err(status)) => {
            rep.outcomes[idx] = PutOutcome::Unknown;
            rep.failed += 1;
            *rep.errors
                .entry(format!("{:?}: {}", status.code(), status.message()))
                .or_default() += 1;
            Counters::add(&counters.puts_failed, 1);
        }
        Err(_) => {
            rep.outcomes[idx] = PutOutcome::Unknown;
            rep.timed_out += 1;
            Counters::add(&counters.puts_failed, 1);
        }
    }
}
