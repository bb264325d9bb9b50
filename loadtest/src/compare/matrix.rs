//! The scenario matrix a comparison runs: small by default (minutes), the
//! issue-5 sizes with `--full`.

use std::time::Duration;

use super::CompareArgs;
use crate::scenario::fanout::{
    CatchupParams, FailoverParams, FanoutParams, HttpParams, SlowParams,
};
use crate::scenario::informers::InformerParams;
use crate::scenario::memory::MemoryParams;
use crate::watch::http::HttpApi;

/// Scenario families a comparison can include.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ScenarioKind {
    Fanout,
    Informers,
    Slow,
    Catchup,
    Http,
    /// Every stream killed mid-run, resumed on a second front end.
    Failover,
    /// RSS per idle watcher, stream and connection.
    Memory,
}

/// What one cell runs.
#[derive(Debug, Clone)]
pub enum CellKind {
    /// fanout, slow, catchup or http (HTTP address filled in per target).
    Watch(FanoutParams),
    Informers(InformerParams),
    Memory(MemoryParams),
}

impl CellKind {
    /// Whether the target must start a second front end for this cell.
    pub fn needs_alt(&self) -> bool {
        matches!(self, CellKind::Watch(p) if p.failover.is_some())
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone)]
pub struct Cell {
    /// File-name-safe id ("fanout-w1000-r100").
    pub id: String,
    /// Heading in the report.
    pub title: String,
    pub kind: CellKind,
}

impl Cell {
    /// The equivalent single-scenario command against a running target.
    pub fn command(&self) -> String {
        match &self.kind {
            CellKind::Watch(p) => {
                let mut s = format!(
                    "lookout-load {} --endpoint <target> --truth-endpoint <store> --watchers {} --connections {} --rate {} --keys {} --value-size {} --duration {}s",
                    p.scenario(),
                    p.watchers,
                    p.connections,
                    p.rate,
                    p.keys,
                    p.value_size,
                    p.duration.as_secs_f64()
                );
                if let Some(sl) = p.slow {
                    s += &format!(
                        " --slow-fraction {} --slow-after {}s --slow-for {}s",
                        sl.fraction,
                        sl.after.as_secs_f64(),
                        sl.for_.as_secs_f64()
                    );
                }
                if let Some(h) = &p.http {
                    s += &format!(" --http-fraction {} --http-api <etcd|lookout>", h.fraction);
                }
                if let Some(c) = p.catchup {
                    s += &format!(" --behind {}", c.behind);
                }
                if let Some(f) = &p.failover {
                    s += &format!(
                        " --switch-after {}s --resume-endpoint <second front end>",
                        f.after.as_secs_f64()
                    );
                }
                s
            }
            CellKind::Memory(p) => format!(
                "lookout-load memory --endpoint <target> --watchers {} --streams {} --connections {} --server-pid <front end>",
                p.watchers, p.streams, p.connections
            ),
            CellKind::Informers(p) => format!(
                "lookout-load informers --endpoint <target> --truth-endpoint <store> --clients {} --keys {} --value-size {} --burst {}",
                p.clients, p.keys, p.value_size, p.burst
            ),
        }
    }
}

fn fanout(args: &CompareArgs, w: usize, r: f64, t: Duration) -> FanoutParams {
    let per = args.watchers_per_connection.max(1);
    FanoutParams {
        watchers: w,
        connections: w.div_ceil(per).max(1),
        rate: r,
        keys: args.keys,
        value_size: args.value_size,
        duration: t,
        ..FanoutParams::default()
    }
}

/// The writer duration, watcher counts and rates of the fan-out cells.
struct Sizes {
    full: bool,
    t: Duration,
    watchers: Vec<usize>,
    rates: Vec<f64>,
}

impl Sizes {
    fn of(args: &CompareArgs) -> Self {
        let full = args.full;
        let t = args
            .duration
            .unwrap_or(Duration::from_secs(if full { 30 } else { 10 }));
        let watchers = if args.watchers.is_empty() {
            if full {
                vec![1_000, 5_000, 10_000, 50_000]
            } else {
                vec![100, 1_000, 5_000]
            }
        } else {
            args.watchers.clone()
        };
        let rates = if args.rates.is_empty() {
            if full {
                vec![100.0, 1_000.0]
            } else {
                vec![100.0]
            }
        } else {
            args.rates.clone()
        };
        Self {
            full,
            t,
            watchers,
            rates,
        }
    }
}

/// Builds the matrix from the flags.
pub fn build(args: &CompareArgs) -> Vec<Cell> {
    let sizes = Sizes::of(args);
    let mut scenarios = args.scenarios.clone();
    scenarios.sort();
    scenarios.dedup();
    let mut cells = Vec::new();
    for s in scenarios {
        match s {
            ScenarioKind::Fanout => cells.extend(fanout_cells(args, &sizes)),
            ScenarioKind::Informers => cells.push(informers_cell(args, &sizes)),
            ScenarioKind::Slow => cells.push(slow_cell(args, &sizes)),
            ScenarioKind::Catchup => cells.push(catchup_cell(args, &sizes)),
            ScenarioKind::Failover => cells.push(failover_cell(args, &sizes)),
            ScenarioKind::Memory => cells.push(memory_cell()),
            ScenarioKind::Http => cells.push(http_cell(args, &sizes)),
        }
    }
    cells
}

fn fanout_cells(args: &CompareArgs, sz: &Sizes) -> Vec<Cell> {
    let t = sz.t;
    let mut cells = Vec::new();
    for &r in &sz.rates {
        for &w in &sz.watchers {
            let p = fanout(args, w, r, t);
            cells.push(Cell {
                id: format!("fanout-w{w}-r{r}"),
                title: format!(
                    "Fan-out: {w} watchers over {} connections, {r} puts/s, {} keys, {} B values, {}s",
                    p.connections,
                    p.keys,
                    p.value_size,
                    t.as_secs_f64()
                ),
                kind: CellKind::Watch(p),
            });
        }
    }
    cells
}

fn informers_cell(args: &CompareArgs, sz: &Sizes) -> Cell {
    let p = InformerParams {
        // 1,000 informers starting at once is the storm the issue names;
        // --full grows their lists to 10k keys.
        clients: args.informer_clients.unwrap_or(1_000),
        keys: args
            .informer_keys
            .unwrap_or(if sz.full { 10_000 } else { 1_000 }),
        value_size: args.value_size,
        burst: 100,
        ..InformerParams::default()
    };
    Cell {
        id: format!("informers-n{}-k{}", p.clients, p.keys),
        title: format!(
            "Informers: {} clients (one connection each) list {} keys and watch from revision + 1 at once, then a burst of {} puts",
            p.clients, p.keys, p.burst
        ),
        kind: CellKind::Informers(p),
    }
}

fn slow_cell(args: &CompareArgs, sz: &Sizes) -> Cell {
    let (w, r, after, stall, t) = if sz.full {
        (10_000, 1_000.0, 5, 60, Duration::from_secs(70))
    } else {
        (1_000, 100.0, 2, 5, sz.t)
    };
    // --watchers / --rates pick the slow cell's size too.
    let w = args.watchers.first().copied().unwrap_or(w);
    let r = args.rates.first().copied().unwrap_or(r);
    let mut p = fanout(args, w, r, t);
    p.slow = Some(SlowParams {
        fraction: 0.01,
        after: Duration::from_secs(after),
        for_: Duration::from_secs(stall),
    });
    Cell {
        id: format!("slow-w{w}-r{r}"),
        title: format!("Slow watchers: {w} watchers, 1% stop reading for {stall}s, {r} puts/s"),
        kind: CellKind::Watch(p),
    }
}

fn catchup_cell(args: &CompareArgs, sz: &Sizes) -> Cell {
    let (w, behind) = if sz.full {
        (1_000, 100_000)
    } else {
        (100, 10_000)
    };
    let mut p = fanout(args, w, 100.0, Duration::from_secs(5));
    p.catchup = Some(CatchupParams { behind });
    Cell {
        id: format!("catchup-w{w}-b{behind}"),
        title: format!(
            "Catch-up: {w} watchers start {behind} revisions behind head, 100 puts/s continue"
        ),
        kind: CellKind::Watch(p),
    }
}

fn failover_cell(args: &CompareArgs, sz: &Sizes) -> Cell {
    let t = sz.t;
    let w = args.watchers.first().copied().unwrap_or(1_000);
    let r = args.rates.first().copied().unwrap_or(100.0);
    let mut p = fanout(args, w, r, t);
    p.failover = Some(FailoverParams {
        after: Duration::from_secs(3).min(t / 2),
        endpoint: String::new(),
    });
    Cell {
        id: format!("failover-w{w}-r{r}"),
        title: format!(
            "Failover: {w} watchers over {} connections, {r} puts/s; every stream is killed {}s after the writer starts and resumes on a second front end from its last revision + 1",
            p.connections,
            Duration::from_secs(3).min(t / 2).as_secs_f64()
        ),
        kind: CellKind::Watch(p),
    }
}

fn memory_cell() -> Cell {
    let p = MemoryParams::default();
    Cell {
        id: format!("memory-w{}-s{}-c{}", p.watchers, p.streams, p.connections),
        title: format!(
            "Memory: RSS growth for {} idle watchers on one stream, then {} streams with one watcher on one connection, then {} connections with one stream and one watcher",
            p.watchers, p.streams, p.connections
        ),
        kind: CellKind::Memory(p),
    }
}

fn http_cell(args: &CompareArgs, sz: &Sizes) -> Cell {
    let w = if sz.full { 1_000 } else { 100 };
    let mut p = fanout(args, w, 100.0, sz.t);
    p.http = Some(HttpParams {
        fraction: 1.0,
        api: HttpApi::Lookout,
        addr: String::new(),
    });
    Cell {
        id: format!("http-w{w}-r100"),
        title: format!("HTTP: {w} watchers on HTTP JSON-lines streams, 100 puts/s"),
        kind: CellKind::Watch(p),
    }
}
