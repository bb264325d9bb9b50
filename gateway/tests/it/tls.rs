//! TLS with generated certificates: etcdctl with --cacert/--cert/--key
//! against `lookout store` and `lookout gateway` (children), refusals at
//! the handshake with a log line saying why, certificate reload, and peers
//! refusing a member without a valid peer certificate.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lookout_testkit::certs::{CertFiles, TestCa, etcdctl_tls_args};
use lookout_testkit::{ChildGuard, free_port, spawn_logged, wait_for};

use crate::support::lookout_bin;

/// etcdctl against `url` with TLS flags and a short dial timeout.
pub fn etcdctl_tls(url: &str, ca: &Path, client: Option<&CertFiles>, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .args(etcdctl_tls_args(ca, client))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run etcdctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Spawns `lookout args...` with its log in `dir`.
pub fn spawn(dir: &Path, name: &str, args: &[String]) -> ChildGuard {
    let mut cmd = Command::new(lookout_bin());
    cmd.args(args).env("RUST_LOG", "info,openraft=warn");
    spawn_logged(cmd, &dir.join(format!("{name}.log"))).expect("spawn lookout")
}

/// Waits until `etcdctl get` through TLS works.
pub async fn wait_tls_ready(url: &str, ca: &Path, client: &CertFiles, child: &mut ChildGuard) {
    let url = url.to_string();
    for _ in 0..300 {
        assert!(child.is_running(), "exited early:\n{}", child.log_text());
        let o = etcdctl_tls(&url, ca, Some(client), &["get", "probe"]);
        if o.status.success() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered over TLS:\n{}", child.log_text());
}

pub fn tls_store_args(dir: &Path, port: u16, server: &CertFiles, ca: &Path) -> Vec<String> {
    let url = format!("https://127.0.0.1:{port}");
    vec![
        "store".into(),
        "--name=tls".into(),
        format!("--data-dir={}", dir.join("store").display()),
        format!("--listen-client-urls={url}"),
        format!("--advertise-client-urls={url}"),
        format!("--cert-file={}", server.cert.display()),
        format!("--key-file={}", server.key.display()),
        format!("--trusted-ca-file={}", ca.display()),
        "--client-cert-auth".into(),
        "--tls-reload-interval=200ms".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_over_mtls_to_store_and_gateway_and_refusals_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(d, "main");
    let other = TestCa::new(d, "other");
    let server = ca.issue_server("server");
    let alice = ca.issue_client("alice");
    let gw_client = ca.issue_client("gateway");
    let expired = ca.issue_expired_client("old");
    let mallory = other.issue_client("mallory");

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut store = spawn(d, "store", &tls_store_args(d, port, &server, &ca.ca_file));
    wait_tls_ready(&url, &ca.ca_file, &alice, &mut store).await;

    let put = etcdctl_tls(&url, &ca.ca_file, Some(&alice), &["put", "k", "v1"]);
    assert!(put.status.success(), "{}", text(&put));
    let get = etcdctl_tls(
        &url,
        &ca.ca_file,
        Some(&alice),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(text(&get).trim(), "v1");
    // The member advertises its client URL (published just after start).
    wait_for(
        "member list shows the client URL",
        Duration::from_secs(10),
        || {
            let o = etcdctl_tls(&url, &ca.ca_file, Some(&alice), &["member", "list"]);
            let needle = format!("127.0.0.1:{port}");
            async move { text(&o).contains(&needle).then_some(()) }
        },
    )
    .await;

    // Refused at the handshake: no certificate, expired, foreign CA.
    for client in [None, Some(&expired), Some(&mallory)] {
        let o = etcdctl_tls(&url, &ca.ca_file, client, &["get", "k"]);
        assert!(!o.status.success(), "accepted {client:?}: {}", text(&o));
    }
    for reason in [
        "peer sent no certificates",
        "certificate expired",
        "UnknownIssuer",
    ] {
        wait_for(reason, Duration::from_secs(10), || {
            let log = store.log_text();
            async move {
                log.lines()
                    .any(|l| l.contains("TLS handshake refused") && l.contains(reason))
                    .then_some(())
            }
        })
        .await;
    }

    // A gateway over TLS in front of the TLS store.
    let gport = free_port();
    let gurl = format!("https://127.0.0.1:{gport}");
    let mut gw = spawn(
        d,
        "gateway",
        &[
            "gateway".into(),
            format!("--listen-addr=127.0.0.1:{gport}"),
            format!("--endpoints=127.0.0.1:{port}"),
            format!("--cacert={}", ca.ca_file.display()),
            format!("--cert={}", gw_client.cert.display()),
            format!("--key={}", gw_client.key.display()),
            format!("--cert-file={}", server.cert.display()),
            format!("--key-file={}", server.key.display()),
            format!("--trusted-ca-file={}", ca.ca_file.display()),
            "--client-cert-auth".into(),
        ],
    );
    wait_tls_ready(&gurl, &ca.ca_file, &alice, &mut gw).await;
    let get = etcdctl_tls(
        &gurl,
        &ca.ca_file,
        Some(&alice),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(text(&get).trim(), "v1", "{}", gw.log_text());
    let put = etcdctl_tls(&gurl, &ca.ca_file, Some(&alice), &["put", "k", "v2"]);
    assert!(put.status.success(), "{}", text(&put));
    let get = etcdctl_tls(
        &url,
        &ca.ca_file,
        Some(&alice),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(text(&get).trim(), "v2");
    let o = etcdctl_tls(&gurl, &ca.ca_file, Some(&mallory), &["get", "k"]);
    assert!(!o.status.success());
    wait_for("gateway logs the refusal", Duration::from_secs(10), || {
        let log = gw.log_text();
        async move {
            log.lines()
                .any(|l| l.contains("TLS handshake refused") && l.contains("UnknownIssuer"))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_used_for_new_connections_and_a_bad_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(d, "first");
    let ca2 = TestCa::new(d, "second");
    let server = ca.issue_server("server");
    let alice = ca.issue_client("alice");
    // Clients of the second CA; the store trusts only the first CA for
    // clients, so rotate only the server identity.
    let server2 = ca2.issue_server("server2");

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut store = spawn(d, "store", &tls_store_args(d, port, &server, &ca.ca_file));
    wait_tls_ready(&url, &ca.ca_file, &alice, &mut store).await;

    // A broken key file: the old certificate stays in use.
    std::fs::write(&server.key, "not a key").unwrap();
    wait_for("bad files are refused", Duration::from_secs(10), || {
        let log = store.log_text();
        async move {
            log.contains("keeping the previous certificate")
                .then_some(())
        }
    })
    .await;
    let o = etcdctl_tls(&url, &ca.ca_file, Some(&alice), &["get", "k"]);
    assert!(
        o.status.success(),
        "old certificate still served: {}",
        text(&o)
    );

    // Rotate to a server certificate of the second CA.
    std::fs::copy(&server2.cert, &server.cert).unwrap();
    std::fs::copy(&server2.key, &server.key).unwrap();
    wait_for(
        "new connections get the new certificate",
        Duration::from_secs(10),
        || {
            let url = url.clone();
            let (ca2, alice) = (ca2.ca_file.clone(), alice.clone());
            async move {
                etcdctl_tls(&url, &ca2, Some(&alice), &["get", "k"])
                    .status
                    .success()
                    .then_some(())
            }
        },
    )
    .await;
    assert!(store.log_text().contains("reloaded TLS certificate"));
    let o = etcdctl_tls(&url, &ca.ca_file, Some(&alice), &["get", "k"]);
    assert!(!o.status.success(), "the old chain no longer verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_refuse_a_member_without_a_valid_peer_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(d, "peer");
    let rogue_ca = TestCa::new(d, "rogue");
    let names = ["a", "b", "c"];
    let peer_ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let client_ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let cluster = names
        .iter()
        .zip(&peer_ports)
        .map(|(n, p)| format!("{n}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, n) in names.iter().enumerate() {
        // c holds a peer certificate from a CA the others do not trust.
        let cert = if *n == "c" {
            rogue_ca.issue_server(&format!("peer-{n}"))
        } else {
            ca.issue_server(&format!("peer-{n}"))
        };
        // c trusts the real CA, so it is the others' check of c's own
        // certificate that refuses it (server side, at the handshake).
        let peer_ca = &ca;
        let args = vec![
            "store".to_string(),
            format!("--name={n}"),
            format!("--data-dir={}", d.join(n).display()),
            format!("--listen-client-urls=http://127.0.0.1:{}", client_ports[i]),
            format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                client_ports[i]
            ),
            format!(
                "--initial-advertise-peer-urls=https://127.0.0.1:{}",
                peer_ports[i]
            ),
            format!("--listen-peer-urls=https://127.0.0.1:{}", peer_ports[i]),
            format!("--initial-cluster={cluster}"),
            format!("--peer-cert-file={}", cert.cert.display()),
            format!("--peer-key-file={}", cert.key.display()),
            format!("--peer-trusted-ca-file={}", peer_ca.ca_file.display()),
            "--peer-client-cert-auth".into(),
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ];
        members.push(spawn(d, n, &args));
    }
    // a and b form a quorum over mutual TLS and accept writes.
    let a = format!("127.0.0.1:{}", client_ports[0]);
    wait_for(
        "a and b elect a leader and commit",
        Duration::from_secs(30),
        || {
            let a = a.clone();
            async move {
                lookout_testkit::etcdctl(&a, &["put", "k", "v"])
                    .status
                    .success()
                    .then_some(())
            }
        },
    )
    .await;
    // c's peer connections are refused at the handshake, with the reason.
    let refused = |l: &str| {
        l.contains("listener=\"peer\"")
            && l.contains("TLS handshake refused")
            && l.contains("UnknownIssuer")
    };
    let mut seen = false;
    for _ in 0..200 {
        let logs = [members[0].log_text(), members[1].log_text()];
        if logs.iter().flat_map(|l| l.lines()).any(refused) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "no peer refusal logged:\n--- a\n{}\n--- b\n{}\n--- c\n{}",
        members[0].log_text(),
        members[1].log_text(),
        members[2].log_text()
    );
    // c never receives the data: a linearizable read there cannot succeed.
    let c = format!("127.0.0.1:{}", client_ports[2]);
    let o = lookout_testkit::etcdctl(&c, &["get", "k", "--command-timeout=3s"]);
    assert!(
        !text(&o).contains("\nv") && !o.status.success(),
        "c served data: {}",
        text(&o)
    );
    assert!(members[2].is_running() || !members[2].log_text().is_empty());
}
