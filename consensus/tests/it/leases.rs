//! Leases: grant rules, revoke and expiry in one revision, keep-alive,
//! fresh TTLs after a restart.

use std::time::Duration;

use lookout_proto::pb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use lookout_testkit::wait_for;

use crate::support::{Clients, TestServer, connect, get, prefix_end};

async fn grant(c: &mut Clients, ttl: i64) -> i64 {
    c.lease
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn put_lease(c: &mut Clients, key: &str, lease: i64) -> i64 {
    c.kv.put(PutRequest {
        key: key.to_string().into(),
        value: "v".into(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

async fn ttl(c: &mut Clients, id: i64) -> lookout_proto::pb::LeaseTimeToLiveResponse {
    c.lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn grant_rules_and_revoke_deletes_keys_in_one_revision() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    let r = c
        .lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ttl, 2, "etcd's minimum TTL");
    assert!(r.id > 0);
    let e = c
        .lease
        .lease_grant(LeaseGrantRequest { ttl: 10, id: r.id })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists"
        )
    );
    let e = c
        .lease
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::OutOfRange, "etcdserver: too large lease TTL")
    );

    let id = grant(&mut c, 60).await;
    put_lease(&mut c, "l/a", id).await;
    let rev = put_lease(&mut c, "l/b", id).await;
    let t = ttl(&mut c, id).await;
    assert_eq!(t.granted_ttl, 60);
    assert_eq!(
        t.keys,
        vec![bytes::Bytes::from("l/a"), bytes::Bytes::from("l/b")]
    );
    let leases = c
        .lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leases.leases.len(), 2);

    let r = c
        .lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.header.unwrap().revision,
        rev + 1,
        "both keys deleted in one revision"
    );
    let gone =
        c.kv.range(RangeRequest {
            key: "l/".into(),
            range_end: prefix_end("l/"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.count, 0);
    assert_eq!(ttl(&mut c, id).await.ttl, -1);
    let e = c
        .lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    let e =
        c.kv.put(PutRequest {
            key: "x".into(),
            lease: id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: requested lease not found");
}

#[tokio::test]
async fn expiry_revokes_and_keep_alive_renews() {
    let srv = TestServer::start_with(|c| c.min_lease_ttl = 1).await;
    let mut c = connect(&srv.endpoint).await;
    let short = grant(&mut c, 1).await;
    let kept = grant(&mut c, 2).await;
    put_lease(&mut c, "e/a", short).await;
    put_lease(&mut c, "e/b", short).await;
    let rev = put_lease(&mut c, "k/a", kept).await;

    // Keep `kept` alive over a stream while `short` expires.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = c
        .lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut cc = c.clone();
    wait_for("short lease to expire", Duration::from_secs(10), || {
        let (mut cc, tx) = (cc.clone(), tx.clone());
        async move {
            tx.send(LeaseKeepAliveRequest { id: kept }).await.ok()?;
            let r = cc.kv.range(get("e/b")).await.ok()?.into_inner();
            (r.count == 0).then_some(())
        }
    })
    .await;
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!((first.id, first.ttl), (kept, 2));
    let a = cc.kv.range(get("e/a")).await.unwrap().into_inner();
    assert_eq!(a.count, 0);
    assert_eq!(
        a.header.unwrap().revision,
        rev + 1,
        "expiry deletes all keys in one revision"
    );
    assert_eq!(
        cc.kv.range(get("k/a")).await.unwrap().into_inner().count,
        1,
        "kept alive"
    );
    // Unknown lease: TTL 0 on the keep-alive stream, as etcd.
    tx.send(LeaseKeepAliveRequest { id: short }).await.unwrap();
    loop {
        let r = responses.message().await.unwrap().unwrap();
        if r.id == short {
            assert_eq!(r.ttl, 0);
            break;
        }
    }
}

#[tokio::test]
async fn restart_gives_leases_a_fresh_ttl() {
    let srv = TestServer::start().await;
    let mut c = connect(&srv.endpoint).await;
    let id = grant(&mut c, 4).await;
    put_lease(&mut c, "r/a", id).await;
    wait_for("remaining TTL to drop", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { (ttl(&mut c, id).await.ttl <= 2).then_some(()) }
    })
    .await;
    let dir = srv.stop().await;
    let srv = TestServer::start_in(dir, |_| {}).await;
    let mut c = connect(&srv.endpoint).await;
    let t = ttl(&mut c, id).await;
    assert!(t.ttl >= 3, "fresh TTL after restart, got {}", t.ttl);
    assert_eq!(t.granted_ttl, 4);
    assert_eq!(
        t.keys,
        vec![bytes::Bytes::from("r/a")],
        "attachments rebuilt"
    );
}
