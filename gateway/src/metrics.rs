//! The gateway's own counters and the Prometheus text rendering of them
//! together with the cache's [`CacheMetrics`].

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use lookout_cache::CacheMetrics;

use crate::admission::GateStats;

/// Counters of request handling. Plain atomics: a relaxed add per request.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Ranges answered from the cache.
    pub ranges_cached: AtomicU64,
    /// Ranges forwarded (old revision, keys outside the cached prefixes).
    pub ranges_forwarded: AtomicU64,
    /// Read-only txns answered from the cache.
    pub txns_cached: AtomicU64,
    /// Writes and other requests forwarded to the store.
    pub forwarded: AtomicU64,
    /// Linearizable reads that gave up waiting for the cache (Unavailable).
    pub read_timeouts: AtomicU64,
    /// Write responses sent before the cache applied the write (bound hit).
    pub write_wait_timeouts: AtomicU64,
    /// Gauge: open client LeaseKeepAlive streams (all share one upstream stream).
    pub keepalive_streams: AtomicI64,
    /// Gauge: open upstream LeaseKeepAlive streams (0 or 1).
    pub keepalive_upstream_streams: AtomicI64,
    /// Counter: upstream LeaseKeepAlive streams opened.
    pub keepalive_upstream_opened: AtomicU64,
    /// Counter: keep-alive requests from clients.
    pub keepalive_requests: AtomicU64,
    /// Counter: keep-alive requests sent upstream.
    pub keepalive_upstream_requests: AtomicU64,
    /// Counter: keep-alive requests answered by another client's request
    /// for the same lease.
    pub keepalive_coalesced: AtomicU64,
    /// Counter: watch creates that waited for this gateway to reach the
    /// revision the client resumed from (it was behind another gateway).
    pub resume_waits: AtomicU64,
    /// Counter: resume waits that hit the bound (the watch was created
    /// anyway; events come as the cache reaches them).
    pub resume_wait_timeouts: AtomicU64,
    /// Storm control of lists (multi-key Ranges).
    pub lists: GateStats,
    /// Storm control of watch creates that replay history.
    pub catchups: GateStats,
    /// Gauge: open Watch RPCs.
    pub watch_rpcs: AtomicI64,
    /// The HTTP/JSON API's numbers (open HTTP watch streams and more).
    pub http: std::sync::Arc<crate::http::HttpMetrics>,
    /// The client listener's connections (open, refused, too slow).
    pub listener: std::sync::Arc<crate::listener::ListenerMetrics>,
    /// Counter: watch creates refused by --max-watchers-per-stream.
    pub watchers_refused: AtomicU64,
}

/// One metric family in Prometheus text format.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// Renders every metric as Prometheus text (version 0.0.4). The sections
/// are written in this order, which is the order scrapes have always seen.
pub(crate) fn render(c: &CacheMetrics, g: &GatewayMetrics, probes: u64, ready: bool) -> String {
    let mut o = String::with_capacity(4096);
    render_cache_state(&mut o, c, g, ready);
    render_cache_upstream(&mut o, c);
    render_requests(&mut o, g, probes);
    render_limits(&mut o, g);
    o
}

/// The cache and its watchers: readiness, revisions, the history ring.
fn render_cache_state(o: &mut String, c: &CacheMetrics, g: &GatewayMetrics, ready: bool) {
    let i = |a: &AtomicI64| a.load(Relaxed) as f64;
    let u = |a: &AtomicU64| a.load(Relaxed) as f64;
    let gauge = "gauge";
    let counter = "counter";
    family(
        o,
        "lookout_ready",
        gauge,
        "1 once the cache has listed the store.",
        &[("", f64::from(u8::from(ready)))],
    );
    family(
        o,
        "lookout_watchers",
        gauge,
        "Watchers registered.",
        &[("", i(&c.watchers))],
    );
    family(
        o,
        "lookout_watch_groups",
        gauge,
        "Distinct watch groups (range, filters, prev_kv).",
        &[("", i(&c.groups))],
    );
    family(
        o,
        "lookout_watch_streams",
        gauge,
        "Open cache watch streams.",
        &[("", i(&c.streams))],
    );
    family(
        o,
        "lookout_watch_rpcs",
        gauge,
        "Open Watch RPCs.",
        &[("", i(&g.watch_rpcs))],
    );
    family(
        o,
        "lookout_events_in_total",
        counter,
        "Events received from the upstream watch.",
        &[("", u(&c.events_in))],
    );
    family(
        o,
        "lookout_events_out_total",
        counter,
        "Events delivered to watchers (one per watcher per event).",
        &[("", u(&c.events_out))],
    );
    family(
        o,
        "lookout_watch_responses_total",
        counter,
        "WatchResponse frames handed out.",
        &[("", u(&c.deliveries))],
    );
    family(
        o,
        "lookout_cache_revision",
        gauge,
        "Revision the cache has applied.",
        &[("", i(&c.cache_revision))],
    );
    family(
        o,
        "lookout_upstream_revision",
        gauge,
        "Newest revision the upstream reported.",
        &[("", i(&c.upstream_revision))],
    );
    family(
        o,
        "lookout_cache_revision_lag",
        gauge,
        "Revisions the cache trails the upstream by.",
        &[("", c.lag() as f64)],
    );
    family(
        o,
        "lookout_ring_events",
        gauge,
        "Events held in the history ring.",
        &[("", i(&c.ring_events))],
    );
    family(
        o,
        "lookout_ring_bytes",
        gauge,
        "Bytes held in the history ring.",
        &[("", i(&c.ring_bytes))],
    );
    family(
        o,
        "lookout_ring_start_revision",
        gauge,
        "Oldest revision the ring serves.",
        &[("", i(&c.ring_start))],
    );
}

/// How the cache keeps up with the store: lists, probes, relists, upstream watches, and what watchers were switched, cancelled or spliced.
fn render_cache_upstream(o: &mut String, c: &CacheMetrics) {
    let u = |a: &AtomicU64| a.load(Relaxed) as f64;
    let gauge = "gauge";
    let counter = "counter";
    family(
        o,
        "lookout_list_duration_seconds",
        "summary",
        "Full lists of the cached ranges (initial and relists).",
        &[
            ("_sum", u(&c.list_latency_us_total) / 1e6),
            ("_count", u(&c.lists)),
        ],
    );
    family(
        o,
        "lookout_list_last_duration_seconds",
        gauge,
        "Duration of the last list.",
        &[("", u(&c.list_latency_us_last) / 1e6)],
    );
    family(
        o,
        "lookout_compaction_probes_total",
        counter,
        "Store compaction probes for watch creates from the ring, and those that failed.",
        &[
            (
                "{result=\"done\"}",
                u(&c.compaction_probes) - u(&c.compaction_probe_errors),
            ),
            ("{result=\"error\"}", u(&c.compaction_probe_errors)),
        ],
    );
    family(
        o,
        "lookout_relists_total",
        counter,
        "Relists after history was lost upstream.",
        &[("", u(&c.relists))],
    );
    family(
        o,
        "lookout_upstream_watches_total",
        counter,
        "Upstream watch (re)connections.",
        &[("", u(&c.upstream_watches))],
    );
    family(
        o,
        "lookout_upstream_errors_total",
        counter,
        "Upstream watch streams that broke.",
        &[("", u(&c.upstream_errors))],
    );
    family(
        o,
        "lookout_slow_switches_total",
        counter,
        "Streams that fell behind their byte budget and read the ring.",
        &[("", u(&c.slow_switches))],
    );
    family(
        o,
        "lookout_compact_cancels_total",
        counter,
        "Watchers cancelled with compact_revision.",
        &[("", u(&c.compact_cancels))],
    );
    family(
        o,
        "lookout_splices_total",
        counter,
        "Watchers served by an upstream watch spliced in.",
        &[("", u(&c.splices))],
    );
    family(
        o,
        "lookout_progress_regressions_total",
        counter,
        "Events that arrived below an announced progress revision.",
        &[("", u(&c.progress_regressions))],
    );
}

/// Where requests were answered, and the waits and keep-alives behind them.
fn render_requests(o: &mut String, g: &GatewayMetrics, probes: u64) {
    let i = |a: &AtomicI64| a.load(Relaxed) as f64;
    let u = |a: &AtomicU64| a.load(Relaxed) as f64;
    let gauge = "gauge";
    let counter = "counter";
    family(
        o,
        "lookout_gateway_ranges_total",
        counter,
        "Range requests by where they were answered.",
        &[
            ("{source=\"cache\"}", u(&g.ranges_cached)),
            ("{source=\"upstream\"}", u(&g.ranges_forwarded)),
        ],
    );
    family(
        o,
        "lookout_gateway_cached_txns_total",
        counter,
        "Read-only txns answered from the cache.",
        &[("", u(&g.txns_cached))],
    );
    family(
        o,
        "lookout_gateway_forwarded_total",
        counter,
        "Requests forwarded to the store.",
        &[("", u(&g.forwarded))],
    );
    family(
        o,
        "lookout_gateway_read_timeouts_total",
        counter,
        "Linearizable reads that timed out waiting for the cache.",
        &[("", u(&g.read_timeouts))],
    );
    family(
        o,
        "lookout_gateway_write_wait_timeouts_total",
        counter,
        "Write responses sent before the cache had applied the write.",
        &[("", u(&g.write_wait_timeouts))],
    );
    family(
        o,
        "lookout_gateway_read_index_probes_total",
        counter,
        "Store revision probes for linearizable reads (shared by concurrent reads).",
        &[("", probes as f64)],
    );
    family(
        o,
        "lookout_gateway_keepalive_streams",
        gauge,
        "Open client LeaseKeepAlive streams.",
        &[("", i(&g.keepalive_streams))],
    );
    family(
        o,
        "lookout_gateway_keepalive_upstream_streams",
        gauge,
        "Open upstream LeaseKeepAlive streams (every client stream shares one).",
        &[("", i(&g.keepalive_upstream_streams))],
    );
    family(
        o,
        "lookout_gateway_keepalive_upstream_streams_opened_total",
        counter,
        "Upstream LeaseKeepAlive streams opened.",
        &[("", u(&g.keepalive_upstream_opened))],
    );
    family(
        o,
        "lookout_gateway_keepalive_requests_total",
        counter,
        "Keep-alive requests, from clients and sent upstream (concurrent ones for a lease share one).",
        &[
            ("{side=\"client\"}", u(&g.keepalive_requests)),
            ("{side=\"upstream\"}", u(&g.keepalive_upstream_requests)),
            ("{side=\"coalesced\"}", u(&g.keepalive_coalesced)),
        ],
    );
    family(
        o,
        "lookout_gateway_resume_waits_total",
        counter,
        "Watch creates that waited for this gateway to reach the client's resume revision.",
        &[
            (
                "{result=\"reached\"}",
                u(&g.resume_waits) - u(&g.resume_wait_timeouts),
            ),
            ("{result=\"timeout\"}", u(&g.resume_wait_timeouts)),
        ],
    );
}

/// Storm control, the HTTP API, and the connection and watcher limits.
fn render_limits(o: &mut String, g: &GatewayMetrics) {
    let i = |a: &AtomicI64| a.load(Relaxed) as f64;
    let u = |a: &AtomicU64| a.load(Relaxed) as f64;
    let gauge = "gauge";
    let counter = "counter";
    for (what, st) in [("lists", &g.lists), ("catchups", &g.catchups)] {
        family(
            o,
            &format!("lookout_gateway_{what}_total"),
            counter,
            &format!(
                "Storm control of {what}: admitted (at once or after queueing), queued, rejected with ResourceExhausted."
            ),
            &[
                ("{result=\"admitted\"}", u(&st.admitted)),
                ("{result=\"queued\"}", u(&st.waited)),
                ("{result=\"rejected\"}", u(&st.rejected)),
            ],
        );
        family(
            o,
            &format!("lookout_gateway_{what}_waiting"),
            gauge,
            &format!("{what} waiting for a permit now."),
            &[("", i(&st.queued))],
        );
    }
    family(
        o,
        "lookout_http_watch_streams",
        gauge,
        "Open HTTP watch streams (/v1/watch, /v3/watch).",
        &[("", i(&g.http.watch_streams))],
    );
    family(
        o,
        "lookout_http_watch_events_total",
        counter,
        "Events written to HTTP watch streams.",
        &[("", u(&g.http.watch_events))],
    );
    family(
        o,
        "lookout_http_requests_total",
        counter,
        "HTTP/JSON API requests answered.",
        &[("", u(&g.http.requests))],
    );
    family(
        o,
        "lookout_connections_open",
        gauge,
        "Client connections open (TLS handshakes included), bounded by --max-connections.",
        &[("", i(&g.listener.open))],
    );
    family(
        o,
        "lookout_connections_refused_total",
        counter,
        "Client connections closed at accept because --max-connections were open.",
        &[("", u(&g.listener.refused))],
    );
    family(
        o,
        "lookout_connections_slow_total",
        counter,
        "Client connections closed because their first request head was late (--request-header-timeout) or too large (--max-header-bytes).",
        &[("", u(&g.listener.slow_requests))],
    );
    family(
        o,
        "lookout_watchers_refused_total",
        counter,
        "Watch creates refused because their stream held --max-watchers-per-stream watchers.",
        &[("", u(&g.watchers_refused))],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let c = CacheMetrics::default();
        c.cache_revision.store(5, Relaxed);
        c.upstream_revision.store(9, Relaxed);
        let g = GatewayMetrics::default();
        g.ranges_cached.store(3, Relaxed);
        let t = render(&c, &g, 0, true);
        assert!(
            t.contains("# TYPE lookout_cache_revision_lag gauge\nlookout_cache_revision_lag 4\n")
        );
        assert!(t.contains("lookout_gateway_ranges_total{source=\"cache\"} 3\n"));
        assert!(t.contains("lookout_list_duration_seconds_count 0\n"));
        // Every sample line is "name[{labels}] value".
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let (name, v) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("lookout_"), "{l}");
            v.parse::<f64>().unwrap();
        }
    }
}
