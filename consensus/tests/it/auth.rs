//! The store's auth over gRPC, for what an etcdctl script cannot show:
//! raw requests etcdctl never sends (nested txns, empty-key permissions,
//! forged and malformed tokens), the places we follow later etcd over
//! 3.4.23 (LeaseTimeToLive keys, from-key watches), and auth state that
//! survives a restart and a backup + restore.

use std::time::Duration;

use futures::StreamExt;
use lookout_consensus::auth::{AuthConfig, TokenKind, parse_auth_token};
use lookout_proto::authpb::{Permission, permission::Type as PermType};
use lookout_proto::pb::{
    self, AuthRoleGrantPermissionRequest, AuthUserAddRequest, AuthenticateRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest, auth_client::AuthClient, request_op,
    watch_request,
};
use tonic::transport::Channel;

use crate::support::{TestServer, connect, get, put};

/// An etcd client for one endpoint, sending `token` with every call.
#[derive(Clone)]
pub(crate) struct As {
    pub ch: Channel,
    pub token: Option<String>,
}

impl As {
    pub fn req<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("token", t.parse().unwrap());
        }
        r
    }

    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.ch.clone())
    }

    pub fn kv(&self) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(self.ch.clone())
    }
}

pub(crate) async fn channel(endpoint: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

pub(crate) async fn login(ch: &Channel, name: &str, password: &str) -> As {
    let token = AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    As {
        ch: ch.clone(),
        token: Some(token),
    }
}

pub(crate) fn perm(t: PermType, key: &str, end: &str) -> Option<Permission> {
    Some(Permission {
        perm_type: t as i32,
        key: key.to_string().into(),
        range_end: end.to_string().into(),
    })
}

async fn add_user(a: &As, name: &str, password: &str) {
    a.auth()
        .user_add(a.req(AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            options: None,
        }))
        .await
        .unwrap();
}

/// root (root role), alice (readwrite /app/), auth enabled; returns
/// (root, alice) clients.
pub(crate) async fn setup(endpoint: &str) -> (As, As) {
    let ch = channel(endpoint).await;
    let anon = As {
        ch: ch.clone(),
        token: None,
    };
    add_user(&anon, "root", "rootpw").await;
    add_user(&anon, "alice", "alicepw").await;
    let auth = anon.auth();
    auth.clone()
        .role_add(pb::AuthRoleAddRequest {
            name: "root".into(),
        })
        .await
        .unwrap();
    auth.clone()
        .role_add(pb::AuthRoleAddRequest { name: "app".into() })
        .await
        .unwrap();
    auth.clone()
        .role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: perm(PermType::Readwrite, "/app/", "/app0"),
        })
        .await
        .unwrap();
    for (user, role) in [("root", "root"), ("alice", "app")] {
        auth.clone()
            .user_grant_role(pb::AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            })
            .await
            .unwrap();
    }
    auth.clone()
        .auth_enable(pb::AuthEnableRequest {})
        .await
        .unwrap();
    let root = login(&ch, "root", "rootpw").await;
    let alice = login(&ch, "alice", "alicepw").await;
    (root, alice)
}

fn fast(cfg: &mut lookout_consensus::StoreConfig) {
    cfg.auth.bcrypt_cost = 4;
}

pub(crate) fn code_msg(s: tonic::Status) -> (tonic::Code, String) {
    (s.code(), s.message().to_string())
}

pub(crate) fn denied() -> (tonic::Code, String) {
    (
        tonic::Code::PermissionDenied,
        "etcdserver: permission denied".into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_txn_operations_are_checked_like_top_level_ones() {
    let s = TestServer::start_with(fast).await;
    let (root, alice) = setup(&s.endpoint).await;
    root.kv()
        .put(root.req(put("/secret/x", "v")))
        .await
        .unwrap();
    let nested = |op: request_op::Request| TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![RequestOp { request: Some(op) }],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let write = nested(request_op::Request::RequestPut(put("/secret/x", "mine")));
    let e = alice.kv().txn(alice.req(write)).await.unwrap_err();
    assert_eq!(code_msg(e), denied());
    let read = nested(request_op::Request::RequestRange(get("/secret/x")));
    let e = alice.kv().txn(alice.req(read)).await.unwrap_err();
    assert_eq!(code_msg(e), denied());
    let ok = nested(request_op::Request::RequestPut(put("/app/x", "1")));
    assert!(
        alice
            .kv()
            .txn(alice.req(ok))
            .await
            .unwrap()
            .into_inner()
            .succeeded
    );
    let v = root.kv().range(root.req(get("/secret/x"))).await.unwrap();
    assert_eq!(v.into_inner().kvs[0].value.as_ref(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keys_and_from_key_watches_need_read_on_every_key() {
    let s = TestServer::start_with(fast).await;
    let (root, alice) = setup(&s.endpoint).await;
    let mut lease = pb::lease_client::LeaseClient::new(root.ch.clone());
    let id = lease
        .lease_grant(root.req(pb::LeaseGrantRequest { ttl: 60, id: 0 }))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut p = put("/secret/l", "v");
    p.lease = id;
    root.kv().put(root.req(p)).await.unwrap();
    let ttl = |keys| pb::LeaseTimeToLiveRequest { id, keys };
    let e = lease
        .lease_time_to_live(alice.req(ttl(true)))
        .await
        .unwrap_err();
    assert_eq!(code_msg(e), denied());
    // Without keys it stays open, as in etcd.
    assert!(
        lease
            .lease_time_to_live(alice.req(ttl(false)))
            .await
            .is_ok()
    );
    let r = lease
        .lease_time_to_live(root.req(ttl(true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.keys.len(), 1);
    let e = lease
        .lease_revoke(alice.req(pb::LeaseRevokeRequest { id }))
        .await
        .unwrap_err();
    assert_eq!(code_msg(e), denied());

    // A watch from /app/ to the end covers more than alice may read.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = |key: &str, end: &[u8]| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: key.to_string().into(),
                range_end: end.to_vec().into(),
                ..Default::default()
            },
        )),
    };
    tx.send(create("/app/", b"\0")).await.unwrap();
    tx.send(create("/app/", b"/app0")).await.unwrap();
    let mut w = pb::watch_client::WatchClient::new(alice.ch.clone());
    let mut stream = w
        .watch(alice.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.created && first.canceled, "{first:?}");
    assert_eq!(first.watch_id, -1);
    assert_eq!(
        first.cancel_reason,
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    let second = stream.next().await.unwrap().unwrap();
    assert!(second.created && !second.canceled, "{second:?}");
}

/// Lease expiry goes on with auth on: the store revokes as root (etcd's
/// WithRoot), so keys the anonymous caller could never delete still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_with_auth_on() {
    let s = TestServer::start_with(|c| {
        fast(c);
        c.min_lease_ttl = 1;
    })
    .await;
    let (root, alice) = setup(&s.endpoint).await;
    let mut lease = pb::lease_client::LeaseClient::new(alice.ch.clone());
    let id = lease
        .lease_grant(alice.req(pb::LeaseGrantRequest { ttl: 1, id: 0 }))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut p = put("/app/ephemeral", "v");
    p.lease = id;
    alice.kv().put(alice.req(p)).await.unwrap();
    let kv = root.kv();
    lookout_testkit::wait_for("lease expiry", Duration::from_secs(10), || {
        let (mut kv, r) = (kv.clone(), root.req(get("/app/ephemeral")));
        async move {
            kv.range(r)
                .await
                .ok()?
                .into_inner()
                .kvs
                .is_empty()
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grants_and_bad_tokens_get_etcds_errors() {
    let s = TestServer::start_with(fast).await;
    let (root, _alice) = setup(&s.endpoint).await;
    let grant = |p| AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: p,
    };
    for p in [
        perm(PermType::Read, "", ""),
        perm(PermType::Read, "b", "a"),
        perm(PermType::Read, "", "\0"),
    ] {
        let e = root
            .auth()
            .role_grant_permission(root.req(grant(p)))
            .await
            .unwrap_err();
        assert_eq!(
            code_msg(e),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: invalid auth management".into()
            )
        );
    }
    let e = root
        .auth()
        .role_grant_permission(root.req(grant(None)))
        .await
        .unwrap_err();
    assert_eq!(
        code_msg(e),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: permission not given".into()
        )
    );
    let invalid = (
        tonic::Code::Unauthenticated,
        "etcdserver: invalid auth token".to_string(),
    );
    for t in [
        "garbage",
        "abcdefghijklmnop.1",
        "abcdefghijklmnop.999999999",
        "a.b.c",
        "",
    ] {
        let bad = As {
            ch: root.ch.clone(),
            token: Some(t.to_string()),
        };
        let start = std::time::Instant::now();
        let e = bad.kv().range(bad.req(get("/app/a"))).await.unwrap_err();
        assert_eq!(code_msg(e), invalid, "token {t:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "token {t:?} was slow"
        );
    }
    let e = AuthClient::new(root.ch.clone())
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_msg(e),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".into()
        )
    );
}

/// A JWT store: tokens signed by another key, expired or tampered with are
/// refused; a JWT from the same key verifies on another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_verify_anywhere_with_the_key_and_nowhere_else() {
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("secret");
    std::fs::write(&secret, b"shared secret").unwrap();
    let other = keys.path().join("other");
    std::fs::write(&other, b"another secret").unwrap();
    let jwt = |f: &std::path::Path, ttl: &str| {
        parse_auth_token(&format!(
            "jwt,sign-method=HS256,priv-key={},ttl={ttl}",
            f.display()
        ))
        .unwrap()
    };
    let with = |kind: TokenKind| {
        move |cfg: &mut lookout_consensus::StoreConfig| {
            cfg.auth = AuthConfig {
                token: kind,
                bcrypt_cost: 4,
                ..Default::default()
            }
        }
    };
    let a = TestServer::start_with(with(jwt(&secret, "5m"))).await;
    let (root, alice) = setup(&a.endpoint).await;
    root.kv().put(root.req(put("/app/a", "1"))).await.unwrap();
    assert!(alice.token.as_ref().unwrap().split('.').count() == 3);

    // Same key elsewhere (a second store): the token verifies there.
    let b = TestServer::start_with(with(jwt(&secret, "5m"))).await;
    let (_root_b, _) = setup(&b.endpoint).await;
    let on_b = As {
        ch: channel(&b.endpoint).await,
        token: alice.token.clone(),
    };
    let r = on_b.kv().range(on_b.req(get("/app/a"))).await;
    assert!(r.is_ok(), "{r:?}");

    // Another key: refused.
    let c = TestServer::start_with(with(jwt(&other, "5m"))).await;
    let (_root_c, _) = setup(&c.endpoint).await;
    let on_c = As {
        ch: channel(&c.endpoint).await,
        token: alice.token.clone(),
    };
    let e = on_c.kv().range(on_c.req(get("/app/a"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // Expired: a 1 s token, used after it ran out.
    let d = TestServer::start_with(with(jwt(&secret, "1s"))).await;
    let (_root_d, alice_d) = setup(&d.endpoint).await;
    assert!(alice_d.kv().range(alice_d.req(get("/app/a"))).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = alice_d
        .kv()
        .range(alice_d.req(get("/app/a")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // An auth change makes older tokens old, as etcd's revision check.
    root.auth()
        .role_add(root.req(pb::AuthRoleAddRequest { name: "x".into() }))
        .await
        .unwrap();
    let e = alice
        .kv()
        .range(alice.req(get("/app/a")))
        .await
        .unwrap_err();
    assert_eq!(
        code_msg(e),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: revision of auth store is old".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_restart_and_backup_restore() {
    let s = TestServer::start_with(fast).await;
    let (root, alice) = setup(&s.endpoint).await;
    alice.kv().put(alice.req(put("/app/a", "1"))).await.unwrap();
    // A backup, taken as root.
    let mut m = connect(&s.endpoint).await.maint;
    let mut stream = m
        .snapshot(root.req(pb::SnapshotRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap().blob);
    }
    // Alice may not take one.
    let e = m.snapshot(alice.req(pb::SnapshotRequest {})).await;
    let e = match e {
        Err(e) => e,
        Ok(r) => r.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(
        code_msg(e),
        (tonic::Code::Unknown, "auth: permission denied".into())
    );
    let backup = tempfile::tempdir().unwrap();
    let file = backup.path().join("snap.db");
    std::fs::write(&file, &bytes).unwrap();

    let check = |endpoint: String| async move {
        let ch = channel(&endpoint).await;
        let anon = As {
            ch: ch.clone(),
            token: None,
        };
        let e = anon.kv().range(anon.req(get("/app/a"))).await.unwrap_err();
        assert_eq!(
            code_msg(e),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: user name is empty".into()
            )
        );
        let alice = login(&ch, "alice", "alicepw").await;
        let r = alice.kv().range(alice.req(get("/app/a"))).await.unwrap();
        assert_eq!(r.into_inner().kvs[0].value.as_ref(), b"1");
        let e = alice
            .kv()
            .put(alice.req(put("/other", "x")))
            .await
            .unwrap_err();
        assert_eq!(code_msg(e), denied());
    };

    // Restart on the same data.
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, fast).await;
    check(s.endpoint.clone()).await;

    // Restore into a new data dir.
    let restored = tempfile::tempdir().unwrap();
    lookout_consensus::snapshot_stream::restore(&file, &restored.path().join("data")).unwrap();
    let r = TestServer::start_in(restored, fast).await;
    check(r.endpoint.clone()).await;
}

/// Three `lookout store` processes: a simple token issued through one
/// member works on the others; a follower forwards a client's write with
/// its identity, so the leader's apply checks the same user; a member
/// that catches up by raft snapshot gets the users, roles and permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_members_share_tokens_forward_identities_and_snapshot_auth() {
    use lookout_testkit::cluster::{Cluster, status};
    let mut c = Cluster::start(
        crate::cluster::program(),
        3,
        &[
            "--bcrypt-cost=4",
            "--snapshot-count=40",
            "--experimental-snapshot-catchup-entries=5",
        ],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let eps = c.endpoints();
    let ep = |i: usize| eps[i].clone();
    let (root, _) = setup(&ep(f1)).await;
    // Issued through follower f1, used on follower f2 and the leader.
    let alice = login(&channel(&ep(f1)).await, "alice", "alicepw").await;
    for i in [f2, leader] {
        let on = As {
            ch: channel(&ep(i)).await,
            token: alice.token.clone(),
        };
        on.kv().put(on.req(put("/app/a", "1"))).await.unwrap();
        let e = on.kv().put(on.req(put("/secret", "x"))).await.unwrap_err();
        assert_eq!(code_msg(e), denied(), "member {i}");
        let r = on.kv().range(on.req(get("/app/a"))).await.unwrap();
        assert_eq!(r.into_inner().kvs.len(), 1);
    }

    // f2 misses auth changes and enough writes for a snapshot.
    c.kill9(f2);
    let root_l = As {
        ch: channel(&ep(leader)).await,
        token: root.token.clone(),
    };
    root_l
        .auth()
        .role_grant_permission(root_l.req(AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: perm(PermType::Readwrite, "/snap/", "/snap0"),
        }))
        .await
        .unwrap();
    add_user(&root_l, "bob", "bobpw").await;
    // Sequential writes are one log entry each; the leader purges its log
    // in batches of 256 entries past its snapshot.
    for i in 0..600 {
        root_l
            .kv()
            .put(root_l.req(put(&format!("/snap/{i}"), "v")))
            .await
            .unwrap();
    }
    let want = status(&ep(leader)).await.unwrap().header.unwrap().revision;
    c.restart(f2).await;
    let e2 = ep(f2);
    lookout_testkit::wait_for("f2 caught up", Duration::from_secs(30), || {
        let e2 = e2.clone();
        async move {
            let r = status(&e2).await?.header?.revision;
            (r >= want).then_some(())
        }
    })
    .await;
    let log = c.members[f2].log_text();
    assert!(
        log.contains("installed snapshot"),
        "f2 caught up without a snapshot:\n{log}"
    );
    // f2 checks bob's password and alice's new permission from the
    // snapshot's auth state.
    let ch2 = channel(&e2).await;
    let _bob = login(&ch2, "bob", "bobpw").await;
    let alice2 = login(&ch2, "alice", "alicepw").await;
    let mut r = get("/snap/1");
    r.serializable = true;
    let r = alice2.kv().range(alice2.req(r)).await.unwrap();
    assert_eq!(r.into_inner().kvs.len(), 1);
    let e = alice2
        .kv()
        .range(alice2.req(get("/secret")))
        .await
        .unwrap_err();
    assert_eq!(code_msg(e), denied());
}
