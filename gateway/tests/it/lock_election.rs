//! etcd's Lock and Election services through the Rust `etcd-client`
//! crate's `LockClient`, `ElectionClient` and `MaintenanceClient`,
//! unchanged: one scenario run against real etcd 3.4, `lookout store`, a
//! gateway over `lookout store`, a gateway over etcd and `lookout dev`, each run written down as a transcript (keys
//! with lease IDs named, answers, errors) and compared with etcd's line by
//! line.

use std::time::Duration;

use etcd_client::{
    Client, ElectionClient, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions,
};
use lookout_testkit::EtcdServer;

use crate::harness::*;

/// Bound on each wait of the scenario (generous: the suite runs beside
/// heavy builds on two cores).
const T: Duration = Duration::from_secs(30);

/// The transcript of one run, with each lease ID written as its name.
#[derive(Default)]
struct Transcript {
    lines: Vec<String>,
    leases: Vec<(String, String)>,
}

impl Transcript {
    fn lease(&mut self, name: &str, id: i64) {
        self.leases.push((format!("{id:x}"), format!("<{name}>")));
    }

    fn say(&mut self, line: impl Into<String>) {
        let mut l = line.into();
        for (hex, name) in &self.leases {
            l = l.replace(hex, name);
        }
        eprintln!("  {l}");
        self.lines.push(l);
    }

    fn outcome<T>(
        &mut self,
        what: &str,
        r: Result<T, etcd_client::Error>,
        ok: impl Fn(T) -> String,
    ) {
        match r {
            Ok(v) => {
                let s = ok(v);
                self.say(format!("{what}: ok {s}"));
            }
            Err(e) => self.say(format!("{what}: {}", error_text(&e))),
        }
    }
}

fn error_text(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("error {:?} {:?}", s.code(), s.message()),
        other => format!("error {other}"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// How many keys live under `prefix`.
async fn count(c: &mut Client, prefix: &str) -> i64 {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .unwrap()
    .count()
}

async fn wait_count(endpoint: &str, prefix: &str, n: i64) {
    lookout_testkit::wait_for(&format!("{n} keys under {prefix}"), T, || {
        let (ep, p) = (endpoint.to_string(), prefix.to_string());
        async move {
            let mut c = Client::connect([ep], None).await.ok()?;
            (count(&mut c, &p).await == n).then_some(())
        }
    })
    .await;
}

async fn scenario(endpoint: &str) -> Vec<String> {
    let mut c = Client::connect([endpoint], None).await.unwrap();
    let mut t = Transcript::default();
    let mut leases = Vec::new();
    for (i, name) in ["L1", "L2", "L3", "L4"].iter().enumerate() {
        let id = c.lease_grant(30 + i as i64, None).await.unwrap().id();
        t.lease(name, id);
        leases.push(id);
    }
    let (l1, l2, l3, l4) = (leases[0], leases[1], leases[2], leases[3]);
    let mut lock = c.lock_client();

    // Uncontended, then re-entrant for the same lease (etcd keeps its place).
    let k1 = lock
        .lock("l1", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap()
        .key()
        .to_vec();
    t.say(format!("lock l1 L1: {}", text(&k1)));
    t.outcome(
        "lock l1 L1 again",
        lock.lock("l1", Some(LockOptions::new().with_lease(l1)))
            .await,
        |r| text(r.key()),
    );

    // A second lease queues until the holder unlocks.
    let ep = endpoint.to_string();
    let waiter = tokio::spawn(async move {
        let mut c = Client::connect([ep], None).await.unwrap();
        c.lock("l1", Some(LockOptions::new().with_lease(l2))).await
    });
    wait_count(endpoint, "l1/", 2).await;
    t.say(format!("waiter queued, done: {}", waiter.is_finished()));
    t.outcome("unlock L1", lock.unlock(k1.clone()).await, |_| {
        String::new()
    });
    let got = tokio::time::timeout(T, waiter).await.unwrap().unwrap();
    t.outcome("lock l1 L2 after unlock", got, |r| text(r.key()));

    // A holder whose lease is revoked releases the lock.
    let k3 = lock
        .lock("l2", Some(LockOptions::new().with_lease(l3)))
        .await
        .unwrap();
    t.say(format!("lock l2 L3: {}", text(k3.key())));
    let ep = endpoint.to_string();
    let waiter = tokio::spawn(async move {
        let mut c = Client::connect([ep], None).await.unwrap();
        c.lock("l2", Some(LockOptions::new().with_lease(l4))).await
    });
    wait_count(endpoint, "l2/", 2).await;
    c.lease_revoke(l3).await.unwrap();
    let got = tokio::time::timeout(T, waiter).await.unwrap().unwrap();
    t.outcome("lock l2 L4 after L3 revoked", got, |r| text(r.key()));

    // A waiter that gives up leaves no key behind.
    let ep = endpoint.to_string();
    let waiter = tokio::spawn(async move {
        let mut c = Client::connect([ep], None).await.unwrap();
        c.lock("l2", Some(LockOptions::new().with_lease(l1))).await
    });
    wait_count(endpoint, "l2/", 2).await;
    waiter.abort();
    wait_count(endpoint, "l2/", 1).await;
    t.say("abandoned waiter's key removed");

    // A lease that does not exist, a lock without a lease, unlocking nothing.
    t.outcome(
        "lock with an unknown lease",
        lock.lock("l3", Some(LockOptions::new().with_lease(0x7777)))
            .await,
        |r| text(r.key()),
    );
    let r = lock.lock("l4", None).await.unwrap();
    t.say(format!(
        "lock without a lease: key under l4/ {}",
        text(r.key()).starts_with("l4/") && r.key().len() > 3
    ));
    let ttl = c
        .lease_time_to_live(i64::from_str_radix(&text(&r.key()[3..]), 16).unwrap(), None)
        .await
        .unwrap();
    t.say(format!("its lease was granted 60s: {}", ttl.granted_ttl()));
    t.outcome("unlock a missing key", lock.unlock("nope/1").await, |_| {
        String::new()
    });
    t.outcome("unlock an empty key", lock.unlock("").await, |_| {
        String::new()
    });

    // Election.
    let mut el: ElectionClient = c.election_client();
    let r = el.campaign("e", "v1", l1).await.unwrap();
    let leader1: LeaderKey = r.leader().unwrap().clone();
    t.say(format!(
        "campaign e L1: name {} key {} lease {}",
        text(leader1.name()),
        text(leader1.key()),
        leader1.lease() == l1
    ));
    let l = el.leader("e").await.unwrap();
    t.say(format!("leader e: {}", text(l.kv().unwrap().value())));
    let mut obs = el.observe("e").await.unwrap();
    let first = tokio::time::timeout(T, obs.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    t.say(format!("observe: {}", text(first.kv().unwrap().value())));

    let ep = endpoint.to_string();
    let second = tokio::spawn(async move {
        let mut c = Client::connect([ep], None).await.unwrap();
        c.campaign("e", "v2", l2).await
    });
    wait_count(endpoint, "e/", 2).await;
    t.outcome(
        "proclaim v1b",
        el.proclaim(
            "v1b",
            Some(ProclaimOptions::new().with_leader(leader1.clone())),
        )
        .await,
        |_| String::new(),
    );
    let m = tokio::time::timeout(T, obs.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    t.say(format!("observe: {}", text(m.kv().unwrap().value())));
    t.outcome(
        "resign L1",
        el.resign(Some(ResignOptions::new().with_leader(leader1.clone())))
            .await,
        |_| String::new(),
    );
    let won = tokio::time::timeout(T, second).await.unwrap().unwrap();
    t.outcome("campaign e L2 after resign", won, |r| {
        text(r.leader().map(|l| l.key()).unwrap_or_default())
    });
    let m = tokio::time::timeout(T, obs.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    t.say(format!("observe: {}", text(m.kv().unwrap().value())));
    t.outcome("leader e", el.leader("e").await, |r| {
        text(r.kv().map(|kv| kv.value()).unwrap_or_default())
    });

    // Errors.
    t.outcome("leader of nobody", el.leader("nobody").await, |_| {
        String::new()
    });
    t.outcome(
        "proclaim as a former leader",
        el.proclaim(
            "x",
            Some(ProclaimOptions::new().with_leader(leader1.clone())),
        )
        .await,
        |_| String::new(),
    );
    t.outcome(
        "proclaim without a leader",
        el.proclaim("x", None).await,
        |_| String::new(),
    );
    t.outcome("resign without a leader", el.resign(None).await, |_| {
        String::new()
    });
    t.outcome(
        "resign as a former leader",
        el.resign(Some(ResignOptions::new().with_leader(leader1)))
            .await,
        |_| String::new(),
    );
    t.outcome(
        "campaign with an unknown lease",
        el.campaign("e2", "v", 0x7777).await,
        |_| String::new(),
    );

    // Deleting every candidate under an observer: the next candidate is
    // the next leader it reports.
    c.delete("e/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let r = el.campaign("e", "v3", l4).await.unwrap();
    t.say(format!(
        "campaign e L4 after the delete: {}",
        text(r.leader().unwrap().key())
    ));
    let m = tokio::time::timeout(T, obs.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    t.say(format!("observe: {}", text(m.kv().unwrap().value())));
    // MaintenanceClient: status, alarms, hashes, defragment, a snapshot.
    let mut m = c.maintenance_client();
    t.outcome("status", m.status().await, |r| {
        let v = r.version().rsplit_once('.').map(|(mm, _)| mm.to_string());
        format!("version {v:?}, leader known {}", r.leader() != 0)
    });
    t.outcome(
        "alarms",
        m.alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await,
        |r| format!("{} raised", r.alarms().len()),
    );
    t.outcome("hash_kv", m.hash_kv(0).await, |r| {
        format!("compacted at {}", r.compact_version())
    });
    t.outcome("defragment", m.defragment().await, |_| String::new());
    let mut snap = m.snapshot().await.unwrap();
    let mut bytes = 0usize;
    while let Some(chunk) = tokio::time::timeout(T, snap.message())
        .await
        .unwrap()
        .unwrap()
    {
        bytes += chunk.blob().len();
    }
    t.say(format!("snapshot has bytes: {}", bytes > 0));
    t.lines
}

fn compare(target: &str, ours: &[String], theirs: &[String]) {
    for (i, (a, b)) in theirs.iter().zip(ours).enumerate() {
        assert_eq!(a, b, "{target}, line {i}: etcd said {a:?}, Lookout {b:?}");
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{target}: transcripts differ in length"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_and_election_match_etcd_on_every_target() {
    let etcd = EtcdServer::start().await;
    eprintln!("etcd:");
    let theirs = scenario(&etcd.endpoint).await;

    let dir = tempfile::tempdir().unwrap();
    let store = crate::support::start_store(dir.path(), None).await;
    eprintln!("lookout store:");
    compare("lookout store", &scenario(&store.endpoint).await, &theirs);

    let dir2 = tempfile::tempdir().unwrap();
    let store2 = crate::support::start_store(dir2.path(), None).await;
    let gw = TestGateway::start(&[&store2.endpoint]).await;
    eprintln!("gateway over lookout store:");
    compare(
        "gateway over lookout store",
        &scenario(&gw.endpoint).await,
        &theirs,
    );

    let etcd2 = EtcdServer::start().await;
    let gw2 = TestGateway::start(&[&etcd2.endpoint]).await;
    eprintln!("gateway over etcd:");
    compare("gateway over etcd", &scenario(&gw2.endpoint).await, &theirs);

    // `lookout dev`: the store and a gateway in one process.
    let dir3 = tempfile::tempdir().unwrap();
    let dev = crate::support::start_dev(dir3.path()).await;
    let endpoint = dev.endpoint.clone();
    lookout_testkit::wait_for("dev gateway synced", WAIT, || {
        let ep = endpoint.clone();
        async move { health_ok(&ep).await.then_some(()) }
    })
    .await;
    eprintln!("lookout dev:");
    compare("lookout dev", &scenario(&endpoint).await, &theirs);
}
