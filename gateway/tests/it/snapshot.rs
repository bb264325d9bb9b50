//! `etcdctl snapshot save` against `lookout store`, then `lookout snapshot
//! restore` into a new member: the restored member holds exactly the same
//! keys, revisions and hash.

use std::process::Command;

use lookout_proto::pb::{HashKvRequest, RangeRequest, maintenance_client::MaintenanceClient};

use crate::harness::{channel, kv, put};
use crate::support::{lookout_bin, start_store};

async fn everything(endpoint: &str) -> (i64, Vec<lookout_proto::mvccpb::KeyValue>) {
    let r = kv(endpoint)
        .await
        .range(RangeRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.header.unwrap().revision, r.kvs)
}

async fn hash_kv(endpoint: &str, revision: i64) -> (u32, i64) {
    let r = MaintenanceClient::new(channel(endpoint).await)
        .hash_kv(HashKvRequest { revision })
        .await
        .unwrap()
        .into_inner();
    (r.hash, r.compact_revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_with_etcdctl_then_restore_a_member() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    let store = start_store(&dir.path().join("a"), None).await;
    let mut c = kv(&store.endpoint).await;
    for i in 0..300 {
        put(
            &mut c,
            &format!("/snap/{:04}", i % 120),
            &"x".repeat(i % 700),
        )
        .await;
    }
    let del = lookout_testkit::etcdctl(&store.endpoint, &["del", "/snap/0007"]);
    assert!(del.status.success());
    let compact = lookout_testkit::etcdctl(&store.endpoint, &["compact", "100"]);
    assert!(compact.status.success(), "{compact:?}");
    let (rev, kvs) = everything(&store.endpoint).await;
    let hash = hash_kv(&store.endpoint, rev).await;

    let file = dir.path().join("backup.db");
    let save = lookout_testkit::etcdctl(
        &store.endpoint,
        &["snapshot", "save", file.to_str().unwrap()],
    );
    let out =
        String::from_utf8_lossy(&save.stdout).to_string() + &String::from_utf8_lossy(&save.stderr);
    assert!(save.status.success(), "{out}");
    assert!(out.contains("Snapshot saved at"), "{out}");

    // A truncated copy is refused by its sha256.
    let bytes = std::fs::read(&file).unwrap();
    let bad = dir.path().join("truncated.db");
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    let r = Command::new(lookout_bin())
        .args(["snapshot", "restore", bad.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("bad-member"))
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("sha256 mismatch"));

    let restored_dir = dir.path().join("b");
    std::fs::create_dir_all(&restored_dir).unwrap();
    let r = Command::new(lookout_bin())
        .args(["snapshot", "restore", file.to_str().unwrap(), "--data-dir"])
        .arg(restored_dir.join("data"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    // Restoring over existing data is refused.
    let again = Command::new(lookout_bin())
        .args(["snapshot", "restore", file.to_str().unwrap(), "--data-dir"])
        .arg(restored_dir.join("data"))
        .output()
        .unwrap();
    assert!(!again.status.success());

    let restored = start_store(&restored_dir, None).await;
    let (rev2, kvs2) = everything(&restored.endpoint).await;
    assert_eq!(rev2, rev, "same revision");
    assert_eq!(kvs2, kvs, "same keys, values and revisions");
    assert_eq!(hash_kv(&restored.endpoint, rev).await, hash);
    // The restored member is a working store: it takes writes after it.
    let mut c2 = kv(&restored.endpoint).await;
    assert_eq!(put(&mut c2, "/after", "1").await, rev + 1);
    // History below the compaction is gone there too.
    let old = lookout_testkit::etcdctl(&restored.endpoint, &["get", "/snap/0001", "--rev=50"]);
    assert!(!old.status.success());
}
