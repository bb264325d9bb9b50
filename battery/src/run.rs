//! One run: start the system, run every client while the nemesis works
//! through its schedule, heal, let everything settle, collect the final
//! state of every server, and check every history.
//!
//! ```text
//!   Topology::start ─> oracles, watchers, writers, readers, leases, compactor
//!     ─> nemesis steps (seeded) ─> heal_all ─> stop writers, readers, leases
//!     ─> lease keys gone ─> one marker txn in every watched range (revision R)
//!     ─> oracles and watchers reach R ─> each server's keys at >= R, each
//!        member's own history and HashKV ─> kill everything
//!     ─> merge oracles (log) ─> linearizability, watch, lease, durability
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lookout_proto::pb::{
    HashKvRequest, RangeRequest, WatchCreateRequest, WatchRequest,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, watch_request,
};
use lookout_testkit::durability::{ServerFinal, check_durability};
use lookout_testkit::kv_history::{Ev, Kv, State, Violation, merge_sources, prefix_end};
use lookout_testkit::kv_linearizability::{self, Op, Outcome, Request, TxnOp};
use lookout_testkit::lease_check::{LeaseHistory, check_leases};
use lookout_testkit::watch_check::{CompactionCall, WatchFilter, WatcherHistory, check_watcher};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

use crate::BatteryError;
use crate::client::{Clock, Ep, Pool, b, channel, exec};
use crate::metrics::{self, Stall};
use crate::nemesis::{FaultKind, FaultRecord, Step, run_step, schedule};
use crate::topology::{Target, Topology, status};
use crate::workload::watcher::WatcherSpec;
use crate::workload::{OP_TIMEOUT, compactor, lease, oracle, reader, watcher, writer};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub target: Target,
    pub seed: u64,
    /// How long the nemesis works (the run takes about 30 s more).
    pub duration: Duration,
    pub kinds: Vec<FaultKind>,
    /// Where a failing run leaves its evidence (logs, violations).
    pub out_dir: Option<PathBuf>,
    /// Leave the evidence of a run without violations too (to study its
    /// stalls).
    pub keep: bool,
}

/// Everything a run measured and found.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub target: &'static str,
    pub seed: u64,
    pub steps: Vec<Step>,
    pub faults: Vec<FaultRecord>,
    pub ops: usize,
    pub writes_acked: usize,
    pub writes_unknown: usize,
    pub unknown_applied: usize,
    pub reads: usize,
    pub revisions: usize,
    pub watch_events: usize,
    pub progress: usize,
    pub segments: usize,
    pub compacted_cancels: usize,
    pub leases: usize,
    pub keepalives: usize,
    pub lease_expiries: usize,
    pub compactions: usize,
    pub violations: Vec<Violation>,
    pub stalls: Vec<Stall>,
    /// Gateway killed: time from the kill to the first event of each of
    /// its watchers on the other gateway.
    pub failover_first_event: Vec<Duration>,
    /// Harness remarks (recovery timeouts, unidentified dialers).
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

/// Watchers: (name, key, range_end, prev_kv, on gateways).
fn watcher_specs() -> Vec<(&'static str, Bytes, Bytes, bool, bool)> {
    let p = |s: &str| (b(s), prefix_end(s.as_bytes()));
    let all = (Bytes::from_static(&[0]), Bytes::from_static(&[0]));
    vec![
        ("gw-b", p("/b/").0, p("/b/").1, false, true),
        ("gw-b-prev", p("/b/").0, p("/b/").1, true, true),
        ("gw-k0", p("/b/k0").0, p("/b/k0").1, false, true),
        ("gw-l", p("/l/").0, p("/l/").1, true, true),
        ("gw-all", all.0.clone(), all.1.clone(), false, true),
        ("m-b-prev", p("/b/").0, p("/b/").1, true, false),
        ("m-k1", p("/b/k1").0, p("/b/k1").1, false, false),
        ("m-l", p("/l/").0, p("/l/").1, false, false),
    ]
}

const WRITERS_PER_SIDE: usize = 4;
const READERS_PER_SIDE: usize = 2;
/// Bound on the cluster's recovery after each fault.
const RECOVERY: Duration = Duration::from_secs(30);

/// Runs one seed against one target.
///
/// # Errors
/// When the system cannot be started at all; faults found are violations
/// in the result, not errors.
pub async fn run(cfg: &RunConfig) -> Result<RunResult, BatteryError> {
    let started = Instant::now();
    let steps = schedule(cfg.seed, cfg.duration, &cfg.kinds);
    let mut topo = Topology::start(cfg.target.clone(), 3, 2).await?;
    let clock = Clock::new();
    let mut res = RunResult {
        target: cfg.target.name(),
        seed: cfg.seed,
        steps: steps.clone(),
        ..Default::default()
    };
    let ep = |s: &crate::topology::Server, index: u64| Ep {
        name: s.name.clone(),
        addr: s.endpoint.clone(),
        index,
        incarnation: s.incarnation.clone(),
    };
    let members: Vec<Ep> = topo
        .members
        .iter()
        .enumerate()
        .map(|(i, s)| ep(s, i as u64))
        .collect();
    let gateways: Vec<Ep> = topo
        .gateways
        .iter()
        .enumerate()
        .map(|(i, s)| ep(s, 10 + i as u64))
        .collect();
    let (stop_tx, stop) = watch::channel(false);
    let (wstop_tx, wstop) = watch::channel(false);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut sub_seed = || rand::Rng::random::<u64>(&mut rng);

    // The history's witnesses, one per member.
    let mut oracle_progress = Vec::new();
    let mut oracles = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let p = Arc::new(AtomicI64::new(0));
        oracle_progress.push(p.clone());
        let pool = Pool::new(vec![m.clone()], 0);
        let (c, st) = (clock, wstop.clone());
        let spec = WatcherSpec {
            client: 1000 + i,
            name: format!("oracle-{}", m.name),
            filter: oracle::filter(),
            start_rev: 1,
        };
        oracles.push(tokio::spawn(watcher::run(spec, pool, c, st, p)));
    }
    let mut watchers = Vec::new();
    let mut watcher_progress = Vec::new();
    for (i, (name, key, end, prev_kv, on_gw)) in watcher_specs().into_iter().enumerate() {
        let p = Arc::new(AtomicI64::new(0));
        watcher_progress.push(p.clone());
        let pool = if on_gw {
            Pool::new(gateways.clone(), i)
        } else {
            Pool::new(members.clone(), i)
        };
        let filter = WatchFilter {
            key,
            range_end: end,
            prev_kv,
            no_put: false,
            no_delete: false,
        };
        let spec = WatcherSpec {
            client: 2000 + i,
            name: name.to_string(),
            filter,
            start_rev: 1,
        };
        watchers.push(tokio::spawn(watcher::run(
            spec,
            pool,
            clock,
            wstop.clone(),
            p,
        )));
    }
    let mut writers = Vec::new();
    for i in 0..2 * WRITERS_PER_SIDE {
        let pool = if i < WRITERS_PER_SIDE {
            Pool::new(gateways.clone(), i)
        } else {
            Pool::new(members.clone(), i)
        };
        writers.push(tokio::spawn(writer::run(
            i,
            pool,
            sub_seed(),
            clock,
            stop.clone(),
        )));
    }
    let mut readers = Vec::new();
    for i in 0..2 * READERS_PER_SIDE {
        let pool = if i < READERS_PER_SIDE {
            Pool::new(gateways.clone(), i)
        } else {
            Pool::new(members.clone(), i)
        };
        readers.push(tokio::spawn(reader::run(
            100 + i,
            pool,
            sub_seed(),
            clock,
            stop.clone(),
        )));
    }
    let mut holders = Vec::new();
    for i in 0..2 {
        let pool = if i == 0 {
            Pool::new(gateways.clone(), 0)
        } else {
            Pool::new(members.clone(), 1)
        };
        holders.push(tokio::spawn(lease::run(
            200 + i,
            pool,
            sub_seed(),
            clock,
            stop.clone(),
        )));
    }
    let compactor = tokio::spawn(compactor::run(
        Pool::new(members.clone(), 0),
        oracle_progress.clone(),
        sub_seed(),
        clock,
        stop.clone(),
    ));

    // The faults.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = Instant::now() + cfg.duration;
    for step in &steps {
        if Instant::now() >= deadline {
            break;
        }
        let f = run_step(&mut topo, step, &clock, RECOVERY).await;
        if f.recovered.is_none() {
            res.violations.push(Violation::new(
                "liveness",
                format!(
                    "not whole again {RECOVERY:?} after healing {} of {}",
                    f.kind, f.target
                ),
            ));
        }
        res.faults.push(f);
    }

    // Settle.
    if let Err(e) = topo.heal_all(Duration::from_secs(60)).await {
        res.violations.push(Violation::new(
            "liveness",
            format!("did not recover at the end: {e}"),
        ));
    }
    let _ = stop_tx.send(true);
    let mut ops: Vec<Op> = Vec::new();
    let mut write_acks: Vec<u64> = Vec::new();
    for h in writers {
        let w = h.await.unwrap_or_default();
        write_acks.extend(
            w.iter()
                .filter(|o| matches!(o.out, Outcome::Ok(_)))
                .map(|o| o.ret),
        );
        ops.extend(w);
    }
    for h in readers {
        ops.extend(h.await.unwrap_or_default());
    }
    let mut leases: Vec<LeaseHistory> = Vec::new();
    for h in holders {
        let l = h.await.unwrap_or_default();
        ops.extend(l.ops);
        leases.extend(l.leases);
    }
    let compactions: Vec<CompactionCall> = compactor.await.unwrap_or_default();
    res.compactions = compactions.len();

    // Leases let go expire; then one txn lands in every watched range.
    let probe = members[0].addr.clone();
    let lease_gone = wait_until(Duration::from_secs(30), || {
        let probe = probe.clone();
        async move {
            let mut kv = Pool::new(vec![ep_of(&probe)], 0).kv();
            let r = kv
                .range(RangeRequest {
                    key: b("/l/"),
                    range_end: prefix_end(b"/l/"),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .ok()?;
            (r.into_inner().count == 0).then_some(())
        }
    })
    .await;
    if lease_gone.is_none() {
        res.notes
            .push("lease keys still present 30 s after the clients stopped".into());
    }
    let marker = Request::Txn {
        compares: vec![],
        success: ["/b/k00", "/b/k10", "/b/k20", "/l/end"]
            .iter()
            .map(|k| TxnOp::Put {
                key: b(k),
                value: b(&format!("marker{}", cfg.seed)),
                lease: 0,
            })
            .collect(),
        failure: vec![],
    };
    let mut final_rev = 0;
    let mut pool = Pool::new(members.clone(), 0);
    for _ in 0..6 {
        let session = pool.session();
        let call = clock.now();
        let out = exec(&mut pool.kv(), &marker, OP_TIMEOUT).await;
        let ok = if let Outcome::Ok(r) = &out {
            Some(r.rev())
        } else {
            None
        };
        ops.push(Op {
            client: 999,
            session,
            call,
            ret: clock.now(),
            req: marker.clone(),
            out,
        });
        if let Some(r) = ok {
            final_rev = r;
            break;
        }
        pool.rotate();
    }
    if final_rev == 0 {
        res.violations.push(Violation::new(
            "liveness",
            "the final marker write never succeeded",
        ));
        for m in &members {
            if let Some(s) = status(&m.addr, Duration::from_secs(1)).await {
                final_rev = final_rev.max(s.header.map_or(0, |h| h.revision));
            }
        }
    }
    let progress: Vec<Arc<AtomicI64>> = oracle_progress
        .iter()
        .chain(&watcher_progress)
        .cloned()
        .collect();
    let caught_up = wait_until(Duration::from_secs(30), || {
        let progress = progress.clone();
        async move {
            progress
                .iter()
                .all(|p| p.load(Ordering::SeqCst) >= final_rev)
                .then_some(())
        }
    })
    .await;
    if caught_up.is_none() {
        res.notes.push(format!(
            "some watchers had not reached revision {final_rev} 30 s after it was written"
        ));
    }
    let _ = wstop_tx.send(true);
    let mut sources = Vec::new();
    // When each revision was first seen by any member's watch: a watcher
    // is not late for an event that did not exist yet.
    let mut seen: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
    for (i, h) in oracles.into_iter().enumerate() {
        if let Ok(w) = h.await {
            for r in w.history.segments.iter().flat_map(|s| &s.responses) {
                for e in &r.events {
                    let t = seen.entry(e.rev()).or_insert(r.at);
                    *t = (*t).min(r.at);
                }
            }
            sources.push(watcher::to_source(&members[i].name, &w.history));
        }
    }
    let mut histories: Vec<WatcherHistory> = Vec::new();
    for h in watchers {
        if let Ok(w) = h.await {
            ops.extend(w.relists);
            histories.push(w.history);
        }
    }

    // Every server's final state.
    let compacted = compactions.iter().map(|c| c.rev).max().unwrap_or(0);
    let mut finals = Vec::new();
    for (i, s) in members.iter().chain(&gateways).enumerate() {
        let mut f = final_keys(&s.addr, &s.name, final_rev).await;
        if i < members.len() {
            f.history = member_history(&s.addr, compacted + 1, final_rev).await;
            f.hash = hash_kv(&s.addr, final_rev).await;
        }
        finals.push(f);
    }
    let end = clock.now();
    topo.stop_all();
    if topo.net.unidentified() > 0 {
        res.notes.push(format!(
            "{} of {} proxied connections had an unknown dialer (faults did not apply to them)",
            topo.net.unidentified(),
            topo.net.connections()
        ));
    }

    // Check.
    let (log, mut v) = merge_sources(1, State::new(), &sources);
    v.extend(log.self_check());
    res.revisions = log.revisions().count();
    let lin = kv_linearizability::check(&log, &ops);
    v.extend(lin.violations.iter().cloned());
    res.ops = lin.ops;
    res.writes_acked = lin.writes_acked;
    res.writes_unknown = lin.writes_unknown;
    res.unknown_applied = lin.unknown_applied;
    res.reads = lin.reads;
    for w in &histories {
        let r = check_watcher(&log, w, &compactions, Some(final_rev));
        res.watch_events += r.events;
        res.progress += r.progress;
        res.segments += r.segments;
        res.compacted_cancels += r.compacted;
        v.extend(r.violations);
    }
    let final_state = log.state_at(log.last_revision());
    let grace = Duration::from_secs(lease::TTL as u64 + 10).as_nanos() as u64;
    let lr = check_leases(
        &log,
        &leases,
        &lin.lease_deletions,
        &lin.clock,
        &final_state,
        end,
        grace,
    );
    res.leases = lr.leases;
    res.keepalives = lr.keepalives;
    res.lease_expiries = lr.expiries;
    v.extend(lr.violations);
    let acked: Vec<i64> = ops
        .iter()
        .filter_map(|o| match &o.out {
            Outcome::Ok(r) if o.req.may_write() && r.wrote() => Some(r.rev()),
            _ => None,
        })
        .collect();
    v.extend(check_durability(&log, &acked, &finals));
    res.violations.extend(v);

    write_acks.sort_unstable();
    res.stalls = metrics::stalls(&res.faults, &write_acks, &histories);
    for f in metrics::failover(&res.faults, &histories, &seen) {
        // Slow ones say where the time went.
        if f.first_event > Duration::from_millis(50) {
            res.notes.push(format!(
                "watcher {} moved to {} {} ms after a gateway kill: stream broke at +{} ms, created at +{:?} ms",
                f.watcher,
                f.gateway,
                f.first_event.as_millis(),
                f.broke.as_millis(),
                f.created.map(|c| c.as_millis())
            ));
        }
        res.failover_first_event.push(f.first_event);
    }
    res.elapsed = started.elapsed();
    if (cfg.keep || !res.violations.is_empty())
        && let Some(dir) = &cfg.out_dir
    {
        save_evidence(
            dir,
            &res,
            &topo,
            &log_summary(&ops, &histories, &leases, &compactions),
        );
    }
    Ok(res)
}

fn ep_of(addr: &str) -> Ep {
    Ep {
        name: addr.to_string(),
        addr: addr.to_string(),
        index: 99,
        incarnation: Arc::default(),
    }
}

/// Polls `f` every 100 ms for at most `timeout`.
async fn wait_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(2), f()).await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A serializable read of every key once the server is at `rev` or later
/// (bounded: 20 s; the last answer otherwise).
async fn final_keys(addr: &str, name: &str, rev: i64) -> ServerFinal {
    let addr = addr.to_string();
    let last = Arc::new(tokio::sync::Mutex::new(None));
    let l2 = last.clone();
    let got = wait_until(Duration::from_secs(20), || {
        let (addr, l2) = (addr.clone(), l2.clone());
        async move {
            let mut kv = lookout_proto::pb::kv_client::KvClient::new(channel(&addr))
                .max_decoding_message_size(64 << 20);
            let r = kv
                .range(RangeRequest {
                    key: Bytes::from_static(&[0]),
                    range_end: Bytes::from_static(&[0]),
                    serializable: true,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            let at = r.header.map_or(0, |h| h.revision);
            let kvs: Vec<Kv> = r.kvs.iter().map(Kv::from).collect();
            *l2.lock().await = Some((at, kvs.clone()));
            (at >= rev).then_some((at, kvs))
        }
    })
    .await;
    let (at, kvs) = match got {
        Some(x) => x,
        None => last.lock().await.clone().unwrap_or_default(),
    };
    ServerFinal {
        name: name.to_string(),
        rev: at,
        kvs,
        history: None,
        hash: None,
    }
}

/// The member's own watch history from `from` through `through` (None if
/// it cannot be read in 20 s).
async fn member_history(addr: &str, from: i64, through: i64) -> Option<(i64, Vec<Ev>)> {
    if from > through {
        return Some((from, Vec::new()));
    }
    let fut = async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: Bytes::from_static(&[0]),
                    range_end: Bytes::from_static(&[0]),
                    start_revision: from,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        })
        .await
        .ok()?;
        let mut st = WatchClient::new(channel(addr))
            .max_decoding_message_size(64 << 20)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .ok()?
            .into_inner();
        let mut evs: Vec<Ev> = Vec::new();
        while evs.last().map_or(from - 1, Ev::rev) < through {
            let r = st.message().await.ok()??;
            if r.canceled || r.compact_revision != 0 {
                return None;
            }
            evs.extend(r.events.iter().map(Ev::from));
        }
        drop(tx);
        evs.retain(|e| e.rev() <= through);
        Some((from, evs))
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .ok()?
}

async fn hash_kv(addr: &str, rev: i64) -> Option<u32> {
    let mut m = MaintenanceClient::new(channel(addr));
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        m.hash_kv(HashKvRequest { revision: rev }),
    )
    .await
    .ok()?
    .ok()?;
    Some(r.into_inner().hash)
}

fn log_summary(
    ops: &[Op],
    histories: &[WatcherHistory],
    leases: &[LeaseHistory],
    compactions: &[CompactionCall],
) -> String {
    let mut s = String::new();
    for l in leases {
        s.push_str(&format!("{l:?}\n"));
    }
    for c in compactions {
        s.push_str(&format!("{c:?}\n"));
    }
    let mut sorted: Vec<&Op> = ops.iter().collect();
    sorted.sort_by_key(|o| o.call);
    for o in sorted {
        s.push_str(&format!("{o:?}\n"));
    }
    for h in histories {
        s.push_str(&format!(
            "\n== watcher {} ({} segments)\n",
            h.name,
            h.segments.len()
        ));
        for seg in &h.segments {
            s.push_str(&format!(
                "  on {} from {} opened {:.3}s created {:?}: {} responses, end {:?}\n",
                seg.endpoint,
                seg.start_rev,
                seg.opened as f64 / 1e9,
                seg.created,
                seg.responses.len(),
                seg.end
            ));
            for r in &seg.responses {
                let revs: Vec<i64> = r.events.iter().map(Ev::rev).collect();
                s.push_str(&format!(
                    "    {:.3}s header {} events {revs:?}\n",
                    r.at as f64 / 1e9,
                    r.header_rev
                ));
            }
        }
    }
    s
}

/// Writes the violations, the schedule, the histories and every process's
/// log under `dir/<target>-seed<seed>/`.
fn save_evidence(dir: &std::path::Path, res: &RunResult, topo: &Topology, histories: &str) {
    let d = dir.join(format!("{}-seed{}", res.target, res.seed));
    if std::fs::create_dir_all(&d).is_err() {
        return;
    }
    let mut text = String::new();
    for v in &res.violations {
        text.push_str(&format!("{v}\n"));
    }
    text.push_str("\nschedule:\n");
    for s in &res.steps {
        text.push_str(&format!("  {s}\n"));
    }
    text.push_str("\nfaults:\n");
    for f in &res.faults {
        text.push_str(&format!(
            "  {} {} at {:.3}s healed {:.3}s recovered {:?}\n",
            f.kind,
            f.target,
            f.start as f64 / 1e9,
            f.healed as f64 / 1e9,
            f.recovered
        ));
    }
    let _ = std::fs::write(d.join("violations.txt"), text);
    let _ = std::fs::write(d.join("history.txt"), histories);
    for (name, path) in topo.logs() {
        let _ = std::fs::copy(path, d.join(format!("{name}.log")));
    }
}
