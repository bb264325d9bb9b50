//! etcd's auth through gateways: reads and watches served from the cache
//! are checked against the gateway's copy of the store's users and roles,
//! tokens move between gateways, every HTTP path takes the same
//! credentials, a revoked permission reaches a gateway within about a
//! second, `--auth-config` covers every RPC, bad tokens get etcd's errors,
//! Lock is checked as the client's own KV calls, and `lookout dev` keeps
//! working with auth on.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{ConnectOptions, Permission};
use lookout_cache::UpstreamCredentials;
use lookout_proto::pb::{
    AlarmRequest, AuthenticateRequest, DefragmentRequest, LeaseGrantRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, MemberListRequest, PutRequest, RangeRequest, StatusRequest,
    WatchCreateRequest, WatchRequest, auth_client::AuthClient, cluster_client::ClusterClient,
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient, watch_request,
};
use lookout_testkit::EtcdServer;
use lookout_testkit::etcd::EtcdOptions;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::harness::*;
use crate::http_client::{Lines, call};
use crate::support::start_store_with;

/// Puts etcd's `token` metadata on every call.
#[derive(Debug, Clone)]
struct Tok(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Tok {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut().insert("token", t.clone());
        }
        Ok(r)
    }
}

type Authed = InterceptedService<Channel, Tok>;

async fn as_token(endpoint: &str, token: Option<&str>) -> Authed {
    let t = token.map(|t| AsciiMetadataValue::try_from(t).expect("ascii token"));
    InterceptedService::new(channel(endpoint).await, Tok(t))
}

async fn authenticate(endpoint: &str, name: &str, password: &str) -> Result<String, tonic::Status> {
    AuthClient::new(channel(endpoint).await)
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().token)
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        ..Default::default()
    }
}

/// Users and roles, as on etcd: root (rootpw), alice (alicepw) with
/// readwrite on /app/, bob (bobpw) with no role; a key in /app/ and one in
/// /secret/; then auth on.
async fn set_up_auth(endpoint: &str) {
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect");
    c.put("/app/a", "1", None).await.unwrap();
    c.put("/secret/x", "hidden", None).await.unwrap();
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.role_add("app").await.unwrap();
    c.role_grant_permission("app", Permission::read_write("/app/").with_prefix())
        .await
        .unwrap();
    c.user_add("alice", "alicepw", None).await.unwrap();
    c.user_grant_role("alice", "app").await.unwrap();
    c.user_add("bob", "bobpw", None).await.unwrap();
    c.auth_enable().await.unwrap();
}

async fn root_client(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect(
        [endpoint],
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .expect("root connects")
}

/// A gateway in this process in front of `endpoint`, logged in as root.
async fn gateway_as_root(endpoint: &str) -> TestGateway {
    let mut cfg = config(&[endpoint]);
    cfg.upstream.credentials = Some(UpstreamCredentials::Password {
        user: "root".into(),
        password: "rootpw".into(),
    });
    TestGateway::start_with(cfg).await
}

async fn store(dir: &Path, extra: &[&str]) -> lookout_testkit::LookoutProcess {
    let mut flags = vec!["--bcrypt-cost=4"];
    flags.extend_from_slice(extra);
    start_store_with(dir, None, &flags).await
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, msg: &str) {
    let s = r.expect_err("refused");
    assert_eq!((s.code(), s.message()), (code, msg), "{s:?}");
}

/// One watch stream as `token`: creates `key` prefix watch `id`, answers
/// the first response for it.
async fn first_watch_answer(
    endpoint: &str,
    token: &str,
    prefix: &str,
) -> (
    lookout_proto::pb::WatchResponse,
    tonic::Streaming<lookout_proto::pb::WatchResponse>,
    tokio::sync::mpsc::Sender<WatchRequest>,
) {
    let mut w = WatchClient::new(as_token(endpoint, Some(token)).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(prefix_watch(
            prefix, 0,
        ))),
    })
    .await
    .unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch opens")
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("answer in time")
        .expect("stream")
        .expect("a response");
    (first, stream, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_on_every_gateway_and_dies_with_a_password_change() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &[]).await;
    set_up_auth(&s.endpoint).await;
    let (g1, g2) = (
        gateway_as_root(&s.endpoint).await,
        gateway_as_root(&s.endpoint).await,
    );
    // Issued through one gateway, used on the other (which asks the store
    // about it once), and one issued by the store itself.
    let t = authenticate(&g1.endpoint, "alice", "alicepw")
        .await
        .unwrap();
    let from_store = authenticate(&s.endpoint, "alice", "alicepw").await.unwrap();
    for (gw, tok) in [(&g2, &t), (&g1, &from_store)] {
        let mut kv = KvClient::new(as_token(&gw.endpoint, Some(tok)).await);
        let r = kv.range(get("/app/a")).await.expect("alice reads /app/");
        assert_eq!(r.into_inner().kvs.len(), 1);
        assert_status(
            kv.range(get("/secret/x")).await,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        );
    }
    // Watches: refused outside the role, events inside it.
    let (refused, _s1, _t1) = first_watch_answer(&g2.endpoint, &t, "/secret/").await;
    assert!(refused.canceled && refused.created, "{refused:?}");
    assert_eq!(
        refused.cancel_reason,
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    let (created, mut events, _t2) = first_watch_answer(&g2.endpoint, &t, "/app/").await;
    assert!(created.created && !created.canceled, "{created:?}");
    let mut kv1 = KvClient::new(as_token(&g1.endpoint, Some(&t)).await);
    kv1.put(PutRequest {
        key: b("/app/w"),
        value: b("1"),
        ..Default::default()
    })
    .await
    .expect("alice writes /app/ through the first gateway");
    let ev = tokio::time::timeout(WAIT, events.message())
        .await
        .expect("event in time")
        .unwrap()
        .unwrap();
    assert_eq!(&ev.events[0].kv.as_ref().unwrap().key[..], b"/app/w");
    // A write outside the role is refused by the store (the token travels).
    assert_status(
        kv1.put(PutRequest {
            key: b("/secret/y"),
            value: b("1"),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    // A password changed at the store directly: the token dies there, and
    // the second gateway refuses it within about a second.
    root_client(&s.endpoint)
        .await
        .user_change_password("alice", "other")
        .await
        .unwrap();
    let started = Instant::now();
    let refused_after = lookout_testkit::wait_for("the old token refused", WAIT, || {
        let ep = g2.endpoint.clone();
        let t = t.clone();
        async move {
            let mut kv = KvClient::new(as_token(&ep, Some(&t)).await);
            match kv.range(get("/app/a")).await {
                Err(s) if s.code() == Code::Unauthenticated => Some(started.elapsed()),
                _ => None,
            }
        }
    })
    .await;
    assert!(refused_after < Duration::from_secs(3), "{refused_after:?}");
    let mut kv = KvClient::new(as_token(&g2.endpoint, Some("not-a-token")).await);
    assert_status(
        kv.range(get("/app/a")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_paths_take_the_same_credentials_on_the_store_and_the_gateway() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &[]).await;
    set_up_auth(&s.endpoint).await;
    let gw = gateway_as_root(&s.endpoint).await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let basic = format!("Basic {}", b64("alice:alicepw"));
    let wrong = format!("Basic {}", b64("alice:nope"));
    for addr in [s.endpoint.as_str(), gw.endpoint.as_str()] {
        let t = authenticate(addr, "alice", "alicepw").await.unwrap();
        let auth = [("authorization", t.as_str())];
        let range = |k: &str| format!(r#"{{"key":"{}"}}"#, b64(k));
        // /v3: the Authorization header is the token, as grpc-gateway has it.
        let r = call(addr, "POST", "/v3/kv/range", &auth, range("/app/a")).await;
        assert_eq!(r.status, 200, "{addr}: {}", r.text());
        assert_eq!(r.json()["kvs"][0]["value"], b64("1"));
        let r = call(addr, "POST", "/v3/kv/range", &auth, range("/secret/x")).await;
        assert_eq!(
            (r.status, r.json()["code"].as_i64()),
            (403, Some(7)),
            "{addr}"
        );
        let r = call(addr, "POST", "/v3/kv/range", &[], range("/app/a")).await;
        assert_eq!(
            r.json()["error"],
            "etcdserver: user name is empty",
            "{addr}"
        );
        // /v3/watch: each create checked as the request's sender.
        let create = |k: &str| {
            format!(
                r#"{{"create_request":{{"key":"{}","range_end":"{}"}}}}"#,
                b64(k),
                b64(&format!("{}0", k.trim_end_matches('/')))
            )
        };
        let mut w = Lines::open(addr, "POST", "/v3/watch", &auth, create("/secret/")).await;
        let first = w.next_json().await;
        assert_eq!(
            first["result"]["cancel_reason"],
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
            "{addr}: {first}"
        );
        let mut w = Lines::open(addr, "POST", "/v3/watch", &auth, create("/app/")).await;
        assert_eq!(w.next_json().await["result"]["created"], true, "{addr}");
        // /v1: a bearer token or a Basic login.
        let bearer = format!("Bearer {t}");
        let r = call(
            addr,
            "GET",
            "/v1/kv//app/a",
            &[("authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!((r.status, r.text().as_str()), (200, "1"), "{addr}");
        let r = call(
            addr,
            "GET",
            "/v1/kv//app/a",
            &[("authorization", &basic)],
            "",
        )
        .await;
        assert_eq!((r.status, r.text().as_str()), (200, "1"), "{addr}");
        let r = call(
            addr,
            "GET",
            "/v1/kv//secret/x",
            &[("authorization", &basic)],
            "",
        )
        .await;
        assert_eq!(r.status, 403, "{addr}: {}", r.text());
        let r = call(
            addr,
            "GET",
            "/v1/kv//app/a",
            &[("authorization", &wrong)],
            "",
        )
        .await;
        assert_eq!(
            r.json()["error"],
            "etcdserver: authentication failed, invalid user ID or password",
            "{addr}"
        );
        let r = call(addr, "GET", "/v1/kv//app/a", &[], "").await;
        assert_eq!(
            r.json()["error"],
            "etcdserver: user name is empty",
            "{addr}"
        );
        let mut v1 = Lines::open(
            addr,
            "GET",
            "/v1/watch//app/?prefix=true",
            &[("authorization", &basic)],
            "",
        )
        .await;
        assert_eq!(v1.next_json().await["type"], "CREATED", "{addr}");
        let r = call(
            addr,
            "PUT",
            &format!("/v1/kv//app/from-{}", addr.replace(':', "-")),
            &[("authorization", &basic)],
            "v",
        )
        .await;
        assert_eq!(r.status, 200, "{addr}: {}", r.text());
        let ev = v1.next_json().await;
        assert_eq!(ev["type"], "PUT", "{addr}: {ev}");
        let ev = w.next_json().await;
        assert!(ev["result"]["events"].is_array(), "{addr}: {ev}");
    }
}

/// Revokes alice's permission on the store directly and measures how long
/// until the gateway refuses her next read from its cache.
async fn revoke_reaches_the_gateway(store_endpoint: &str, gw: &TestGateway) -> Duration {
    let t = authenticate(&gw.endpoint, "alice", "alicepw")
        .await
        .unwrap();
    let mut kv = KvClient::new(as_token(&gw.endpoint, Some(&t)).await);
    kv.range(get("/app/a")).await.expect("allowed before");
    root_client(store_endpoint)
        .await
        .role_revoke_permission(
            "app",
            "/app/",
            Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let revoked = Instant::now();
    let deadline = revoked + WAIT;
    loop {
        match kv.range(get("/app/a")).await {
            Err(s) if s.code() == Code::PermissionDenied => return revoked.elapsed(),
            // A JWT issued before the change: etcd's "old revision".
            Err(s) if s.message() == "etcdserver: revision of auth store is old" => {
                return revoked.elapsed();
            }
            Ok(_) => {}
            Err(s) => panic!("unexpected {s:?}"),
        }
        assert!(Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_permission_reaches_a_gateway_over_the_store_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &[]).await;
    set_up_auth(&s.endpoint).await;
    let gw = gateway_as_root(&s.endpoint).await;
    let took = revoke_reaches_the_gateway(&s.endpoint, &gw).await;
    eprintln!("revoke -> refusal through a gateway over lookout store: {took:?}");
    // The refresh interval is 500 ms; a second is the goal, two the bound
    // a busy CI machine gets.
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_permission_reaches_a_gateway_over_etcd_within_a_second() {
    let etcd = EtcdServer::start_with(EtcdOptions {
        extra_args: vec!["--bcrypt-cost=4".into()],
    })
    .await;
    set_up_auth(&etcd.endpoint).await;
    let gw = gateway_as_root(&etcd.endpoint).await;
    let took = revoke_reaches_the_gateway(&etcd.endpoint, &gw).await;
    eprintln!("revoke -> refusal through a gateway over etcd 3.4: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A simple token etcd issued through one gateway is unknown to another
    // (etcd cannot say whose it is): "invalid auth token", and a client
    // that logs in there again is served.
    let g2 = gateway_as_root(&etcd.endpoint).await;
    let t = authenticate(&gw.endpoint, "alice", "alicepw")
        .await
        .unwrap();
    let mut kv = KvClient::new(as_token(&g2.endpoint, Some(&t)).await);
    assert_status(
        kv.range(get("/other")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    let t2 = authenticate(&g2.endpoint, "alice", "alicepw")
        .await
        .unwrap();
    let mut kv = KvClient::new(as_token(&g2.endpoint, Some(&t2)).await);
    assert_status(
        kv.range(get("/app/a")).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_config_covers_every_rpc() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.yaml");
    std::fs::write(
        &file,
        "roles:\n  - name: alice\n    permissions:\n      - {type: readwrite, prefix: /alice/}\nclients:\n  - token: alice-token\n    roles: [alice]\n  - token: root-token\n    admin: true\n",
    )
    .unwrap();
    let mut cfg = config(&[&etcd.endpoint]);
    cfg.auth_config = Some(file);
    let gw = TestGateway::start_with(cfg).await;
    let ep = &gw.endpoint;
    let mut alice = LeaseClient::new(as_token(ep, Some("alice-token")).await);
    let mut root_kv = KvClient::new(as_token(ep, Some("root-token")).await);
    let mut alice_kv = KvClient::new(as_token(ep, Some("alice-token")).await);
    let lease = alice
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let put = |k: &str| PutRequest {
        key: b(k),
        value: b("v"),
        lease,
        ..Default::default()
    };
    alice_kv.put(put("/alice/x")).await.unwrap();
    root_kv.put(put("/other/y")).await.unwrap();
    // A key of hers on a lease with someone else's: she may neither attach
    // another key to it nor revoke it, nor list its keys.
    assert_status(
        alice_kv.put(put("/alice/z")).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    assert_status(
        alice.lease_revoke(LeaseRevokeRequest { id: lease }).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    assert_status(
        alice
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: lease,
                keys: true,
            })
            .await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    let ttl = alice
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ttl.ttl > 0 && ttl.keys.is_empty());
    // Nameless: refused on every call, Alarm, Status and MemberList too.
    let empty = "etcdserver: user name is empty";
    let mut m = MaintenanceClient::new(as_token(ep, None).await);
    assert_status(
        m.alarm(AlarmRequest::default()).await,
        Code::InvalidArgument,
        empty,
    );
    assert_status(
        m.status(StatusRequest {}).await,
        Code::InvalidArgument,
        empty,
    );
    let mut c = ClusterClient::new(as_token(ep, None).await);
    assert_status(
        c.member_list(MemberListRequest::default()).await,
        Code::InvalidArgument,
        empty,
    );
    let mut nobody = LeaseClient::new(as_token(ep, None).await);
    assert_status(
        nobody
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await,
        Code::InvalidArgument,
        empty,
    );
    // Named: Status and MemberList as etcd answers them; admin calls as
    // etcd refuses them (code Unknown, the auth store's own text).
    let mut am = MaintenanceClient::new(as_token(ep, Some("alice-token")).await);
    am.status(StatusRequest {}).await.expect("status");
    am.alarm(AlarmRequest::default()).await.expect("alarm");
    assert_status(
        am.defragment(DefragmentRequest {}).await,
        Code::Unknown,
        "auth: permission denied",
    );
    MaintenanceClient::new(as_token(ep, Some("root-token")).await)
        .defragment(DefragmentRequest {})
        .await
        .expect("root defragments");
    // The root token revokes the lease: both keys go.
    LeaseClient::new(as_token(ep, Some("root-token")).await)
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .expect("root revokes");
    let left = root_kv
        .range(RangeRequest {
            key: b("/"),
            range_end: b("0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.kvs.is_empty(), "{left:?}");
}

/// HS256 keys: the store signs with `secret`, the gateway verifies with it.
fn hs256(dir: &Path, name: &str, secret: &[u8], ttl: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, secret).unwrap();
    format!(
        "--auth-token=jwt,sign-method=HS256,priv-key={},ttl={ttl}",
        p.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_passwords_get_etcds_errors() {
    let dir = tempfile::tempdir().unwrap();
    let flag = hs256(dir.path(), "key", b"the store's secret", "2s");
    let s = store(dir.path(), &[&flag]).await;
    set_up_auth(&s.endpoint).await;
    let mut cfg = config(&[&s.endpoint]);
    cfg.upstream.credentials = Some(UpstreamCredentials::Password {
        user: "root".into(),
        password: "rootpw".into(),
    });
    let jwt = flag.strip_prefix("--auth-token=").unwrap();
    let lookout_consensus::auth::TokenKind::Jwt(j) =
        lookout_consensus::auth::parse_auth_token(jwt).unwrap()
    else {
        panic!("jwt")
    };
    cfg.auth_jwt = Some(*j);
    let gw = TestGateway::start_with(cfg).await;
    let ep = &gw.endpoint;
    // Signed by another key (a second store with another secret).
    let other_dir = tempfile::tempdir().unwrap();
    let other_flag = hs256(other_dir.path(), "key", b"another secret", "5m");
    let other = store(other_dir.path(), &[&other_flag]).await;
    set_up_auth(&other.endpoint).await;
    let foreign = authenticate(&other.endpoint, "alice", "alicepw")
        .await
        .unwrap();
    let good = authenticate(ep, "alice", "alicepw").await.unwrap();
    let mut kv = KvClient::new(as_token(ep, Some(&good)).await);
    kv.range(get("/app/a")).await.expect("a good JWT");
    for bad in [
        foreign.as_str(),
        "a.b.c",
        "e30.e30.e30",
        "not-a-token",
        "x",
        "abcdefghijklmnop.18446744073709551615",
    ] {
        let mut kv = KvClient::new(as_token(ep, Some(bad)).await);
        assert_status(
            kv.range(get("/app/a")).await,
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
        );
    }
    // Expired (ttl 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_status(
        kv.range(get("/app/a")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    let failed = "etcdserver: authentication failed, invalid user ID or password";
    assert_status(
        authenticate(ep, "alice", "wrong").await,
        Code::InvalidArgument,
        failed,
    );
    assert_status(
        authenticate(ep, "nobody", "x").await,
        Code::InvalidArgument,
        failed,
    );
    // A permission on an empty key: etcd's refusal, from the store.
    let root = authenticate(ep, "root", "rootpw").await.unwrap();
    let mut a = AuthClient::new(as_token(ep, Some(&root)).await);
    assert_status(
        a.role_grant_permission(lookout_proto::pb::AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: Some(lookout_proto::authpb::Permission {
                perm_type: 0,
                key: b(""),
                range_end: b(""),
            }),
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: invalid auth management",
    );
    assert_status(
        a.user_grant_role(lookout_proto::pb::AuthUserGrantRoleRequest {
            user: "nobody".into(),
            role: "app".into(),
        })
        .await,
        Code::FailedPrecondition,
        "etcdserver: user name not found",
    );
    // The gateway still serves after all of it.
    let fresh = authenticate(ep, "alice", "alicepw").await.unwrap();
    KvClient::new(as_token(ep, Some(&fresh)).await)
        .range(get("/app/a"))
        .await
        .expect("served");
}

/// One Lock call as `token`: its code and message, or "ok".
async fn lock_as(endpoint: &str, token: &str, name: &str) -> String {
    use lookout_proto::v3lockpb::{LockRequest, lock_client::LockClient};
    let mut c = LockClient::new(as_token(endpoint, Some(token)).await);
    match tokio::time::timeout(
        WAIT,
        c.lock(LockRequest {
            name: b(name),
            lease: 0,
        }),
    )
    .await
    .expect("lock answers")
    {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_through_a_gateway_is_checked_as_the_clients_own_calls_like_etcd() {
    let etcd = EtcdServer::start_with(EtcdOptions {
        extra_args: vec!["--bcrypt-cost=4".into()],
    })
    .await;
    set_up_auth(&etcd.endpoint).await;
    let gw = gateway_as_root(&etcd.endpoint).await;
    // A lock etcd grants stays held (its session's lease outlives the
    // call), so each target locks a name of its own under the same prefix.
    for name in ["/app/lock", "/elsewhere/lock"] {
        let want = {
            let t = authenticate(&etcd.endpoint, "alice", "alicepw")
                .await
                .unwrap();
            lock_as(&etcd.endpoint, &t, &format!("{name}-direct")).await
        };
        let t = authenticate(&gw.endpoint, "alice", "alicepw")
            .await
            .unwrap();
        let got = lock_as(&gw.endpoint, &t, &format!("{name}-gateway")).await;
        assert_eq!(got, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookout_dev_keeps_serving_with_auth_on() {
    let dir = tempfile::tempdir().unwrap();
    let dev = crate::support::start_dev(dir.path()).await;
    let endpoint = dev.endpoint.clone();
    set_up_auth(&endpoint).await;
    let t = authenticate(&endpoint, "alice", "alicepw").await.unwrap();
    let mut kv = KvClient::new(as_token(&endpoint, Some(&t)).await);
    kv.put(PutRequest {
        key: b("/app/b"),
        value: b("2"),
        ..Default::default()
    })
    .await
    .expect("alice writes through dev");
    let r = kv.range(get("/app/b")).await.expect("and reads her write");
    assert_eq!(r.into_inner().kvs.len(), 1);
    assert_status(
        kv.range(get("/secret/x")).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    let mut nobody = KvClient::new(as_token(&endpoint, None).await);
    assert_status(
        nobody.range(get("/app/b")).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
}

/// A watch create named by nobody under auth: etcd 3.5's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameless_watch_is_refused_with_etcds_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &[]).await;
    set_up_auth(&s.endpoint).await;
    let gw = gateway_as_root(&s.endpoint).await;
    for ep in [&s.endpoint, &gw.endpoint] {
        let mut w = WatchClient::new(as_token(ep, None).await);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b("/app/"),
                    range_end: b("/app0"),
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
        let mut st = w
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let r = st.message().await.unwrap().unwrap();
        assert_eq!(
            r.cancel_reason,
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
            "{ep}"
        );
    }
}
