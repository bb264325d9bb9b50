//! Where violations collect: a long broken run would otherwise bury the
//! first (usually most telling) messages under thousands of repeats.

use crate::kv_history::Violation;

/// At most this many messages per check; the rest are counted.
const MAX_MESSAGES: usize = 40;

pub(super) const LIN: &str = "linearizability";

#[derive(Default)]
pub(super) struct Sink {
    out: Vec<Violation>,
    dropped: usize,
}

impl Sink {
    pub(super) fn push(&mut self, checker: &'static str, m: String) {
        if self.out.len() < MAX_MESSAGES {
            self.out.push(Violation::new(checker, m));
        } else {
            self.dropped += 1;
        }
    }

    /// The messages, with a count of those dropped.
    pub(super) fn finish(mut self) -> Vec<Violation> {
        if self.dropped > 0 {
            self.out.push(Violation::new(
                LIN,
                format!("... and {} more", self.dropped),
            ));
        }
        self.out
    }
}
