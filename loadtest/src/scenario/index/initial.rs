//! `lookout-load initial`: I informers each syncing K keys with one
//! initial-state watch vs list (paged) + watch from the list's revision + 1;
//! time until all are synced and the gateway's peak RSS.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lookout_proto::pb;

use super::{Procs, create, median, open_stream, preload, range_end};
use crate::conn;
use crate::error::Result;
use crate::procstat;

/// `lookout-load initial` parameters.
#[derive(Debug, Clone)]
pub struct InitialBenchParams {
    pub bin: PathBuf,
    pub informers: usize,
    pub keys: u64,
    pub connections: usize,
    pub page_size: i64,
    pub pad: usize,
    pub repeat: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct InitialRun {
    pub mode: &'static str,
    pub synced: usize,
    pub sync_s: f64,
    pub rss_start: u64,
    pub peak_rss: u64,
    pub bytes: u64,
}

/// Runs `initial` and returns the markdown report.
///
/// # Errors
/// When a process or connection cannot be started.
pub async fn run_initial(prm: &InitialBenchParams) -> Result<String> {
    let procs = Procs::start(&prm.bin).await?;
    let prefix = "/bench/init/";
    let store_ch = conn::connect(&procs.store_endpoint).await?;
    let t = Instant::now();
    preload(&store_ch, prefix, prm.keys, |_| 0, prm.pad).await?;
    eprintln!("preloaded {} keys in {:?}", prm.keys, t.elapsed());
    let index = format!("node@{prefix}=json:/node");
    let mut runs = Vec::new();
    for rep in 0..prm.repeat {
        let mut pair = Vec::new();
        for initial in [true, false] {
            let (mut gw, ep) = procs.gateway(&index).await?;
            let r = initial_mode(prm, &ep, gw.pid(), prefix, initial).await?;
            eprintln!("rep {rep} {r:?}");
            gw.terminate(Duration::from_secs(5));
            pair.push(r);
        }
        let b = pair.pop().expect("two modes");
        let a = pair.pop().expect("two modes");
        runs.push((a, b));
    }
    Ok(initial_report(prm, &runs))
}

async fn initial_mode(
    prm: &InitialBenchParams,
    ep: &str,
    pid: u32,
    prefix: &str,
    initial: bool,
) -> Result<InitialRun> {
    let chans = conn::connect_many(ep, prm.connections.max(1)).await?;
    let rss_start = procstat::sample(pid).map(|s| s.rss_bytes).unwrap_or(0);
    let bytes = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..prm.informers {
        let ch = chans[i % chans.len()].clone();
        let bytes = bytes.clone();
        let prm = prm.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let key = Bytes::copy_from_slice(prefix.as_bytes());
            let end = range_end(&prefix);
            let mut got = 0u64;
            let req = if initial {
                pb::WatchCreateRequest {
                    key,
                    range_end: end,
                    initial_state: true,
                    ..Default::default()
                }
            } else {
                // list (paged, linearizable) then watch from revision + 1
                let mut kv = conn::kv(&ch);
                let mut from = key.clone();
                let mut rev = 0;
                loop {
                    let r = kv
                        .range(pb::RangeRequest {
                            key: from.clone(),
                            range_end: end.clone(),
                            limit: prm.page_size,
                            revision: rev,
                            ..Default::default()
                        })
                        .await
                        .ok()?
                        .into_inner();
                    bytes.fetch_add(prost::Message::encoded_len(&r) as u64, Relaxed);
                    rev = r.header.map_or(rev, |h| h.revision);
                    got += r.kvs.len() as u64;
                    let Some(last) = r.kvs.last() else { break };
                    if !r.more {
                        break;
                    }
                    let mut next = last.key.to_vec();
                    next.push(0);
                    from = Bytes::from(next);
                }
                pb::WatchCreateRequest {
                    key,
                    range_end: end,
                    start_revision: rev + 1,
                    ..Default::default()
                }
            };
            let (tx, mut rx) = open_stream(&ch, vec![create(req)]).await.ok()?;
            while let Ok(Some(s)) = rx.message().await {
                bytes.fetch_add(s.len as u64 + 5, Relaxed);
                got += u64::from(s.events);
                let synced = if initial {
                    !s.created && !s.canceled && s.events == 0 && s.watch_id >= 0
                } else {
                    s.created
                };
                if s.canceled {
                    return None;
                }
                if synced {
                    drop(tx);
                    return Some((t0.elapsed(), got));
                }
            }
            None
        }));
    }
    let mut synced = 0;
    let mut last = Duration::ZERO;
    let mut peak = 0u64;
    let deadline = tokio::time::Instant::now() + prm.timeout;
    for t in tasks {
        // Sample the gateway's RSS while waiting (VmHWM covers the gaps).
        if let Ok(Ok(Some((d, got)))) = tokio::time::timeout_at(deadline, t).await
            && got >= prm.keys
        {
            synced += 1;
            last = last.max(d);
        }
        if let Ok(s) = procstat::sample(pid) {
            peak = peak.max(s.hwm_bytes.max(s.rss_bytes));
        }
    }
    if let Ok(s) = procstat::sample(pid) {
        peak = peak.max(s.hwm_bytes);
    }
    Ok(InitialRun {
        mode: if initial {
            "initial-state watch"
        } else {
            "list + watch"
        },
        synced,
        sync_s: last.as_secs_f64(),
        rss_start,
        peak_rss: peak,
        bytes: bytes.load(Relaxed),
    })
}

fn initial_report(prm: &InitialBenchParams, runs: &[(InitialRun, InitialRun)]) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut out = format!(
        "## initial: {} informers x {} keys ({} B values), {} connections, list page {}\n\n",
        prm.informers,
        prm.keys,
        prm.pad + 30,
        prm.connections,
        prm.page_size
    );
    out.push_str("| rep | mode | synced | time to all synced s | gateway RSS before MiB | peak RSS MiB | peak - before MiB | bytes received |\n|---|---|---|---|---|---|---|---|\n");
    let (mut t, mut m, mut g) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (a, b)) in runs.iter().enumerate() {
        for r in [a, b] {
            out.push_str(&format!(
                "| {i} | {} | {}/{} | {:.2} | {:.1} | {:.1} | {:.1} | {} |\n",
                r.mode,
                r.synced,
                prm.informers,
                r.sync_s,
                mib(r.rss_start),
                mib(r.peak_rss),
                mib(r.peak_rss.saturating_sub(r.rss_start)),
                r.bytes
            ));
        }
        t.push(b.sync_s / a.sync_s.max(1e-9));
        m.push(b.peak_rss as f64 / a.peak_rss.max(1) as f64);
        g.push(
            b.peak_rss.saturating_sub(b.rss_start) as f64
                / a.peak_rss.saturating_sub(a.rss_start).max(1) as f64,
        );
    }
    out.push_str(&format!(
        "\nMedian of {} runs, list+watch / initial-state: time to all synced = **{:.2}x**, peak gateway RSS = **{:.2}x** (growth over the idle gateway: **{:.2}x**)\n",
        runs.len(),
        median(&mut t),
        median(&mut m),
        median(&mut g)
    ));
    out
}
