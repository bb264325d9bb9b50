//! Markdown tables and SVG plots from [`RunResult`]s.
//!
//! ```text
//!   RunResult ──metrics()──> rows (name, value) ──> markdown table (one run,
//!                                                   or targets side by side
//!                                                   with ratio columns)
//!             ──latency.curve──> plot::latency_svg
//! ```

pub mod plot;

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{LoadError, Result};
use crate::result::{RunResult, WatchStats};

/// How a number is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    Ms,
    Secs,
    Count,
    Rate,
    Bytes,
    Cpu,
}

/// One row of a result table.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Num(f64, Fmt),
    Text(String),
    Missing,
}

/// A named value.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: Value,
}

fn num(name: impl Into<String>, v: f64, f: Fmt) -> Metric {
    Metric {
        name: name.into(),
        value: Value::Num(v, f),
    }
}

fn text(name: impl Into<String>, v: impl Into<String>) -> Metric {
    Metric {
        name: name.into(),
        value: Value::Text(v.into()),
    }
}

/// Formats a value for a table cell.
pub fn fmt_value(v: &Value) -> String {
    match v {
        Value::Missing => "–".into(),
        Value::Text(t) => t.clone(),
        Value::Num(x, f) => match f {
            Fmt::Ms => fmt_ms(*x),
            Fmt::Secs => format!("{x:.2} s"),
            Fmt::Count => format!("{}", *x as u64),
            Fmt::Rate => fmt_rate(*x),
            Fmt::Bytes => fmt_bytes(*x),
            Fmt::Cpu => format!("{x:.2} s"),
        },
    }
}

/// Milliseconds with sensible precision.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1} k/s", x / 1e3)
    } else {
        format!("{x:.0}/s")
    }
}

/// Bytes as B / KiB / MiB / GiB.
pub fn fmt_bytes(b: f64) -> String {
    let a = b.abs();
    if a >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if a >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if a >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// `a / b` as "0.42×", or "–" when undefined.
pub fn ratio(a: &Value, b: &Value) -> String {
    match (a, b) {
        (Value::Num(x, _), Value::Num(y, _)) if *y > 0.0 && x.is_finite() => {
            let r = x / y;
            if r >= 100.0 {
                format!("{r:.0}×")
            } else if r >= 10.0 {
                format!("{r:.1}×")
            } else {
                format!("{r:.2}×")
            }
        }
        _ => "–".into(),
    }
}

/// A short verdict: "sustained", or "fell over: " and the first problem.
pub fn verdict(r: &RunResult) -> String {
    if r.sustained {
        "sustained".into()
    } else {
        format!(
            "**fell over**: {}",
            r.problems.first().map(String::as_str).unwrap_or("?")
        )
    }
}

fn check_text(w: &WatchStats) -> String {
    let c = &w.checks;
    format!(
        "{} / {} / {} / {}",
        c.missing, c.duplicates, c.out_of_order, c.unexpected
    )
}

fn late_text(w: &WatchStats) -> String {
    format!("{} / {}", w.checks.undelivered, w.not_caught_up)
}

/// The rows a result is shown with, in display order. Results of the same
/// scenario always give the same row names, so targets line up.
pub fn metrics(r: &RunResult) -> Vec<Metric> {
    let mut m = vec![text("verdict", verdict(r))];
    match r.scenario.as_str() {
        "memory" => memory_rows(r, &mut m),
        "put" | "range" => ops_rows(r, &mut m),
        "informers" => informer_rows(r, &mut m),
        _ => watch_rows(r, &mut m),
    }
    server_rows(r, &mut m);
    m
}

/// The measured processes and the load generator, last in every table.
fn server_rows(r: &RunResult, m: &mut Vec<Metric>) {
    if let Some(f) = r.servers.first() {
        m.push(num("front process CPU", f.cpu_s, Fmt::Cpu));
        m.push(num(
            "front process peak RSS",
            f.peak_rss_bytes as f64,
            Fmt::Bytes,
        ));
    }
    if !r.servers.is_empty() {
        let total: f64 = r.servers.iter().map(|s| s.cpu_s).sum();
        m.push(num("all server processes CPU", total, Fmt::Cpu));
    }
    m.push(num("load generator CPU", r.client.cpu_s, Fmt::Cpu));
    m.push(text(
        "load average at start (1 min)",
        format!("{:.2}", r.loadavg_1m),
    ));
}

fn memory_rows(r: &RunResult, m: &mut Vec<Metric>) {
    let mm = r.memory.clone().unwrap_or_default();
    m.push(num(
        "RSS per watcher (shared stream)",
        mm.per_watcher_bytes,
        Fmt::Bytes,
    ));
    m.push(num(
        "RSS per stream (beyond its watcher)",
        mm.per_stream_bytes,
        Fmt::Bytes,
    ));
    m.push(num(
        "RSS per connection (beyond its stream)",
        mm.per_connection_bytes,
        Fmt::Bytes,
    ));
    m.push(num(
        "RSS before the watches",
        mm.rss_start_bytes as f64,
        Fmt::Bytes,
    ));
    m.push(num(
        "RSS with all of them",
        mm.rss_connections_bytes as f64,
        Fmt::Bytes,
    ));
    m.push(num(
        "time to create them",
        mm.setup_s.iter().sum(),
        Fmt::Secs,
    ));
}

fn ops_rows(r: &RunResult, m: &mut Vec<Metric>) {
    let o = r.ops.clone().unwrap_or_default();
    m.push(num("requests/s", o.ops_per_s, Fmt::Rate));
    m.push(num("p50 latency", r.latency.p50_ms, Fmt::Ms));
    m.push(num("p99 latency", r.latency.p99_ms, Fmt::Ms));
    m.push(num("max latency", r.latency.max_ms, Fmt::Ms));
    m.push(num(
        "errors + timeouts",
        (o.errors + o.timeouts) as f64,
        Fmt::Count,
    ));
}

fn informer_rows(r: &RunResult, m: &mut Vec<Metric>) {
    let i = r.informers.clone().unwrap_or_default();
    let w = r.watch.get("informers").cloned().unwrap_or_default();
    m.push(text(
        "informers synced",
        format!("{} / {}", i.synced, i.clients),
    ));
    m.push(num("time until all synced", i.all_synced_s, Fmt::Secs));
    m.push(num("p50 time to sync", i.sync_latency.p50_ms, Fmt::Ms));
    m.push(num("p99 time to sync", i.sync_latency.p99_ms, Fmt::Ms));
    m.push(num(
        "keys listed/s (all informers)",
        i.keys_listed_per_s,
        Fmt::Rate,
    ));
    m.push(text(
        "list errors / wrong lists",
        format!("{} / {}", i.list_errors, i.list_mismatch),
    ));
    m.push(num(
        "burst p50 put → event",
        i.burst_latency.p50_ms,
        Fmt::Ms,
    ));
    m.push(num(
        "burst p99 put → event",
        i.burst_latency.p99_ms,
        Fmt::Ms,
    ));
    m.push(text(
        "missing / duplicate / out of order / unexpected",
        check_text(&w),
    ));
    m.push(text(
        "undelivered at deadline / informers behind",
        late_text(&w),
    ));
    let front = r.servers.first();
    if let Some(pw) = front.and_then(|f| r.rss_per_watcher_bytes.get(&f.label)) {
        m.push(num("front RSS per informer", *pw, Fmt::Bytes));
    }
    // What the front end itself counted (Lookout's /metrics): the store saw
    // this many lists from it, ever, and this many forwarded ranges during
    // the run.
    if let Some(sm) = front.and_then(|f| r.server_metrics.get(&f.label))
        && sm.error.is_none()
    {
        let lists = sm
            .after
            .get("lookout_list_duration_seconds_count")
            .copied()
            .unwrap_or(0.0);
        let fwd = sm
            .delta
            .get("lookout_gateway_ranges_total{source=\"upstream\"}")
            .copied()
            .unwrap_or(0.0);
        m.push(text(
            "store lists by the front (lifetime) / ranges it forwarded (run)",
            format!("{lists:.0} / {fwd:.0}"),
        ));
    }
}

/// fanout, slow, http, catchup, failover.
fn watch_rows(r: &RunResult, m: &mut Vec<Metric>) {
    let empty = WatchStats::default();
    let primary = r.primary().unwrap_or(&empty);
    m.push(text(
        "watchers created",
        format!(
            "{} / {}",
            r.watch.values().map(|w| w.created).sum::<u64>(),
            r.watch.values().map(|w| w.watchers).sum::<u64>()
        ),
    ));
    m.push(num("p50 put → event", primary.latency.p50_ms, Fmt::Ms));
    m.push(num("p99 put → event", primary.latency.p99_ms, Fmt::Ms));
    m.push(num("p99.9 put → event", primary.latency.p999_ms, Fmt::Ms));
    m.push(num("max put → event", primary.latency.max_ms, Fmt::Ms));
    m.push(num("deliveries/s", primary.deliveries_per_s, Fmt::Rate));
    m.push(text(
        "missing / duplicate / out of order / unexpected",
        check_text(primary),
    ));
    m.push(text(
        "undelivered at deadline / watchers behind",
        late_text(primary),
    ));
    for (g, w) in r.watch.iter().filter(|(_, w)| !std::ptr::eq(*w, primary)) {
        group_rows(g, w, m);
    }
    if let Some(c) = &r.catchup {
        m.push(num("p50 catch-up time", c.catchup_time.p50_ms, Fmt::Ms));
        m.push(num("max catch-up time", c.catchup_time.max_ms, Fmt::Ms));
        m.push(num("history events/s", c.history_events_per_s, Fmt::Rate));
    }
    if let Some(w) = &r.writer {
        m.push(text(
            "puts acked / timed out / failed",
            format!("{} / {} / {}", w.acked, w.timed_out, w.failed),
        ));
        m.push(text(
            "unknown puts applied / absent (store history)",
            format!("{} / {}", w.unknown_applied, w.unknown_absent),
        ));
        m.push(num("achieved put rate", w.achieved_rate, Fmt::Rate));
        m.push(num("p99 put latency", w.put_latency.p99_ms, Fmt::Ms));
    }
    if let Some(s) = r.setup_s {
        m.push(num("watch setup time", s, Fmt::Secs));
    }
    if let Some(d) = r.drain_s {
        m.push(num("drain after last put", d, Fmt::Secs));
    }
    front_watch_rows(r, m);
}

/// A watcher group beside the primary one (slow, http).
fn group_rows(g: &str, w: &WatchStats, m: &mut Vec<Metric>) {
    m.push(num(format!("{g} watchers p99"), w.latency.p99_ms, Fmt::Ms));
    m.push(text(
        format!("{g} watchers undelivered / behind"),
        late_text(w),
    ));
    m.push(text(
        format!("{g} watchers missing / dup / ooo / unexpected"),
        check_text(w),
    ));
    m.push(text(
        format!("{g} watchers clean / compact-cancelled / lost"),
        format!(
            "{} / {} / {}",
            w.checks.clean, w.checks.compact_cancelled, w.checks.lost
        ),
    ));
}

/// What the front process grew by and counted itself during a watch run.
fn front_watch_rows(r: &RunResult, m: &mut Vec<Metric>) {
    let front = r.servers.first();
    if let Some(pw) = front.and_then(|f| r.rss_per_watcher_bytes.get(&f.label)) {
        m.push(num("front RSS per watcher", *pw, Fmt::Bytes));
    }
    if let Some(sm) = front.and_then(|f| r.server_metrics.get(&f.label))
        && sm.error.is_none()
    {
        let d = |k: &str| sm.delta.get(k).copied().unwrap_or(0.0);
        m.push(text(
            "front: slow switches / compact cancels / resume waits (run)",
            format!(
                "{:.0} / {:.0} / {:.0}",
                d("lookout_slow_switches_total"),
                d("lookout_compact_cancels_total"),
                d("lookout_gateway_resume_waits_total{result=\"reached\"}")
                    + d("lookout_gateway_resume_waits_total{result=\"timeout\"}")
            ),
        ));
    }
}

/// A markdown table: header, then rows of cells.
pub fn md_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let esc = |c: &str| c.replace('|', "\\|");
    let _ = writeln!(
        s,
        "| {} |",
        header
            .iter()
            .map(|h| esc(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        s,
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} |",
            r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    s
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| LoadError::io(path, e))
}

/// Writes `report.md`, `latency.svg` and `result.json` for one run.
///
/// # Errors
/// When the directory or a file cannot be written.
pub fn write_single(dir: &Path, r: &RunResult) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| LoadError::io(dir, e))?;
    let title = format!("{} against {}", r.scenario, r.target);
    plot::latency_svg(
        &dir.join("latency.svg"),
        &title,
        &[plot::Series {
            label: r.target.clone(),
            curve: &r.latency.curve,
        }],
    )?;
    let rows: Vec<Vec<String>> = metrics(r)
        .iter()
        .map(|m| vec![m.name.clone(), fmt_value(&m.value)])
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "# lookout-load: {title}\n");
    let _ = writeln!(md, "Command:\n\n```sh\n{}\n```\n", r.command);
    let params: Vec<Vec<String>> = r
        .params
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    let _ = writeln!(
        md,
        "## Parameters\n\n{}",
        md_table(&["parameter".into(), "value".into()], &params)
    );
    let _ = writeln!(
        md,
        "## Results\n\n{}",
        md_table(&["metric".into(), r.target.clone()], &rows)
    );
    if !r.problems.is_empty() {
        let _ = writeln!(md, "## Problems\n");
        for p in &r.problems {
            let _ = writeln!(md, "- {p}");
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Latency distribution\n\n![latency](latency.svg)\n");
    let _ = writeln!(md, "Truth: {}", r.truth);
    write(&dir.join("report.md"), &md)?;
    write(&dir.join("result.json"), &(r.to_json_line() + "\n"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_formats() {
        let a = Value::Num(5.0, Fmt::Ms);
        let b = Value::Num(10.0, Fmt::Ms);
        assert_eq!(ratio(&a, &b), "0.50×");
        assert_eq!(ratio(&a, &Value::Missing), "–");
        assert_eq!(ratio(&a, &Value::Num(0.0, Fmt::Ms)), "–");
        assert_eq!(fmt_ms(1500.0), "1.50 s");
        assert_eq!(fmt_bytes(2048.0), "2.0 KiB");
    }

    #[test]
    fn table_escapes_pipes() {
        let t = md_table(&["a".into()], &[vec!["x|y".into()]]);
        assert!(t.contains("x\\|y"));
    }
}
