//! The raft log in its own redb file (`raft-log.redb`): openraft's
//! [`RaftLogStorage`]. Appends commit with immediate durability, and that
//! fsync is the point a write becomes durable; the state machine
//! (`sm.rs`) commits without fsync because this log can replay it.
//!
//! ```text
//!   log:  u64 index -> bincode Entry (term, leader, Batch | membership | blank)
//!   meta: "vote" | "committed" | "purged" -> bincode
//! ```
//!
//! Why a second file rather than tables in the state file: redb has one
//! writer per file, so an append's fsync would stall every apply queued
//! behind it (and an apply would delay the next append).

// openraft's trait fixes the error type (StorageError is large); boxing it
// is not an option for the trait methods, so helpers return it as is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::cluster::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// The log store; clones share the file (openraft's reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The state machine: its file is made durable before the log is
    /// purged, since a purged entry can no longer replay an unsynced apply.
    sm: Arc<crate::sm::Shared>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

fn io(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn logs_w(e: impl std::error::Error + 'static) -> StorageError {
    io(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn logs_r(e: impl std::error::Error + 'static) -> StorageError {
    io(ErrorSubject::Logs, ErrorVerb::Read, e)
}

impl LogStore {
    /// Opens (or creates) `<dir>/raft-log.redb`.
    ///
    /// # Errors
    /// Any redb or I/O failure.
    pub(crate) fn open(dir: &Path, sm: Arc<crate::sm::Shared>) -> crate::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("raft-log.redb"))?;
        let tx = db.begin_write()?;
        {
            tx.open_table(LOG)?;
            tx.open_table(META)?;
        }
        tx.commit()?;
        Ok(Self {
            db: Arc::new(db),
            sm,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let tx = self.db.begin_read().map_err(logs_r)?;
        let t = tx.open_table(META).map_err(logs_r)?;
        match t.get(key).map_err(logs_r)? {
            Some(v) => Ok(Some(bincode::deserialize(v.value()).map_err(logs_r)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        v: &T,
        durable: bool,
    ) -> Result<(), StorageError> {
        let bytes = bincode::serialize(v).map_err(logs_w)?;
        let mut tx = self.db.begin_write().map_err(logs_w)?;
        if !durable {
            tx.set_durability(Durability::None).map_err(logs_w)?;
        }
        {
            let mut t = tx.open_table(META).map_err(logs_w)?;
            t.insert(key, bytes.as_slice()).map_err(logs_w)?;
        }
        tx.commit().map_err(logs_w)
    }

    /// Number of entries in the log (for status and tests).
    pub fn len(&self) -> u64 {
        self.db
            .begin_read()
            .ok()
            .and_then(|tx| tx.open_table(LOG).ok())
            .and_then(|t| redb::ReadableTableMetadata::len(&t).ok())
            .unwrap_or(0)
    }

    /// Whether the log holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the log file in bytes.
    pub fn file_size(&self, dir: &Path) -> u64 {
        std::fs::metadata(dir.join("raft-log.redb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let tx = self.db.begin_read().map_err(logs_r)?;
        let t = tx.open_table(LOG).map_err(logs_r)?;
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        let mut out = Vec::new();
        for row in t.range::<u64>((start, end)).map_err(logs_r)? {
            let (_, v) = row.map_err(logs_r)?;
            out.push(bincode::deserialize(v.value()).map_err(logs_r)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.get_meta::<Option<LogId>>("purged")?.flatten();
        let tx = self.db.begin_read().map_err(logs_r)?;
        let t = tx.open_table(LOG).map_err(logs_r)?;
        let last = match t.last().map_err(logs_r)? {
            Some((_, v)) => {
                let e: Entry = bincode::deserialize(v.value()).map_err(logs_r)?;
                Some(e.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta("vote", vote, true)
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta("vote")
    }

    // save_committed / read_committed keep openraft's defaults (nothing
    // stored): recording the commit index would cost a redb commit on
    // RaftCore's path for every batch, and a restarted member learns it
    // from the leader (a lone member elects itself at once).

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, bincode::serialize(&e).map_err(logs_w)?));
        }
        let db = self.db.clone();
        // The fsync runs off the async workers; RaftCore awaits it anyway.
        let res = tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let tx = db.begin_write().map_err(logs_w)?;
            {
                let mut t = tx.open_table(LOG).map_err(logs_w)?;
                for (i, b) in &rows {
                    t.insert(*i, b.as_slice()).map_err(logs_w)?;
                }
            }
            tx.commit().map_err(logs_w)
        })
        .await
        .map_err(logs_w)?;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(logs_w)?;
        {
            let mut t = tx.open_table(LOG).map_err(logs_w)?;
            t.retain_in::<u64, _>(log_id.index.., |_, _| false)
                .map_err(logs_w)?;
        }
        tx.commit().map_err(logs_w)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Every apply up to `log_id` must survive a crash before the
        // entries that could replay it go.
        {
            let _file = self.sm.file_lock.lock().expect("file lock");
            let sm = self.sm.db().begin_write().map_err(logs_w)?;
            sm.commit().map_err(logs_w)?;
        }
        let bytes = bincode::serialize(&Some(log_id)).map_err(logs_w)?;
        let tx = self.db.begin_write().map_err(logs_w)?;
        {
            let mut m = tx.open_table(META).map_err(logs_w)?;
            m.insert("purged", bytes.as_slice()).map_err(logs_w)?;
            let mut t = tx.open_table(LOG).map_err(logs_w)?;
            t.retain_in::<u64, _>((Bound::Unbounded, Bound::Included(log_id.index)), |_, _| {
                false
            })
            .map_err(logs_w)?;
        }
        tx.commit().map_err(logs_w)
    }
}

#[cfg(test)]
mod conformance {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::sm::{Shared, StateMachine};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("tempdir");
            let shared = Shared::open(dir.path()).expect("state file");
            let log = LogStore::open(dir.path(), shared.clone()).expect("log file");
            Ok((dir, log, StateMachine { shared }))
        }
    }

    /// openraft's own storage conformance suite against both stores.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
