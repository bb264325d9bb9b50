//! Maintenance and Cluster through the gateway with etcdctl: Status and
//! MemberList answer for the gateway; the rest reaches the store.

use lookout_testkit::{EtcdServer, etcdctl};

use crate::harness::*;

fn run(ep: &str, args: &[&str]) -> (i32, String, String) {
    let o = etcdctl(ep, args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_admin_commands_through_the_gateway() {
    let etcd = EtcdServer::start().await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let mut via = kv(&gw.endpoint).await;
    let rev = put(&mut via, "admin", "x").await;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    let (ep, eep, snap_s) = (
        gw.endpoint.clone(),
        etcd.endpoint.clone(),
        snap.display().to_string(),
    );
    let out = tokio::task::spawn_blocking(move || {
        [
            run(&ep, &["endpoint", "status", "-w", "json"]),
            run(&ep, &["member", "list", "-w", "json"]),
            run(&ep, &["endpoint", "hashkv", "-w", "json"]),
            run(&eep, &["endpoint", "hashkv", "-w", "json"]),
            run(&ep, &["alarm", "list"]),
            run(&ep, &["defrag"]),
            run(&ep, &["snapshot", "save", &snap_s]),
            run(&ep, &["endpoint", "health"]),
        ]
    })
    .await
    .unwrap();
    for (i, (code, out, err)) in out.iter().enumerate() {
        assert_eq!(*code, 0, "command {i}: {out}\n{err}");
    }
    let status: serde_json::Value = serde_json::from_str(out[0].1.trim()).unwrap();
    let st = &status[0]["Status"];
    assert_eq!(st["header"]["revision"], rev, "{st}");
    assert!(st["version"].as_str().unwrap().starts_with("3.4"), "{st}");
    assert!(st["leader"].as_u64().unwrap() != 0, "{st}");
    let members: serde_json::Value = serde_json::from_str(out[1].1.trim()).unwrap();
    let m = &members["members"];
    assert_eq!(m.as_array().unwrap().len(), 1, "{members}");
    assert_eq!(m[0]["clientURLs"][0], format!("http://{}", gw.endpoint));
    assert_eq!(m[0]["ID"], st["header"]["member_id"], "one identity");
    // HashKV is the store's own answer.
    let h = |s: &str| {
        let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        v[0]["HashKV"]["hash"].clone()
    };
    assert_eq!(h(&out[2].1), h(&out[3].1));
    assert!(out[5].1.contains("Finished defragmenting"), "{:?}", out[5]);
    assert!(
        std::fs::metadata(&snap).unwrap().len() > 0,
        "snapshot streamed through"
    );
    assert!(
        out[7].1.contains("is healthy") || out[7].2.contains("is healthy"),
        "{:?}",
        out[7]
    );
}
