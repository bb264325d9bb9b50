//! The battery's table: every target's runs side by side, from one
//! invocation (same machine, same seeds, interleaved).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::metrics::quantile;
use crate::nemesis::FaultKind;
use crate::run::RunResult;

fn ms(d: Duration) -> String {
    format!("{}", d.as_millis())
}

/// Markdown: the summary table, the stalls per fault kind, and every
/// violation with its seed.
pub fn render(results: &[RunResult], duration: Duration) -> String {
    let mut targets: Vec<&'static str> = Vec::new();
    for r in results {
        if !targets.contains(&r.target) {
            targets.push(r.target);
        }
    }
    let of = |t: &str| -> Vec<&RunResult> { results.iter().filter(|r| r.target == t).collect() };
    let sum = |t: &str, f: &dyn Fn(&RunResult) -> usize| of(t).into_iter().map(f).sum::<usize>();
    let mut s = String::new();
    let seeds: Vec<String> = {
        let mut v: Vec<u64> = results.iter().map(|r| r.seed).collect();
        v.sort_unstable();
        v.dedup();
        v.iter().map(u64::to_string).collect()
    };
    let _ = writeln!(
        s,
        "Seeds {}, {:.0} s of faults per run.\n",
        seeds.join(", "),
        duration.as_secs_f64()
    );
    let _ = writeln!(s, "| | {} |", targets.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(targets.len()));
    let mut row = |name: &str, f: &dyn Fn(&str) -> String| {
        let cells: Vec<String> = targets.iter().map(|t| f(t)).collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    };
    row("runs", &|t| of(t).len().to_string());
    row("faults injected", &|t| {
        sum(t, &|r| r.faults.len()).to_string()
    });
    for k in FaultKind::ALL {
        row(&format!("&nbsp;&nbsp;{k}"), &|t| {
            sum(t, &|r| r.faults.iter().filter(|f| f.kind == k).count()).to_string()
        });
    }
    row("operations checked", &|t| sum(t, &|r| r.ops).to_string());
    row(
        "&nbsp;&nbsp;writes acknowledged / unknown (of which applied)",
        &|t| {
            format!(
                "{} / {} ({})",
                sum(t, &|r| r.writes_acked),
                sum(t, &|r| r.writes_unknown),
                sum(t, &|r| r.unknown_applied)
            )
        },
    );
    row("&nbsp;&nbsp;reads (incl. read-only txns)", &|t| {
        sum(t, &|r| r.reads).to_string()
    });
    row("revisions in the history", &|t| {
        sum(t, &|r| r.revisions).to_string()
    });
    row("watch events checked", &|t| {
        sum(t, &|r| r.watch_events).to_string()
    });
    row(
        "&nbsp;&nbsp;progress notifications / streams / compaction cancels",
        &|t| {
            format!(
                "{} / {} / {}",
                sum(t, &|r| r.progress),
                sum(t, &|r| r.segments),
                sum(t, &|r| r.compacted_cancels)
            )
        },
    );
    row("leases / keep-alives / expiries checked", &|t| {
        format!(
            "{} / {} / {}",
            sum(t, &|r| r.leases),
            sum(t, &|r| r.keepalives),
            sum(t, &|r| r.lease_expiries)
        )
    });
    row("compactions", &|t| sum(t, &|r| r.compactions).to_string());
    row("**violations**", &|t| {
        format!("**{}**", sum(t, &|r| r.violations.len()))
    });
    row("runs with violations (seeds)", &|t| {
        let bad: Vec<String> = of(t)
            .into_iter()
            .filter(|r| !r.violations.is_empty())
            .map(|r| r.seed.to_string())
            .collect();
        if bad.is_empty() {
            "none".into()
        } else {
            bad.join(", ")
        }
    });
    row(
        "gateway killed: watch resumed on the other, first event p50 / p99 / max ms (n; an event written after the kill counts from when a member first showed it)",
        &|t| {
            let v: Vec<Duration> = of(t)
                .into_iter()
                .flat_map(|r| r.failover_first_event.iter().copied())
                .collect();
            format!(
                "{} / {} / {} ({})",
                ms(quantile(&v, 0.5)),
                ms(quantile(&v, 0.99)),
                ms(quantile(&v, 1.0)),
                v.len()
            )
        },
    );

    let _ = writeln!(
        s,
        "\nStalls per fault kind: the longest time without an acknowledged write (and without an event on the busiest watchers) from the fault's start until 3 s after it was healed; p50 / max in ms.\n"
    );
    let _ = writeln!(
        s,
        "| fault | {} |",
        targets
            .iter()
            .map(|t| format!("{t} writes | {t} watches"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(s, "|---|{}", "---|---|".repeat(targets.len()));
    for k in FaultKind::ALL {
        let mut cells = Vec::new();
        let mut any = false;
        for t in &targets {
            let st: Vec<_> = of(t)
                .into_iter()
                .flat_map(|r| r.stalls.iter().filter(|x| x.kind == k).copied())
                .collect();
            any |= !st.is_empty();
            let w: Vec<Duration> = st.iter().map(|x| x.write).collect();
            let wa: Vec<Duration> = st.iter().map(|x| x.watch).collect();
            cells.push(format!(
                "{} / {}",
                ms(quantile(&w, 0.5)),
                ms(quantile(&w, 1.0))
            ));
            cells.push(format!(
                "{} / {}",
                ms(quantile(&wa, 0.5)),
                ms(quantile(&wa, 1.0))
            ));
        }
        if any {
            let _ = writeln!(s, "| {k} | {} |", cells.join(" | "));
        }
    }

    let mut by_target: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in results {
        for v in &r.violations {
            by_target
                .entry(r.target)
                .or_default()
                .push(format!("- seed {}: {v}", r.seed));
        }
        for n in &r.notes {
            by_target
                .entry(r.target)
                .or_default()
                .push(format!("- seed {} (note): {n}", r.seed));
        }
    }
    for (t, lines) in by_target {
        let _ = writeln!(s, "\n{t}: violations and notes\n");
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
    }
    s
}
