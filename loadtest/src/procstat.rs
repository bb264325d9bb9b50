//! Server CPU seconds and memory from /proc, for the PIDs a run measures.
//!
//! ```text
//!   --server-pid P ──> ProcWatch::start ──(sample every 200 ms)──> peak VmRSS
//!                      ProcWatch::finish ──> CPU seconds used during the run,
//!                                            peak RSS, VmHWM, RSS at the end
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{LoadError, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// utime + stime, in seconds.
    pub cpu_s: f64,
    /// VmRSS.
    pub rss_bytes: u64,
    /// VmHWM: the peak RSS since the process started.
    pub hwm_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
///
/// # Errors
/// [`LoadError::Proc`] when the process is gone or the files do not parse.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let err = |reason: String| LoadError::Proc { pid, reason };
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| err(e.to_string()))?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from after the last ')'.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| err("no ')' in stat".into()))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) is index 11, stime (15) 12.
    let num = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| err(format!("stat field {} missing", i + 3)))
    };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let cpu_s = (num(11)? + num(12)?) as f64 / ticks;
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| err(e.to_string()))?;
    let kb = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(ProcSample {
        cpu_s,
        rss_bytes: kb("VmRSS:"),
        hwm_bytes: kb("VmHWM:"),
    })
}

/// What a run reports per measured process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcStats {
    /// "etcd", "grpc-proxy", "lookout-gateway", "client", or "pid N".
    pub label: String,
    pub pid: u32,
    /// CPU seconds spent between start and finish of the measurement.
    pub cpu_s: f64,
    /// Highest VmRSS seen by the sampler during the run.
    pub peak_rss_bytes: u64,
    /// VmHWM at the end (peak since the process started).
    pub hwm_bytes: u64,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
    /// Set when the process could not be read (gone, not ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug)]
struct Watched {
    label: String,
    pid: u32,
    start: Option<ProcSample>,
    /// Written by the sampler task, read at the end.
    peak: Arc<AtomicU64>,
}

/// Samples a set of processes for the length of a run.
#[derive(Debug)]
pub struct ProcWatch {
    procs: Vec<Watched>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl ProcWatch {
    /// Takes a first sample of each `(label, pid)` and starts a sampler that
    /// keeps the peak RSS. Unreadable PIDs are reported, not fatal.
    pub fn start(pids: &[(String, u32)]) -> Self {
        let procs: Vec<Watched> = pids
            .iter()
            .map(|(label, pid)| {
                let start = sample(*pid).ok();
                Watched {
                    label: label.clone(),
                    pid: *pid,
                    peak: Arc::new(AtomicU64::new(start.map(|s| s.rss_bytes).unwrap_or(0))),
                    start,
                }
            })
            .collect();
        let targets: Vec<(u32, Arc<AtomicU64>)> =
            procs.iter().map(|p| (p.pid, p.peak.clone())).collect();
        let sampler = (!targets.is_empty()).then(|| {
            tokio::spawn(async move {
                // Stopped by `finish` (abort); every tick is a cheap read.
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    for (pid, peak) in &targets {
                        if let Ok(s) = sample(*pid) {
                            peak.fetch_max(s.rss_bytes, Ordering::Relaxed);
                        }
                    }
                }
            })
        });
        Self { procs, sampler }
    }

    /// Current RSS per process, in the order given to `start`.
    pub fn rss_each(&self) -> Vec<u64> {
        self.procs
            .iter()
            .map(|p| sample(p.pid).map(|s| s.rss_bytes).unwrap_or(0))
            .collect()
    }

    /// Stops sampling and returns the deltas.
    pub fn finish(mut self) -> Vec<ProcStats> {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        self.procs
            .iter()
            .map(|p| match (p.start, sample(p.pid)) {
                (Some(a), Ok(b)) => ProcStats {
                    label: p.label.clone(),
                    pid: p.pid,
                    cpu_s: b.cpu_s - a.cpu_s,
                    peak_rss_bytes: p.peak.load(Ordering::Relaxed).max(b.rss_bytes),
                    hwm_bytes: b.hwm_bytes,
                    rss_start_bytes: a.rss_bytes,
                    rss_end_bytes: b.rss_bytes,
                    error: None,
                },
                (_, Err(e)) => ProcStats {
                    label: p.label.clone(),
                    pid: p.pid,
                    error: Some(e.to_string()),
                    ..ProcStats::default()
                },
                (None, Ok(_)) => ProcStats {
                    label: p.label.clone(),
                    pid: p.pid,
                    error: Some("not readable at start".into()),
                    ..ProcStats::default()
                },
            })
            .collect()
    }
}

impl Drop for ProcWatch {
    fn drop(&mut self) {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.hwm_bytes >= s.rss_bytes);
        assert!(s.cpu_s >= 0.0);
        assert!(sample(u32::MAX).is_err());
    }
}
