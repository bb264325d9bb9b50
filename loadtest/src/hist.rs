//! Latency histograms (HdrHistogram, microseconds) and their summaries.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded exactly: one hour. Anything later saturates
/// here; a run that slow has fallen over anyway.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct LatencyHist {
    h: Histogram<u64>,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHist {
    pub fn new() -> Self {
        // Auto-resizing: the counts array only grows as far as the largest
        // latency recorded, so a thousand per-stream histograms of
        // millisecond latencies stay small.
        Self {
            h: Histogram::new(3).expect("3 significant digits is a valid precision"),
        }
    }

    /// Records one latency given in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        // `record` grows the histogram; `saturating_record` would clamp to
        // its current (small) top instead.
        let _ = self.h.record((ns / 1_000).clamp(1, MAX_US));
    }

    pub fn merge(&mut self, other: &LatencyHist) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.h.add(&other.h);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// Percentiles and a plottable distribution curve.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1_000.0;
        if self.h.is_empty() {
            return LatencySummary::default();
        }
        let curve = curve_quantiles()
            .into_iter()
            .map(|q| [q, ms(self.h.value_at_quantile(q))])
            .chain(std::iter::once([1.0, ms(self.h.max())]))
            .collect();
        LatencySummary {
            count: self.h.len(),
            min_ms: ms(self.h.min()),
            mean_ms: self.h.mean() / 1_000.0,
            p50_ms: ms(self.h.value_at_quantile(0.50)),
            p90_ms: ms(self.h.value_at_quantile(0.90)),
            p99_ms: ms(self.h.value_at_quantile(0.99)),
            p999_ms: ms(self.h.value_at_quantile(0.999)),
            max_ms: ms(self.h.max()),
            curve,
        }
    }
}

/// Quantiles spaced evenly on the "1 / (1 - q)" axis HdrHistogram plots use,
/// from 0 to 99.999%.
fn curve_quantiles() -> Vec<f64> {
    (0..=50)
        .map(|k| 1.0 - 10f64.powf(-(k as f64) / 10.0))
        .collect()
}

/// Latency percentiles in milliseconds, plus `curve`: `[quantile, ms]` points
/// for the distribution plot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub curve: Vec<[f64; 2]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_grow_the_histogram_instead_of_clamping() {
        let mut h = LatencyHist::new();
        h.record_ns(2_500_000_000);
        let mut all = LatencyHist::new();
        all.merge(&h);
        assert!((all.summary().max_ms - 2_500.0).abs() < 5.0);
    }

    #[test]
    fn summary_orders_percentiles() {
        let mut h = LatencyHist::new();
        for i in 1..=1000u64 {
            h.record_ns(i * 1_000_000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{}", s.p50_ms);
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{}", s.p99_ms);
        assert!(s.min_ms <= s.p50_ms && s.p999_ms <= s.max_ms);
        assert!(s.curve.windows(2).all(|w| w[0][1] <= w[1][1]));
    }
}
