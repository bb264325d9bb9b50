//! `process_*`, as the Prometheus Go client exports them.

/// The Prometheus Go client's process collector, read from /proc/self
/// (user HZ 100, as Go's procfs assumes). Families that cannot be read
/// are left out rather than reported as 0.
pub fn render_process(out: &mut String) {
    use lookout_consensus::metrics::single;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which sits in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    const HZ: f64 = 100.0;
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        single(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (u + s) / HZ,
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let limit = |name: &str| {
        limits.lines().find(|l| l.starts_with(name)).and_then(|l| {
            let soft = l[name.len()..].split_whitespace().next()?;
            if soft == "unlimited" {
                Some(u64::MAX as f64)
            } else {
                soft.parse::<f64>().ok()
            }
        })
    };
    if let Some(v) = limit("Max open files") {
        single(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            v,
        );
    }
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        single(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            d.count() as f64,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    if let Some(kb) = rss {
        single(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kb * 1024.0,
        );
    }
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(b), Some(start)) = (btime, field(22)) {
        single(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            b + start / HZ,
        );
    }
    if let Some(v) = field(23) {
        single(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            v,
        );
    }
    if let Some(v) = limit("Max address space") {
        single(
            out,
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes.",
            v,
        );
    }
}
