//! Live counters shared by a run's tasks, and the progress bar that shows
//! them on stderr (indicatif hides itself when stderr is not a terminal).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counters every task bumps with relaxed atomics; read only for display and
/// for "has everyone caught up" polling, never for verdicts.
#[derive(Debug, Default)]
pub struct Counters {
    pub puts_sent: AtomicU64,
    pub puts_acked: AtomicU64,
    pub puts_failed: AtomicU64,
    pub events: AtomicU64,
    pub watchers_ready: AtomicU64,
    pub watchers_done: AtomicU64,
    pub resumes: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A spinner-style bar whose message is refreshed from [`Counters`].
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// `enabled = false` draws nothing (tests, `--no-progress`).
    pub fn new(enabled: bool, counters: Arc<Counters>) -> Self {
        let bar = if enabled {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix:.bold} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let b = bar.clone();
        let ticker = enabled.then(|| {
            tokio::spawn(async move {
                // Aborted on drop; only formats a line every 250 ms.
                let mut t = tokio::time::interval(Duration::from_millis(250));
                loop {
                    t.tick().await;
                    let c = &counters;
                    b.set_message(format!(
                        "watchers {}/{} done · puts {} sent {} acked {} failed · events {} · resumes {}",
                        Counters::get(&c.watchers_ready),
                        Counters::get(&c.watchers_done),
                        Counters::get(&c.puts_sent),
                        Counters::get(&c.puts_acked),
                        Counters::get(&c.puts_failed),
                        Counters::get(&c.events),
                        Counters::get(&c.resumes),
                    ));
                    b.tick();
                }
            })
        });
        Self { bar, ticker }
    }

    /// Names the phase shown before the counters ("setup", "writing", ...).
    pub fn phase(&self, name: &str) {
        self.bar.set_prefix(name.to_string());
    }

    /// Prints a line above the bar (or to stderr when hidden).
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}
