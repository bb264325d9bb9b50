//! The issue's auth script (`auth.etcdctl`: users, roles, grants, `auth
//! enable`; allowed and denied get, put, delete, txn, watch, lease revoke
//! and compaction; a password change; a role revoked while a client is
//! connected; token expiry) against real etcd 3.4 and against each Lookout
//! target, with the same flags: transcripts must be identical apart from
//! IDs. The targets: `lookout store`, a gateway in front of it, and a
//! gateway in front of a second etcd (each gateway logs in as the script's
//! root user once auth is on).

use std::path::Path;

use lookout_testkit::etcd::EtcdOptions;
use lookout_testkit::script::run_script;
use lookout_testkit::{EtcdServer, LookoutProcess};

use crate::support::{start_gateway, start_store_with};

const SCRIPT: &str = include_str!("auth.etcdctl");

/// What the script runs against besides the reference etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `lookout store`, one member.
    Store,
    /// `lookout gateway` in front of `lookout store`.
    GatewayOverStore,
    /// `lookout gateway` in front of a second etcd 3.4.
    GatewayOverEtcd,
}

/// A started target: its client endpoint and what keeps it running.
struct Running {
    endpoint: String,
    /// The process whose log explains a difference.
    process: LookoutProcess,
    /// The store behind a gateway.
    _behind: Option<Behind>,
}

#[allow(dead_code)] // held to keep the process running
enum Behind {
    Store(LookoutProcess),
    Etcd(EtcdServer),
}

/// The gateway's own flags among the script's server flags: the token
/// kind and TTL it must know (the bcrypt cost is the store's business).
fn gateway_flags(flags: &[String]) -> Vec<String> {
    let mut g: Vec<String> = flags
        .iter()
        .filter(|f| f.starts_with("--auth-token"))
        .cloned()
        .collect();
    // The script's root user, created while auth is off: the gateway
    // logs in as it once the store asks for a token.
    g.push("--user=root:rootpw".into());
    g
}

async fn start(t: Target, dir: &Path, flags: &[String]) -> Running {
    let store_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gw = gateway_flags(flags);
    let gw: Vec<&str> = gw.iter().map(String::as_str).collect();
    match t {
        Target::Store => {
            let p = start_store_with(dir, None, &store_flags).await;
            Running {
                endpoint: p.endpoint.clone(),
                process: p,
                _behind: None,
            }
        }
        Target::GatewayOverStore => {
            let store = start_store_with(dir, None, &store_flags).await;
            let g = start_gateway(dir, &[&store.endpoint], &gw).await;
            Running {
                endpoint: g.endpoint.clone(),
                process: g,
                _behind: Some(Behind::Store(store)),
            }
        }
        Target::GatewayOverEtcd => {
            let etcd = EtcdServer::start_with(EtcdOptions {
                extra_args: flags.to_vec(),
            })
            .await;
            let g = start_gateway(dir, &[&etcd.endpoint], &gw).await;
            Running {
                endpoint: g.endpoint.clone(),
                process: g,
                _behind: Some(Behind::Etcd(etcd)),
            }
        }
    }
}

/// Every target.
const ALL: &[Target] = &[
    Target::Store,
    Target::GatewayOverStore,
    Target::GatewayOverEtcd,
];

/// Panics with both transcripts and the first differing line.
fn assert_same(want: &str, got: &str, who: &str, log: &str) {
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| want.lines().count().min(got.lines().count()));
        panic!(
            "transcripts differ at line {}:\n  etcd: {:?}\n  {who}: {:?}\n\n=== etcd ===\n{want}\n=== {who} ===\n{got}\n=== log ===\n{log}",
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first),
        );
    }
}

/// Runs the script on etcd and on every target (in parallel) with `flags`.
async fn script_matches_etcd(flags: Vec<String>, targets: &[Target]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start_with(EtcdOptions {
        extra_args: flags.clone(),
    })
    .await;
    let mut running = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let d = dir.path().join(format!("t{i}"));
        std::fs::create_dir_all(&d).unwrap();
        running.push((*t, start(*t, &d, &flags).await));
    }
    let run = |ep: String| tokio::task::spawn_blocking(move || run_script(SCRIPT, &ep));
    let want = run(etcd.endpoint.clone());
    let got: Vec<_> = running
        .iter()
        .map(|(_, r)| run(r.endpoint.clone()))
        .collect();
    let want = want.await.unwrap();
    // LOOKOUT_SCRIPT_DUMP=dir keeps the transcripts for reading.
    let dump = std::env::var_os("LOOKOUT_SCRIPT_DUMP").map(std::path::PathBuf::from);
    if let Some(d) = &dump {
        let _ = std::fs::write(d.join("etcd.txt"), &want);
    }
    for ((t, r), g) in running.iter().zip(got) {
        let g = g.await.unwrap();
        if let Some(d) = &dump {
            let _ = std::fs::write(d.join(format!("{t:?}.txt")), &g);
        }
        assert_same(&want, &g, &format!("{t:?}"), &r.process.child.log_text());
    }
    want
}

/// Cheap hashes keep the script fast (it logs in some eighty times);
/// the cost is etcd's flag on both sides.
fn common_flags() -> Vec<String> {
    vec!["--bcrypt-cost=4".into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_script_with_simple_tokens_matches_etcd() {
    let mut flags = common_flags();
    flags.push("--auth-token-ttl=5".into());
    let t = script_matches_etcd(flags, ALL).await;
    // The script did what it says (guards against both sides failing alike).
    assert!(t.contains("Authentication Enabled"), "{t}");
    assert!(t.contains("etcdserver: permission denied"), "{t}");
    assert!(
        t.contains("warn: rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"),
        "{t}"
    );
    assert!(!t.contains("never printed"), "{t}");
}

/// RSA keys from openssl (in the base image) for the JWT run.
fn rsa_keys(dir: &Path) -> (String, String) {
    let key = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl genrsa");
    let ok = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl rsa -pubout");
    (key.display().to_string(), public.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_script_with_jwt_tokens_matches_etcd() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keys(keys.path());
    let mut flags = common_flags();
    flags.push(format!(
        "--auth-token=jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl=5s"
    ));
    let t = script_matches_etcd(flags, ALL).await;
    assert!(t.contains("Authentication Enabled"), "{t}");
    assert!(!t.contains("never printed"), "{t}");
}

/// Starts etcd 3.4 serving TLS on `url` with `--client-cert-auth` and
/// waits (bounded) until `client` can read through it.
async fn start_tls_etcd(
    dir: &Path,
    port: u16,
    server: &lookout_testkit::certs::CertFiles,
    ca: &Path,
    client: &lookout_testkit::certs::CertFiles,
) -> lookout_testkit::ChildGuard {
    let url = format!("https://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", lookout_testkit::free_port());
    let mut cmd = std::process::Command::new("etcd");
    cmd.args([
        "--name=tls",
        &format!("--data-dir={}", dir.join("etcd").display()),
        &format!("--listen-client-urls={url}"),
        &format!("--advertise-client-urls={url}"),
        &format!("--listen-peer-urls={peer}"),
        &format!("--initial-advertise-peer-urls={peer}"),
        &format!("--initial-cluster=tls={peer}"),
        &format!("--cert-file={}", server.cert.display()),
        &format!("--key-file={}", server.key.display()),
        &format!("--trusted-ca-file={}", ca.display()),
        "--client-cert-auth",
        "--bcrypt-cost=4",
        "--log-level=warn",
    ]);
    let mut child = lookout_testkit::spawn_logged(cmd, &dir.join("etcd.log")).unwrap();
    crate::tls::wait_tls_ready(&url, ca, client, &mut child).await;
    child
}

/// `--client-cert-auth`: without a token, the verified certificate's
/// common name is the user (a `--no-password` user, typically); a token
/// wins over the certificate. Same script on etcd and `lookout store`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_common_name_is_the_user_like_etcd() {
    use lookout_testkit::certs::{TestCa, etcdctl_tls_args};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(d, "main");
    let server = ca.issue_server("server");
    let root = ca.issue_client("root");
    let alice = ca.issue_client("alice");
    let mallory = ca.issue_client("mallory");
    let tls =
        |c: &lookout_testkit::certs::CertFiles| etcdctl_tls_args(&ca.ca_file, Some(c)).join(" ");
    let script = format!(
        "\
$ {root} user add root --new-user-password=rootpw --interactive=false
$ {root} user add alice --no-password
$ {root} role add app
$ {root} role grant-permission app readwrite /app/ --prefix
$ {root} user grant-role alice app
$ {root} auth enable
$ {root} put /secret/x 1
$ {alice} put /app/a 1
$ {alice} get /app/a
$ {alice} get /secret/x
$ {alice} user get alice
$ {alice} user list
$ {mallory} get /app/a
$ {mallory} put /app/a 2
$ {alice} --user root:rootpw get /secret/x
$ {alice} --user alice:x get /app/a
$ {root} defrag
$ {alice} defrag
$ {root} auth disable
",
        root = tls(&root),
        alice = tls(&alice),
        mallory = tls(&mallory),
    );
    let etcd_port = lookout_testkit::free_port();
    let _etcd = start_tls_etcd(d, etcd_port, &server, &ca.ca_file, &root).await;
    let port = lookout_testkit::free_port();
    let mut args = crate::tls::tls_store_args(d, port, &server, &ca.ca_file);
    args.push("--bcrypt-cost=4".into());
    let mut store = crate::tls::spawn(d, "store", &args);
    let url = format!("https://127.0.0.1:{port}");
    crate::tls::wait_tls_ready(&url, &ca.ca_file, &root, &mut store).await;

    let (s1, s2) = (script.clone(), script);
    let e_url = format!("https://127.0.0.1:{etcd_port}");
    let want = tokio::task::spawn_blocking(move || run_script(&s1, &e_url));
    let got = tokio::task::spawn_blocking(move || run_script(&s2, &url));
    let (want, got) = (want.await.unwrap(), got.await.unwrap());
    let (d1, d2) = (d.display().to_string(), d.display().to_string());
    let (want, got) = (want.replace(&d1, "<dir>"), got.replace(&d2, "<dir>"));
    assert_same(&want, &got, "Store", &store.log_text());
    assert!(want.contains("Authentication Enabled"), "{want}");
    assert!(
        want.contains("alice.pem --key=<dir>/alice-key.pem put /app/a 1\nOK"),
        "{want}"
    );
    assert!(want.contains("etcdserver: permission denied"), "{want}");
}
