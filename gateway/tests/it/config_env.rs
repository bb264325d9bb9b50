//! Flags from `--config` files and `LOOKOUT_<FLAG>` environment variables,
//! with precedence flag > env > file > default, on the real binary.

use std::process::Command;

use lookout_testkit::{LookoutProcess, free_port};

use crate::support::lookout_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let file = dir.path().join("lookout.yaml");
    // The file sets four flags; env overrides one, a flag another.
    std::fs::write(
        &file,
        format!(
            "name: from-file\nlisten-client-urls: http://{endpoint}\nadvertise_client_urls:\n  - http://{endpoint}\ndata-dir: {}\nmax-txn-ops: 1\nmax-request-bytes: 100\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut cmd_env = vec![
        ("LOOKOUT_NAME", "from-env"),
        ("LOOKOUT_MAX_REQUEST_BYTES", "200"),
    ];
    cmd_env.push(("LOOKOUT_MAX_TXN_OPS", "2"));
    let args: Vec<String> = vec![
        "store".into(),
        "--config".into(),
        file.display().to_string(),
        "--max-txn-ops=3".into(),
    ];
    let log = dir.path().join("store.log");
    // LookoutProcess takes no env: set it through a wrapper `env` call.
    let mut env_args: Vec<String> = cmd_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env_args.push(lookout_bin().display().to_string());
    env_args.extend(args);
    let env_bin = std::path::PathBuf::from("/usr/bin/env");
    let store = LookoutProcess::spawn(&env_bin, &env_args, &endpoint, &log).await;

    // env beats file: the member is named from-env.
    let members = lookout_testkit::etcdctl(&store.endpoint, &["member", "list"]);
    assert!(
        String::from_utf8_lossy(&members.stdout).contains("from-env"),
        "{members:?}"
    );
    // flag beats env and file: 3 ops pass, 4 do not.
    let txn = |n: usize| {
        let ops: String = (0..n).map(|i| format!("put k{i} v\n")).collect();
        let mut c = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", store.endpoint))
            .args(["txn"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(format!("\n{ops}\n\n").as_bytes()).unwrap();
        drop(stdin);
        c.wait_with_output().unwrap()
    };
    assert!(txn(3).status.success(), "{:?}", txn(3));
    let four = txn(4);
    assert!(
        String::from_utf8_lossy(&four.stderr).contains("too many operations in txn request"),
        "{four:?}"
    );
    // env beats file for max-request-bytes (200): a 150-byte value is
    // refused by neither... a 250-byte one is.
    let big = "x".repeat(250);
    let put = lookout_testkit::etcdctl(&store.endpoint, &["put", "big", &big]);
    assert!(
        String::from_utf8_lossy(&put.stderr).contains("request is too large"),
        "{put:?}"
    );
    let small = "x".repeat(150);
    let put = lookout_testkit::etcdctl(&store.endpoint, &["put", "small", &small]);
    assert!(put.status.success(), "{put:?}");

    // A key naming no flag is refused, with the key in the message.
    std::fs::write(&file, "nmae: typo\n").unwrap();
    let bad = Command::new(lookout_bin())
        .args(["store", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown key \"nmae\""));
}

#[test]
fn gateway_flags_come_from_a_toml_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    // A bad duration in the file is reported as the flag's error: the
    // value reached the gateway's --read-timeout parser.
    std::fs::write(
        &file,
        "read-timeout = \"soon\"\nprefix = [\"/a/\", \"/b/\"]\n",
    )
    .unwrap();
    let out = Command::new(lookout_bin())
        .args(["gateway", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--read-timeout") && err.contains("soon"),
        "{err}"
    );
}
