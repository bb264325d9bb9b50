//! Storm control: a bounded number of expensive requests run at once, a
//! bounded number wait their turn, and the rest are told to come back later
//! instead of piling up until the gateway collapses.
//!
//! ```text
//!   list / catch-up ──> permit free? ── yes ──> run (permit held until done)
//!                            └─ no ──> queue not full? ── yes ──> wait (bounded) ──> run
//!                                            └─ no (or waited too long) ──> ResourceExhausted
//!                                                 + `grpc-retry-pushback-ms` (gRPC's retry hint)
//! ```
//!
//! Two gates exist: *lists* (Ranges over more than one key, the informer's
//! initial list) and *catch-ups* (watch creates that start in the past and
//! replay history, or open a spliced upstream watch). A reconnect storm of
//! 1,000 clients is worked through `permits` at a time; nothing spirals,
//! because the work in flight is bounded and the excess is refused cheaply.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// How one gate is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    /// Requests running at once (at least 1).
    pub permits: usize,
    /// Requests waiting for a permit; past this they are refused at once.
    pub queue: usize,
    /// Longest a queued request waits before it is refused.
    pub max_wait: Duration,
    /// The retry hint sent with a refusal.
    pub retry_after: Duration,
}

/// A gate's numbers, kept in [`crate::GatewayMetrics`] for /metrics.
#[derive(Debug, Default)]
pub struct GateStats {
    /// Counter: requests let through (at once or after waiting).
    pub admitted: AtomicU64,
    /// Counter: requests that had to wait for a permit.
    pub waited: AtomicU64,
    /// Counter: requests refused with ResourceExhausted.
    pub rejected: AtomicU64,
    /// Gauge: requests waiting now (checked and bumped without a lock).
    pub queued: AtomicI64,
}

/// One gate.
#[derive(Debug)]
pub(crate) struct Gate {
    what: &'static str,
    cfg: GateConfig,
    sem: Arc<Semaphore>,
}

impl Gate {
    pub(crate) fn new(what: &'static str, cfg: GateConfig) -> Self {
        let cfg = GateConfig {
            permits: cfg.permits.max(1),
            ..cfg
        };
        Self {
            what,
            sem: Arc::new(Semaphore::new(cfg.permits)),
            cfg,
        }
    }

    /// Requests running now.
    pub(crate) fn running(&self) -> usize {
        self.cfg.permits - self.sem.available_permits()
    }

    /// A permit to run, held until dropped.
    ///
    /// # Errors
    /// ResourceExhausted with a retry hint when the queue is full or the
    /// wait exceeded `max_wait`.
    pub(crate) async fn enter(&self, stats: &GateStats) -> Result<OwnedSemaphorePermit, Status> {
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            stats.admitted.fetch_add(1, Relaxed);
            return Ok(p);
        }
        if stats.queued.fetch_add(1, Relaxed) >= self.cfg.queue as i64 {
            stats.queued.fetch_sub(1, Relaxed);
            return Err(self.refuse(stats));
        }
        stats.waited.fetch_add(1, Relaxed);
        let r = tokio::time::timeout(self.cfg.max_wait, self.sem.clone().acquire_owned()).await;
        stats.queued.fetch_sub(1, Relaxed);
        match r {
            Ok(Ok(p)) => {
                stats.admitted.fetch_add(1, Relaxed);
                Ok(p)
            }
            _ => Err(self.refuse(stats)),
        }
    }

    fn refuse(&self, stats: &GateStats) -> Status {
        stats.rejected.fetch_add(1, Relaxed);
        let ms = self.cfg.retry_after.as_millis();
        crate::error::too_many_concurrent(
            self.what,
            self.running(),
            stats.queued.load(Relaxed).max(0),
            ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_queues_then_refuses_with_a_hint() {
        let g = Gate::new(
            "lists",
            GateConfig {
                permits: 1,
                queue: 1,
                max_wait: Duration::from_secs(5),
                retry_after: Duration::from_millis(250),
            },
        );
        let stats = Arc::new(GateStats::default());
        let first = g.enter(&stats).await.unwrap();
        assert_eq!(g.running(), 1);
        // The second waits in the queue; the third finds it full.
        let g = Arc::new(g);
        let (g2, s2) = (g.clone(), stats.clone());
        let second = tokio::spawn(async move { g2.enter(&s2).await.map(|_| ()) });
        wait_queued(&stats).await;
        let err = g.enter(&stats).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("retry after 250ms"), "{err:?}");
        assert_eq!(
            err.metadata()
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok()),
            Some("250")
        );
        drop(first);
        second.await.unwrap().unwrap();
        assert_eq!(stats.rejected.load(Relaxed), 1);
        assert_eq!(stats.waited.load(Relaxed), 1);
        assert_eq!(stats.admitted.load(Relaxed), 2);
    }

    /// Waits (bounded) until one request is queued.
    async fn wait_queued(stats: &GateStats) {
        for _ in 0..500 {
            if stats.queued.load(Relaxed) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the second request never queued");
    }

    #[tokio::test]
    async fn a_queued_request_gives_up_after_max_wait() {
        let g = Gate::new(
            "catch-ups",
            GateConfig {
                permits: 1,
                queue: 10,
                max_wait: Duration::from_millis(30),
                retry_after: Duration::from_secs(1),
            },
        );
        let stats = GateStats::default();
        let _held = g.enter(&stats).await.unwrap();
        let err = g.enter(&stats).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!(stats.queued.load(Relaxed), 0);
    }
}
