//! What etcd's auth costs a gateway, measured in one run on one machine:
//!
//! ```text
//!   reads:  three stacks, each `lookout store` + `lookout gateway` in front
//!           (processes, PIDs kept): auth off | auth on, simple tokens |
//!           auth on, JWT (RS256, the gateway holds the public key).
//!           N clients, each its own connection, loop linearizable Range
//!           of one key out of 1000 under /bench/ for D seconds through the
//!           gateway (served from its cache after one revision probe); the
//!           `bench` user has read on /bench/ only (not root), so every
//!           read is checked. Order rotates per repetition; reads/s, p50,
//!           p99; ratio = auth on / auth off, median of the repetitions.
//!   revoke: R rounds per upstream (lookout store with simple tokens, with
//!           JWT, etcd 3.4 with simple tokens): grant read on /rv/ to role
//!           rv, wait until the gateway serves it, revoke it at the store
//!           directly, then read through the gateway every millisecond
//!           until it refuses: the time from the revoke's answer to the
//!           first refusal (median, max).
//! ```
//!
//! Usage (release builds; the `lookout` binary from the same tree):
//!
//! ```sh
//! cargo build --release -p lookout-gateway --bin lookout --example cached_reads_auth
//! target/release/examples/cached_reads_auth --clients 1,16 --seconds 5 --repeat 3 --rounds 20
//! ```
//!
//! `LOOKOUT_BIN` overrides the binary (default: target/release/lookout).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lookout_proto::authpb::{Permission, permission::Type as PermType};
use lookout_proto::pb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    AuthenticateRequest, PutRequest, RangeRequest, auth_client::AuthClient, kv_client::KvClient,
};
use lookout_testkit::etcd::EtcdOptions;
use lookout_testkit::{EtcdServer, LookoutProcess, free_port};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const KEYS: usize = 1000;

struct Opts {
    clients: Vec<usize>,
    seconds: u64,
    repeat: usize,
    rounds: usize,
    bin: PathBuf,
}

fn opts() -> Opts {
    let mut o = Opts {
        clients: vec![1, 16],
        seconds: 5,
        repeat: 3,
        rounds: 20,
        bin: std::env::var_os("LOOKOUT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| "target/release/lookout".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("flag value");
        match a.as_str() {
            "--clients" => o.clients = val().split(',').map(|c| c.parse().unwrap()).collect(),
            "--seconds" => o.seconds = val().parse().unwrap(),
            "--repeat" => o.repeat = val().parse().unwrap(),
            "--rounds" => o.rounds = val().parse().unwrap(),
            _ => panic!(
                "usage: cached_reads_auth [--clients 1,16] [--seconds 5] [--repeat 3] [--rounds 20]"
            ),
        }
    }
    assert!(
        o.bin.exists(),
        "{} missing: cargo build --release -p lookout-gateway --bin lookout",
        o.bin.display()
    );
    o
}

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

async fn channel(endpoint: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn as_token(endpoint: &str, token: Option<&str>) -> Authed {
    let t = token.map(|t| AsciiMetadataValue::try_from(t).unwrap());
    InterceptedService::new(channel(endpoint).await, Tok(t))
}

async fn authenticate(endpoint: &str, name: &str) -> String {
    AuthClient::new(channel(endpoint).await)
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: "pw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// RSA keys for the JWT stack (openssl is in the base image).
fn rsa_keys(dir: &Path) -> (String, String) {
    let key = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    let run = |args: &[&str]| {
        assert!(
            std::process::Command::new("openssl")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
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
    (
        format!(
            "jwt,pub-key={},priv-key={},sign-method=RS256",
            public.display(),
            key.display()
        ),
        format!("jwt,pub-key={},sign-method=RS256", public.display()),
    )
}

fn prefix_perm(kind: PermType, prefix: &str) -> Permission {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    Permission {
        perm_type: kind as i32,
        key: prefix.as_bytes().to_vec().into(),
        range_end: end.into(),
    }
}

/// Keys under /bench/; with `auth`, root and `bench` (read on /bench/,
/// and role `rv` for the revoke rounds), then auth on.
async fn prepare(endpoint: &str, auth: bool) {
    let mut kv = KvClient::new(channel(endpoint).await);
    for i in 0..KEYS {
        kv.put(PutRequest {
            key: format!("/bench/k{i:04}").into_bytes().into(),
            value: vec![b'v'; 100].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    kv.put(PutRequest {
        key: b"/rv/k".to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    if !auth {
        return;
    }
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
    for (role, user) in [("root", "root"), ("reader", "bench"), ("rv", "bench")] {
        a.role_add(AuthRoleAddRequest { name: role.into() })
            .await
            .unwrap();
        a.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .unwrap();
    }
    a.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: "reader".into(),
        perm: Some(prefix_perm(PermType::Read, "/bench/")),
    })
    .await
    .unwrap();
    a.auth_enable(AuthEnableRequest {}).await.unwrap();
}

/// A store (`lookout store`, or etcd when `etcd`) and a gateway process in
/// front of it.
struct Stack {
    name: &'static str,
    /// The store process, held so it lives as long as the stack.
    _store: (Option<LookoutProcess>, Option<EtcdServer>),
    store_endpoint: String,
    gateway: LookoutProcess,
    /// The token clients send (`None`: auth off).
    token: Option<String>,
    jwt: bool,
    _dir: tempfile::TempDir,
}

async fn stack(
    bin: &Path,
    name: &'static str,
    etcd: bool,
    auth: Option<(String, String)>,
) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let flags: Vec<String> = match &auth {
        Some((store_kind, _)) => vec![
            "--bcrypt-cost=4".into(),
            format!("--auth-token={store_kind}"),
        ],
        None => vec![],
    };
    let (upstream, store_endpoint) = if etcd {
        let e = EtcdServer::start_with(EtcdOptions {
            extra_args: flags.clone(),
        })
        .await;
        let ep = e.endpoint.clone();
        ((None, Some(e)), ep)
    } else {
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
        let p = LookoutProcess::spawn(bin, &args, &endpoint, &dir.path().join("store.log")).await;
        ((Some(p), None), endpoint)
    };
    prepare(&store_endpoint, auth.is_some()).await;
    let gw_endpoint = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = vec![
        "gateway".into(),
        "--listen-addr".into(),
        gw_endpoint.clone(),
        "--endpoints".into(),
        store_endpoint.clone(),
    ];
    if let Some((_, gw_kind)) = &auth {
        args.extend([
            "--user".into(),
            "root:pw".into(),
            format!("--auth-token={gw_kind}"),
        ]);
    }
    let gateway =
        LookoutProcess::spawn(bin, &args, &gw_endpoint, &dir.path().join("gateway.log")).await;
    let token = match auth {
        Some(_) => Some(authenticate(&gw_endpoint, "bench").await),
        None => None,
    };
    // Served before measuring: the gateway has listed the store and (with
    // auth) copied its users and roles.
    let mut kv = KvClient::new(as_token(&gw_endpoint, token.as_deref()).await);
    lookout_testkit::wait_for("the gateway serves", Duration::from_secs(30), || {
        let mut kv = kv.clone();
        async move { kv.range(range(0)).await.ok().map(|_| ()) }
    })
    .await;
    let _ = kv.range(range(1)).await;
    let jwt = token.as_deref().is_some_and(|t| t.starts_with("eyJ"));
    Stack {
        name,
        _store: upstream,
        store_endpoint,
        gateway,
        token,
        jwt,
        _dir: dir,
    }
}

fn range(i: usize) -> RangeRequest {
    RangeRequest {
        key: format!("/bench/k{:04}", i % KEYS).into_bytes().into(),
        ..Default::default()
    }
}

/// `clients` tasks reading for `secs`: (reads/s, p50 µs, p99 µs).
async fn drive(s: &Stack, clients: usize, secs: u64) -> (f64, f64, f64) {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(KvClient::new(
            as_token(&s.gateway.endpoint, s.token.as_deref()).await,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (c, mut kv) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c * 97;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = kv.range(range(i)).await.expect("read");
                assert_eq!(r.into_inner().kvs.len(), 1);
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                i += 1;
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

async fn root_auth(endpoint: &str) -> AuthClient<Authed> {
    let t = authenticate(endpoint, "root").await;
    AuthClient::new(as_token(endpoint, Some(&t)).await)
}

/// One round: grant, wait until served, revoke at the store, time until
/// the gateway refuses.
async fn revoke_round(s: &Stack) -> Duration {
    let mut root = root_auth(&s.store_endpoint).await;
    root.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: "rv".into(),
        perm: Some(prefix_perm(PermType::Read, "/rv/")),
    })
    .await
    .unwrap();
    // A fresh token per round: a JWT names the auth revision it was
    // issued at, so one from before the grant is "old" once it moved.
    let token = authenticate(&s.gateway.endpoint, "bench").await;
    let mut kv = KvClient::new(as_token(&s.gateway.endpoint, Some(&token)).await);
    let get = || RangeRequest {
        key: b"/rv/k".to_vec().into(),
        ..Default::default()
    };
    lookout_testkit::wait_for(
        "the grant reaches the gateway",
        Duration::from_secs(10),
        || {
            let mut kv = kv.clone();
            async move { kv.range(get()).await.ok().map(|_| ()) }
        },
    )
    .await;
    root.role_revoke_permission(AuthRoleRevokePermissionRequest {
        role: "rv".into(),
        key: b"/rv/".to_vec().into(),
        range_end: b"/rv0".to_vec().into(),
    })
    .await
    .unwrap();
    let revoked = Instant::now();
    let deadline = revoked + Duration::from_secs(10);
    loop {
        match kv.range(get()).await {
            Ok(_) => {}
            Err(e)
                if e.code() == tonic::Code::PermissionDenied
                    || e.message() == "etcdserver: revision of auth store is old" =>
            {
                return revoked.elapsed();
            }
            Err(e) => panic!("{}: unexpected {e:?}", s.name),
        }
        assert!(Instant::now() < deadline, "{}: never refused", s.name);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = opts();
    let keys = tempfile::tempdir().unwrap();
    let (jwt_store, jwt_gateway) = rsa_keys(keys.path());
    let simple = Some(("simple".to_string(), "simple".to_string()));
    let stacks = [
        stack(&o.bin, "auth off", false, None).await,
        stack(&o.bin, "simple token", false, simple.clone()).await,
        stack(&o.bin, "jwt", false, Some((jwt_store, jwt_gateway))).await,
    ];
    assert!(stacks[2].jwt, "the JWT stack issued a JWT");
    println!("## cached linearizable reads through a gateway, auth off vs on");
    let mut results: std::collections::BTreeMap<(usize, usize), Vec<f64>> = Default::default();
    for run in 0..o.repeat {
        for &c in &o.clients {
            for k in 0..stacks.len() {
                let s = &stacks[(k + run) % stacks.len()];
                let (rate, p50, p99) = drive(s, c, o.seconds).await;
                println!(
                    "run {run} reads/{c} {}: {rate:.0} reads/s p50 {p50:.0} us p99 {p99:.0} us",
                    s.name
                );
                results
                    .entry((c, (k + run) % stacks.len()))
                    .or_default()
                    .push(rate);
            }
        }
    }
    println!(
        "\nmedian of {} runs (reads/s), ratio = auth on / auth off",
        o.repeat
    );
    for &c in &o.clients {
        let off = median(results[&(c, 0)].clone());
        let mut line = format!("clients {c:>3}: auth off {off:>8.0}");
        for (k, s) in stacks.iter().enumerate().skip(1) {
            let on = median(results[&(c, k)].clone());
            line += &format!("  {} {on:>8.0} ratio {:.3}", s.name, on / off);
        }
        println!("{line}");
    }
    let etcd = stack(&o.bin, "gateway over etcd 3.4 (simple)", true, simple).await;
    println!("\n## role revoke-permission at the store -> the gateway refuses the next read");
    for s in [&stacks[1], &stacks[2], &etcd] {
        let mut took = Vec::new();
        for _ in 0..o.rounds {
            took.push(revoke_round(s).await.as_secs_f64() * 1e3);
        }
        let max = took.iter().copied().fold(0.0, f64::max);
        let min = took.iter().copied().fold(f64::MAX, f64::min);
        println!(
            "{:<32} rounds {:>3}: min {min:>6.0} ms  median {:>6.0} ms  max {max:>6.0} ms",
            if std::ptr::eq(s, &etcd) {
                s.name
            } else if s.jwt {
                "gateway over lookout store (jwt)"
            } else {
                "gateway over lookout store (simple)"
            },
            o.rounds,
            median(took.clone()),
        );
    }
}
