//! `--cors` and `--host-whitelist` on `lookout store` and `lookout
//! gateway`, as etcd has them: a Host outside the whitelist gets 421 over
//! plain HTTP (DNS rebinding), a listed Origin is echoed in CORS headers
//! and any other gets none; the defaults (`*`) allow everything.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::{start_gateway, start_store_with};

/// One raw HTTP/1.1 request with the given Host and Origin: (status,
/// lowercased head, body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    origin: Option<&str>,
) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let body = "{}";
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn check(addr: &str) {
    let path = "/v3/maintenance/status";
    let (st, head, _) = request(addr, "POST", path, "localhost", Some("https://ui.example"));
    assert_eq!(st, 200, "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://ui.example"),
        "{head}"
    );
    let (st, head, _) = request(
        addr,
        "POST",
        path,
        "localhost",
        Some("https://evil.example"),
    );
    assert_eq!(st, 200);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let (st, _, body) = request(addr, "POST", path, "rebound.example:2379", None);
    assert_eq!(st, 421, "{body}");
    assert!(body.contains("DNS Rebinding"), "{body}");
    let (st, head, _) = request(
        addr,
        "OPTIONS",
        "/v3/kv/range",
        "127.0.0.1",
        Some("https://ui.example"),
    );
    assert_eq!(st, 200);
    assert!(head.contains("access-control-allow-methods"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_and_host_whitelist_on_store_and_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--cors=https://ui.example",
        "--host-whitelist=localhost,127.0.0.1",
    ];
    let store = start_store_with(dir.path(), None, &flags).await;
    let ep = store.endpoint.clone();
    tokio::task::spawn_blocking(move || check(&ep))
        .await
        .unwrap();
    let gw = start_gateway(dir.path(), &[&store.endpoint], &flags).await;
    let ep = gw.endpoint.clone();
    tokio::task::spawn_blocking(move || check(&ep))
        .await
        .unwrap();
    // Defaults: any host, no origin (etcd's default is `*`); `--cors '*'`
    // answers etcd's `*`.
    for (flags, want) in [(&[][..], None), (&["--cors=*"][..], Some("*"))] {
        let open = start_gateway(dir.path(), &[&store.endpoint], flags).await;
        let ep = open.endpoint.clone();
        let (st, head, _) = tokio::task::spawn_blocking(move || {
            request(
                &ep,
                "POST",
                "/v3/maintenance/status",
                "anything.example",
                Some("https://x"),
            )
        })
        .await
        .unwrap();
        assert_eq!(st, 200, "{flags:?}");
        match want {
            Some(o) => assert!(
                head.contains(&format!("access-control-allow-origin: {o}")),
                "{head}"
            ),
            None => assert!(!head.contains("access-control-allow-origin"), "{head}"),
        }
    }
}
