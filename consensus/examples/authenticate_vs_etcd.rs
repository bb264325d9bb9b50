//! `Authenticate` calls per second of `lookout store` beside etcd 3.4 in
//! the same run: one member each, started fresh per repetition through
//! lookout-testkit (PIDs kept, killed on drop), the same user (bcrypt at
//! etcd's default cost 10 unless `--bcrypt-cost`), the same gRPC client
//! code, order alternating between repetitions. Every call checks the
//! password with bcrypt on the server, so bcrypt bounds both; a simple
//! token is then a raft entry (fsync) on both, a JWT is signed locally.
//!
//! ```text
//! cargo build --release -p lookout-gateway --bin lookout
//! cargo run --release -p lookout-consensus --example authenticate_vs_etcd -- \
//!     [--clients 1,4,16] [--repeat 3] [--seconds 5] [--bcrypt-cost 10] [--jwt]
//! ```
//!
//! `LOOKOUT_BIN` overrides the binary (default: target/release/lookout).

use std::path::Path;
use std::time::{Duration, Instant};

use lookout_proto::pb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    AuthenticateRequest, auth_client::AuthClient,
};
use lookout_testkit::etcd::EtcdOptions;
use lookout_testkit::{EtcdServer, LookoutProcess, free_port};
use tonic::transport::Channel;

struct Opts {
    clients: Vec<usize>,
    repeat: usize,
    seconds: u64,
    cost: u32,
    jwt: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        clients: vec![1, 4, 16],
        repeat: 3,
        seconds: 5,
        cost: 10,
        jwt: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("flag value");
        match a.as_str() {
            "--clients" => o.clients = val().split(',').map(|c| c.parse().unwrap()).collect(),
            "--repeat" => o.repeat = val().parse().unwrap(),
            "--seconds" => o.seconds = val().parse().unwrap(),
            "--bcrypt-cost" => o.cost = val().parse().unwrap(),
            "--jwt" => o.jwt = true,
            _ => panic!(
                "usage: authenticate_vs_etcd [--clients 1,4,16] [--repeat 3] [--seconds 5] [--bcrypt-cost 10] [--jwt]"
            ),
        }
    }
    o
}

/// RSA keys for the JWT runs (openssl is in the base image).
fn rsa_keys(dir: &Path) -> String {
    let key = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    let run = |args: &[&str]| {
        assert!(
            std::process::Command::new("openssl")
                .args(args)
                .status()
                .unwrap()
                .success()
        )
    };
    run(&["genrsa", "-out", key.to_str().unwrap(), "2048"]);
    run(&[
        "rsa",
        "-pubout",
        "-in",
        key.to_str().unwrap(),
        "-out",
        public.to_str().unwrap(),
    ]);
    format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=RS256",
        public.display(),
        key.display()
    )
}

async fn channel(endpoint: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// root and `bench` users, auth on.
async fn prepare(endpoint: &str) {
    let mut a = AuthClient::new(channel(endpoint).await);
    for name in ["root", "bench"] {
        a.user_add(AuthUserAddRequest {
            name: name.into(),
            password: "pw".into(),
            options: None,
        })
        .await
        .unwrap();
    }
    a.role_add(AuthRoleAddRequest {
        name: "root".into(),
    })
    .await
    .unwrap();
    a.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    a.auth_enable(AuthEnableRequest {}).await.unwrap();
}

/// `clients` tasks calling Authenticate for `secs`: (calls/s, p50 ms, p99 ms).
async fn drive(endpoint: &str, clients: usize, secs: u64) -> (f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut a = AuthClient::new(channel(endpoint).await);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                a.authenticate(AuthenticateRequest {
                    name: "bench".into(),
                    password: "pw".into(),
                })
                .await
                .unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64().max(secs as f64);
    all.sort_by(f64::total_cmp);
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / elapsed, q(0.5), q(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = opts();
    let bin = std::env::var_os("LOOKOUT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target/release/lookout".into());
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p lookout-gateway --bin lookout",
        bin.display()
    );
    let keys = tempfile::tempdir().unwrap();
    let mut flags = vec![format!("--bcrypt-cost={}", o.cost)];
    if o.jwt {
        flags.push(rsa_keys(keys.path()));
    }
    let mut results: std::collections::BTreeMap<(usize, &str), Vec<f64>> = Default::default();
    for run in 0..o.repeat {
        let etcd = EtcdServer::start_with(EtcdOptions {
            extra_args: flags.clone(),
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("127.0.0.1:{}", free_port());
        let url = format!("http://{endpoint}");
        let mut args: Vec<String> = vec![
            "store".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen-client-urls".into(),
            url.clone(),
            "--advertise-client-urls".into(),
            url,
        ];
        args.extend(flags.iter().cloned());
        let lookout =
            LookoutProcess::spawn(&bin, &args, &endpoint, &dir.path().join("lookout.log")).await;
        prepare(&etcd.endpoint).await;
        prepare(&lookout.endpoint).await;
        for &c in &o.clients {
            let order = if run % 2 == 0 {
                [
                    ("etcd", etcd.endpoint.clone()),
                    ("lookout", lookout.endpoint.clone()),
                ]
            } else {
                [
                    ("lookout", lookout.endpoint.clone()),
                    ("etcd", etcd.endpoint.clone()),
                ]
            };
            for (name, ep) in order {
                let (rate, p50, p99) = drive(&ep, c, o.seconds).await;
                println!(
                    "run {run} authenticate/{c} {name}: {rate:.1} calls/s p50 {p50:.1} ms p99 {p99:.1} ms"
                );
                results.entry((c, name)).or_default().push(rate);
            }
        }
    }
    println!(
        "\nbcrypt cost {}, {} tokens, median of {} runs (calls/s), ratio = lookout / etcd",
        o.cost,
        if o.jwt { "JWT (RS256)" } else { "simple" },
        o.repeat
    );
    for &c in &o.clients {
        let e = median(results[&(c, "etcd")].clone());
        let l = median(results[&(c, "lookout")].clone());
        println!(
            "clients {c:>3}: etcd {e:8.1}  lookout {l:8.1}  ratio {:.2}",
            l / e
        );
    }
}
