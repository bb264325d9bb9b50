//! Bounded, jittered exponential backoff for reconnects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Spreads seeds of backoffs created in the same nanosecond.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Delays grow `base, 2·base, 4·base, ...` up to `max`; each is drawn
/// uniformly from its upper half so that many gateways losing the same store
/// do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x2545_f491, |d| d.as_nanos() as u64)
            ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        Self {
            base,
            max: max.max(base),
            failures: 0,
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt, and counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = ceiling / 2;
        let span = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(if span == 0 {
            0
        } else {
            self.next_rand() % (span + 1)
        })
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64: jitter needs spread, not cryptographic quality.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_bounded_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        for (i, d) in d.iter().enumerate() {
            let ceiling =
                Duration::from_millis(10 * (1 << i.min(5))).min(Duration::from_millis(200));
            assert!(*d >= ceiling / 2 && *d <= ceiling, "attempt {i}: {d:?}");
        }
        assert_eq!(b.failures(), 10);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
