//! `--auth-config`: bearer tokens and client certificate CNs map to key
//! prefixes (the file's first format, roles of their own on the store's
//! engine); reads, writes, txns and watches outside them get etcd's
//! permission denied, and a watch group mixing an allowed and a refused
//! client never leaks events to the refused one.

use lookout_proto::pb::{
    PutRequest, RangeRequest, TxnRequest, WatchRequest, kv_client::KvClient,
    watch_client::WatchClient, watch_request,
};
use lookout_testkit::EtcdServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::harness::*;

type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Authed = InterceptedService<Channel, Interceptor>;

fn with_token(ch: Channel, token: Option<&str>) -> Authed {
    let token = token.map(|t| format!("Bearer {t}"));
    let f: Interceptor = Box::new(move |mut r: tonic::Request<()>| {
        if let Some(t) = &token {
            r.metadata_mut()
                .insert("authorization", t.parse().expect("ascii token"));
        }
        Ok(r)
    });
    InterceptedService::new(ch, f)
}

async fn gateway(etcd: &str, dir: &std::path::Path) -> TestGateway {
    let file = dir.join("auth.yaml");
    std::fs::write(
        &file,
        "clients:\n  - token: alice-token\n    prefixes: [\"/alice/\"]\n  - token: bob-token\n    prefixes: [\"/bob/\"]\n  - token: reader\n    prefixes: [\"/alice/\"]\n    read_only: true\n  - token: root-token\n    admin: true\n",
    )
    .unwrap();
    let mut cfg = config(&[etcd]);
    cfg.auth_config = Some(file);
    TestGateway::start_with(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_calls_outside_the_prefixes_are_permission_denied() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&etcd.endpoint, dir.path()).await;
    let ch = channel(&gw.endpoint).await;
    let mut alice = KvClient::new(with_token(ch.clone(), Some("alice-token")));
    let put = |k: &str| PutRequest {
        key: b(k),
        value: b("v"),
        ..Default::default()
    };
    alice.put(put("/alice/1")).await.expect("own prefix");
    let got = alice
        .range(RangeRequest {
            key: b("/alice/"),
            range_end: b("/alice0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    let denied = |r: Result<_, tonic::Status>| {
        let s = r.expect_err("refused");
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
        assert_eq!(s.message(), "etcdserver: permission denied");
    };
    denied(alice.put(put("/bob/1")).await.map(|_| ()));
    // A range reaching beyond the prefix is refused whole, not trimmed.
    denied(
        alice
            .range(RangeRequest {
                key: b("/alice/"),
                range_end: b("/b"),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    denied(
        alice
            .range(RangeRequest {
                key: b("\0"),
                range_end: b("\0"),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    denied(
        alice
            .txn(TxnRequest {
                success: vec![put_op("/alice/2", "x"), put_op("/bob/2", "x")],
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    // Nothing of the refused txn happened.
    let mut root = KvClient::new(with_token(ch.clone(), Some("root-token")));
    let all = root
        .range(RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.kvs.len(), 1);
    // Read-only clients read but do not write.
    let mut reader = KvClient::new(with_token(ch.clone(), Some("reader")));
    reader
        .range(RangeRequest {
            key: b("/alice/1"),
            ..Default::default()
        })
        .await
        .expect("reader reads");
    denied(reader.put(put("/alice/3")).await.map(|_| ()));
    // No identity: etcd's "user name is empty". An unknown token: etcd's
    // answer to a token it does not know (this asserted "permission
    // denied" before --auth-config ran on etcd's engine).
    let mut nobody = KvClient::new(with_token(ch.clone(), None));
    let s = nobody.put(put("/alice/4")).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert_eq!(s.message(), "etcdserver: user name is empty");
    let mut stranger = KvClient::new(with_token(ch.clone(), Some("nope")));
    let s = stranger.put(put("/alice/4")).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert_eq!(s.message(), "etcdserver: invalid auth token");
    // etcd lets any named user compact (this asserted "admins only"
    // before); a request that names nobody is refused.
    let compact = lookout_proto::pb::CompactionRequest {
        revision: 1,
        ..Default::default()
    };
    alice.compact(compact).await.expect("compact");
    let s = nobody.compact(compact).await.unwrap_err();
    assert_eq!(s.message(), "etcdserver: user name is empty");
}

#[derive(Debug, Default)]
struct Seen {
    created: Vec<i64>,
    events: Vec<String>,
    refusals: Vec<String>,
}

type Shared = std::sync::Arc<parking_lot::Mutex<Seen>>;

/// One watch stream with a token, recording what it sees.
async fn watch_as(
    endpoint: &str,
    token: &str,
    creates: &[(&str, &str, i64)],
) -> (tokio::sync::mpsc::Sender<WatchRequest>, Shared) {
    let mut client = WatchClient::new(with_token(channel(endpoint).await, Some(token)));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for (key, range_end, watch_id) in creates {
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                lookout_proto::pb::WatchCreateRequest {
                    key: b(key),
                    range_end: b(range_end),
                    watch_id: *watch_id,
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
    }
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let seen = Shared::default();
    let s = seen.clone();
    // Ends when the gateway goes away (the test's end).
    tokio::spawn(async move {
        while let Ok(Some(r)) = stream.message().await {
            let mut g = s.lock();
            if r.canceled {
                g.refusals
                    .push(format!("{}:{}", r.watch_id, r.cancel_reason));
            } else if r.created {
                g.created.push(r.watch_id);
            }
            for e in r.events {
                g.events
                    .push(String::from_utf8_lossy(&e.kv.unwrap().key).into_owned());
            }
        }
    });
    (tx, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_group_mixing_allowed_and_refused_clients_leaks_nothing() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&etcd.endpoint, dir.path()).await;
    // alice and bob both watch /alice/ (same range, same options: the
    // cache would share one group); bob also watches his own prefix.
    let (_a, alice) = watch_as(&gw.endpoint, "alice-token", &[("/alice/", "/alice0", 5)]).await;
    let (_b, bob) = watch_as(
        &gw.endpoint,
        "bob-token",
        &[("/alice/", "/alice0", 7), ("/bob/", "/bob0", 8)],
    )
    .await;
    lookout_testkit::wait_for("creates answered", WAIT, || {
        let done = alice.lock().created == [5]
            && bob.lock().created == [8]
            && bob.lock().refusals.len() == 1;
        async move { done.then_some(()) }
    })
    .await;
    let mut direct = kv(&etcd.endpoint).await;
    for i in 0..5 {
        put(&mut direct, &format!("/alice/{i}"), "v").await;
        put(&mut direct, &format!("/bob/{i}"), "v").await;
    }
    // /bob/4 is the last write: once bob has it, any leaked /alice/ event
    // (earlier revisions, same stream) would have arrived before it.
    lookout_testkit::wait_for("both see their events", WAIT, || {
        let done = alice.lock().events.len() == 5
            && bob.lock().events.last().is_some_and(|k| k == "/bob/4");
        async move { done.then_some(()) }
    })
    .await;
    let (a, bo) = (alice.lock(), bob.lock());
    assert!(
        a.events.iter().all(|k| k.starts_with("/alice/")),
        "{:?}",
        a.events
    );
    assert!(a.refusals.is_empty());
    // etcd 3.5's reason, the status's full text (this asserted the bare
    // message before).
    assert_eq!(
        bo.refusals,
        vec![
            "7:rpc error: code = PermissionDenied desc = etcdserver: permission denied".to_string()
        ],
        "bob's /alice/ watch is refused with etcd's reason and his watch id"
    );
    assert_eq!(
        bo.events,
        (0..5).map(|i| format!("/bob/{i}")).collect::<Vec<_>>(),
        "bob sees exactly his own prefix, nothing of /alice/"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cn_selects_the_prefixes() {
    use crate::tls::{etcdctl_tls, spawn, wait_tls_ready};
    use lookout_testkit::certs::TestCa;
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(d, "main");
    let server = ca.issue_server("server");
    let alice = ca.issue_client("alice");
    let carol = ca.issue_client("carol");
    let auth = d.join("auth.toml");
    std::fs::write(
        &auth,
        "[[clients]]\ncn = \"alice\"\nprefixes = [\"/alice/\", \"probe\"]\n",
    )
    .unwrap();
    let port = lookout_testkit::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut gw = spawn(
        d,
        "gateway",
        &[
            "gateway".into(),
            format!("--listen-addr=127.0.0.1:{port}"),
            format!("--endpoints={}", etcd.endpoint),
            format!("--cert-file={}", server.cert.display()),
            format!("--key-file={}", server.key.display()),
            format!("--trusted-ca-file={}", ca.ca_file.display()),
            "--client-cert-auth".into(),
            format!("--auth-config={}", auth.display()),
        ],
    );
    wait_tls_ready(&url, &ca.ca_file, &alice, &mut gw).await;
    let ok = etcdctl_tls(&url, &ca.ca_file, Some(&alice), &["put", "/alice/x", "1"]);
    assert!(ok.status.success(), "{ok:?}");
    let no = etcdctl_tls(&url, &ca.ca_file, Some(&alice), &["put", "/bob/x", "1"]);
    assert!(
        String::from_utf8_lossy(&no.stderr).contains("etcdserver: permission denied"),
        "{no:?}"
    );
    // carol's certificate is valid but her CN is not in the file.
    let stranger = etcdctl_tls(&url, &ca.ca_file, Some(&carol), &["get", "/alice/x"]);
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("etcdserver: permission denied"),
        "{stranger:?}"
    );
}
