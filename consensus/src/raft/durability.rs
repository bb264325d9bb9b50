//! How far this member's raft log is on disk. The log store advances it;
//! the state machine waits on it before an entry takes effect (the why is
//! in `raft/log_store/`). Its own file so that the two never import each other.

use tokio::sync::watch;

/// How far the local log is durable, and which entries were
/// acknowledged to openraft before their fsync (see `raft/log_store/`).
#[derive(Debug)]
pub(crate) struct Durability {
    tx: watch::Sender<Durable>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Durable {
    /// Every record up to this index is synced.
    synced: Option<u64>,
    /// The highest index acknowledged before its fsync.
    early: Option<u64>,
    /// The writer failed: nothing after `synced` will ever be durable.
    failed: bool,
}

impl Durable {
    /// Whether every early-acknowledged entry up to `index` is synced.
    fn covers(&self, index: u64) -> bool {
        match self.early {
            None => true,
            Some(e) => self.synced.is_some_and(|s| s >= e.min(index)),
        }
    }
}

impl Durability {
    pub(super) fn new(synced: Option<u64>) -> Self {
        Self {
            tx: watch::Sender::new(Durable {
                synced,
                ..Default::default()
            }),
        }
    }

    pub(super) fn note_early(&self, index: u64) {
        self.tx
            .send_modify(|d| d.early = Some(d.early.map_or(index, |e| e.max(index))));
    }

    pub(super) fn set_synced(&self, index: u64) {
        self.tx.send_modify(|d| d.synced = Some(index));
    }

    /// After a truncation at `index` everything before it is synced and
    /// nothing at or after it exists.
    pub(super) fn truncated(&self, index: u64) {
        self.tx.send_modify(|d| {
            let before = index.checked_sub(1);
            d.synced = before;
            d.early = match (d.early, before) {
                (Some(e), Some(b)) => Some(e.min(b)),
                _ => None,
            };
        });
    }

    pub(super) fn fail(&self) {
        self.tx.send_modify(|d| d.failed = true);
    }

    /// Whether entries up to `index` may take effect now.
    pub fn covers(&self, index: u64) -> bool {
        self.tx.borrow().covers(index)
    }

    /// Every record up to this index is on disk.
    pub fn synced_index(&self) -> Option<u64> {
        self.tx.borrow().synced
    }

    /// Waits until every entry up to `index` this member acknowledged
    /// early is on disk. Returns at once when none is pending (followers,
    /// and entries that never went through this log).
    ///
    /// # Errors
    /// The log writer failed: those entries will never be durable here.
    pub async fn wait(&self, index: u64) -> Result<(), std::io::Error> {
        let mut rx = self.tx.subscribe();
        loop {
            {
                let d = rx.borrow_and_update();
                if d.covers(index) {
                    return Ok(());
                }
                if d.failed {
                    return Err(std::io::Error::other("raft log writer failed"));
                }
            }
            if rx.changed().await.is_err() {
                return Err(std::io::Error::other("raft log closed"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_covers_early_entries_only_once_synced() {
        let d = Durable {
            synced: Some(5),
            early: Some(10),
            failed: false,
        };
        assert!(d.covers(3));
        assert!(d.covers(5));
        assert!(!d.covers(6));
        assert!(
            !d.covers(12),
            "entries after an unsynced early one wait too"
        );
        let d = Durable {
            synced: Some(10),
            ..d
        };
        assert!(
            d.covers(12),
            "later entries were synced before acknowledged"
        );
        assert!(
            Durable::default().covers(100),
            "nothing acknowledged early: nothing to wait for"
        );
        let dur = Durability::new(Some(4));
        dur.note_early(9);
        assert!(!dur.covers(9));
        // A truncation at 7 leaves 0..=6, all synced by then.
        dur.truncated(7);
        assert!(dur.covers(9));
        assert_eq!(dur.synced_index(), Some(6));
    }
}
