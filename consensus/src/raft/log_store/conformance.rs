//! openraft's own storage test suite, run against this log store.

use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::raft::sm::{Shared, StateMachine};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Shared::open(dir.path()).expect("state file");
        let log = LogStore::open(dir.path(), 1, shared.clone()).expect("log file");
        let sm = StateMachine {
            shared,
            durable: log.durability(),
        };
        Ok((dir, log, sm))
    }
}

/// openraft's own storage conformance suite against both stores.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
