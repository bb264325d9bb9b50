//! The log store against real files: durability ordering, restarts,
//! the pre-WAL import and torn tails.

use std::time::Duration;

use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::raft::sm::Shared;
use crate::raft::type_config::Batch;

fn entries(term: u64, leader: NodeId, range: std::ops::Range<u64>) -> Vec<Entry> {
    range
        .map(|i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), i),
            payload: EntryPayload::Normal(Batch(Vec::new())),
        })
        .collect()
}

fn open(dir: &Path, node: NodeId) -> LogStore {
    let shared = Shared::open(dir).expect("state file");
    LogStore::open(dir, node, shared).expect("log")
}

async fn indexes(log: &mut LogStore) -> Vec<(u64, u64)> {
    log.try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_entries_are_synced_before_their_callback() {
    let d = tempfile::tempdir().unwrap();
    let mut log = open(d.path(), 1);
    // Member 2 leads term 3: entries from it are not this member's own.
    log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
    log.blocking_append(entries(3, 2, 1..51)).await.unwrap();
    let dur = log.durability();
    assert_eq!(dur.synced_index(), Some(50));
    assert!(dur.covers(50));
    log.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_own_entries_apply_once_synced() {
    let d = tempfile::tempdir().unwrap();
    let mut log = open(d.path(), 1);
    log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    let dur = log.durability();
    for k in 0..20u64 {
        log.blocking_append(entries(2, 1, k * 10 + 1..k * 10 + 11))
            .await
            .unwrap();
        // Acknowledged (maybe before the fsync); taking effect waits
        // for the sync, and then the sync is there.
        tokio::time::timeout(Duration::from_secs(10), dur.wait(k * 10 + 10))
            .await
            .expect("synced in time")
            .unwrap();
        assert!(dur.synced_index() >= Some(k * 10 + 10));
    }
    log.stop();
    drop(log);
    // What was waited for is on disk.
    let mut log = open(d.path(), 1);
    assert_eq!(indexes(&mut log).await.len(), 200);
    log.stop();
}

/// Appends written on the caller's task (writer idle) and appends
/// queued to the writer thread interleave without reordering: a
/// leader's early-acknowledged entries are still queued when the
/// next term's leader sends more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_queued_appends_keep_log_order() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut log = open(d.path(), 1);
        for k in 0..10u64 {
            let term = 2 * k + 1;
            // This member leads: queued to the writer, acknowledged early.
            log.save_vote(&Vote::new_committed(term, 1)).await.unwrap();
            log.blocking_append(entries(term, 1, k * 20..k * 20 + 10))
                .await
                .unwrap();
            // Member 2 leads the next term: written inline when the
            // writer is idle, queued behind it otherwise.
            log.save_vote(&Vote::new_committed(term + 1, 2))
                .await
                .unwrap();
            log.blocking_append(entries(term + 1, 2, k * 20 + 10..k * 20 + 20))
                .await
                .unwrap();
            assert!(log.durability().synced_index() >= Some(k * 20 + 19));
        }
        log.stop();
    }
    let mut log = open(d.path(), 1);
    let got = indexes(&mut log).await;
    assert_eq!(got.len(), 200);
    for (i, (term, index)) in got.iter().enumerate() {
        assert_eq!(*index, i as u64);
        assert_eq!(*term, (i as u64 / 10) + 1, "entry {i}");
    }
    log.stop();
}

/// The state machine applies a leader's own entry while its fsync is
/// pending (the redb commit is there) but nothing is visible, and no
/// reply exists, until the log has synced it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_overlaps_the_fsync_but_takes_effect_after_it() {
    use lookout_proto::pb::PutRequest;
    use openraft::storage::RaftStateMachine;
    use redb::ReadableDatabase;

    use crate::mvcc::request::Request;
    use crate::raft::sm::StateMachine;

    let d = tempfile::tempdir().unwrap();
    let shared = Shared::open(d.path()).unwrap();
    let log = LogStore::open(d.path(), 1, shared.clone()).unwrap();
    let durable = log.durability();
    // Entry 1 acknowledged to openraft early, its fsync not done.
    durable.note_early(1);
    let mut sm = StateMachine {
        shared: shared.clone(),
        durable: durable.clone(),
    };
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(Batch(vec![Request::Put(PutRequest {
            key: "k".into(),
            value: "v".into(),
            ..Default::default()
        })])),
    };
    let (tx, mut events) = tokio::sync::mpsc::channel(16);
    let lagged = Arc::new(crate::mvcc::hub::Lagged {
        slots: Default::default(),
        notify: Default::default(),
    });
    shared
        .hub
        .register("k".into(), "l".into(), 2, tx, lagged)
        .expect("a live slot");
    let apply = tokio::spawn(async move { sm.apply(vec![entry]).await });
    let redb_applied = || {
        let tx = shared.db().begin_read().unwrap();
        crate::mvcc::backend::read_meta(&tx.open_table(crate::mvcc::backend::KV).unwrap())
            .unwrap()
            .applied_index
    };
    lookout_testkit::wait_for("the redb commit", Duration::from_secs(10), || {
        let i = redb_applied();
        async move { (i == 1).then_some(()) }
    })
    .await;
    assert!(!apply.is_finished(), "no reply before the fsync");
    assert_eq!(shared.state.load().rev, 1, "nothing published yet");
    assert_eq!(shared.hub.rev(), 1);
    assert!(events.try_recv().is_err(), "no watch event yet");

    durable.set_synced(1);
    let replies = tokio::time::timeout(Duration::from_secs(10), apply)
        .await
        .expect("applied once synced")
        .unwrap()
        .unwrap();
    assert_eq!(replies[0].0[0].revision, 2);
    assert_eq!(shared.state.load().rev, 2);
    assert_eq!(events.try_recv().expect("the event").rev, 2);
    log.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_restores_vote_truncation_purge_and_entries() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut log = open(d.path(), 1);
        log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
        log.blocking_append(entries(1, 2, 0..100)).await.unwrap();
        // A new leader's log disagrees from 81 on.
        log.save_vote(&Vote::new_committed(2, 3)).await.unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(1, 2), 81))
            .await
            .unwrap();
        log.blocking_append(entries(2, 3, 81..90)).await.unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 2), 20))
            .await
            .unwrap();
        log.stop();
    }
    let mut log = open(d.path(), 1);
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 3))
    );
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(20));
    assert_eq!(
        st.last_log_id,
        Some(LogId::new(CommittedLeaderId::new(2, 3), 89))
    );
    let want: Vec<(u64, u64)> = (21..81)
        .map(|i| (1, i))
        .chain((81..90).map(|i| (2, i)))
        .collect();
    assert_eq!(indexes(&mut log).await, want);
    log.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_wal_redb_log_is_imported_once() {
    use redb::{Database, TableDefinition};
    const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
    const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
    let d = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(4, 2);
    let purged = LogId::new(CommittedLeaderId::new(1, 2), 9);
    {
        let db = Database::create(d.path().join("raft-log.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            for e in entries(4, 2, 10..30) {
                log.insert(e.log_id.index, bincode::serialize(&e).unwrap().as_slice())
                    .unwrap();
            }
            let mut meta = tx.open_table(META).unwrap();
            meta.insert("vote", bincode::serialize(&Some(vote)).unwrap().as_slice())
                .unwrap();
            meta.insert(
                "purged",
                bincode::serialize(&Some(purged)).unwrap().as_slice(),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    // A crash in an earlier import left a partial copy: ignored.
    std::fs::create_dir_all(d.path().join("raft-wal.import")).unwrap();
    for round in 0..2 {
        let mut log = open(d.path(), 1);
        assert!(!d.path().join("raft-log.redb").exists());
        assert!(!d.path().join("raft-wal.import").exists());
        assert_eq!(log.read_vote().await.unwrap(), Some(vote), "round {round}");
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(purged));
        assert_eq!(st.last_log_id.map(|l| l.index), Some(29));
        let want: Vec<(u64, u64)> = (10..30).map(|i| (4, i)).collect();
        assert_eq!(indexes(&mut log).await, want);
        log.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_dropped_on_open() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut log = open(d.path(), 1);
        log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
        log.blocking_append(entries(1, 2, 1..11)).await.unwrap();
        log.stop();
    }
    // Damage the last record's payload as a crash mid-write would.
    let seg = std::fs::read_dir(d.path().join("raft-wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[bytes[end] ^ 0xff], end as u64).unwrap();
    drop(f);
    let mut log = open(d.path(), 1);
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id.map(|l| l.index), Some(9));
    assert_eq!(log.durability().synced_index(), Some(9));
    // The log continues where the good part ends.
    log.blocking_append(entries(1, 2, 10..12)).await.unwrap();
    assert_eq!(indexes(&mut log).await.last(), Some(&(1, 11)));
    log.stop();
}
