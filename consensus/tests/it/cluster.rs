//! Raft clusters of `lookout store` child processes on loopback: leader
//! failure, catch-up by snapshot, identical watches on every member.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lookout_proto::pb::{
    HashKvRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, watch_request,
};
use lookout_testkit::cluster::{Cluster, Program, status};
use lookout_testkit::lookout::lookout_bin;
use lookout_testkit::wait_for;
use tokio::sync::Mutex;
use tonic::transport::Channel;

pub fn program() -> Program {
    let bin = lookout_bin();
    assert!(
        bin.exists(),
        "{} missing: cargo build -p lookout-gateway --bin lookout",
        bin.display()
    );
    Program::Lookout(bin)
}

pub async fn channel(endpoint: &str, timeout: Duration) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy()
}

pub async fn kv(endpoint: &str) -> KvClient<Channel> {
    KvClient::new(channel(endpoint, Duration::from_secs(10)).await)
}

/// Every key the writer loops of these tests put ("w..."), read from
/// `endpoint`: key -> (value, mod_revision).
pub async fn written(endpoint: &str) -> BTreeMap<String, (String, i64)> {
    let r = kv(endpoint)
        .await
        .range(RangeRequest {
            key: "w".into(),
            range_end: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.kvs
        .into_iter()
        .map(|kv| {
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
            (text(&kv.key), (text(&kv.value), kv.mod_revision))
        })
        .collect()
}

/// Waits until every running member has applied the same revision and
/// returns it with each member's HashKV at it.
pub async fn converged_hashes(c: &mut Cluster) -> (i64, Vec<(String, u32)>) {
    let mut eps = Vec::new();
    for m in &mut c.members {
        if m.is_running() {
            eps.push((m.name.clone(), m.endpoint.clone()));
        }
    }
    let rev = wait_for(
        "every member at the same revision",
        Duration::from_secs(60),
        || {
            let eps = eps.clone();
            async move {
                let mut revs = Vec::new();
                for (_, ep) in &eps {
                    revs.push(status(ep).await?.header?.revision);
                }
                (revs.iter().all(|r| *r == revs[0]) && revs[0] > 1).then_some(revs[0])
            }
        },
    )
    .await;
    let mut hashes = Vec::new();
    for (name, ep) in &eps {
        let mut m = MaintenanceClient::new(channel(ep, Duration::from_secs(10)).await);
        let h = m
            .hash_kv(HashKvRequest { revision: rev })
            .await
            .unwrap()
            .into_inner();
        hashes.push((name.clone(), h.hash));
    }
    (rev, hashes)
}

/// Writers put `w<task>/<n>` to members in turn; every acknowledged key
/// and value is recorded. A failed put is unknown and not recorded.
async fn writers(
    endpoints: Vec<String>,
    tasks: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (endpoints, stop, acked) = (endpoints.clone(), stop.clone(), acked.clone());
        handles.push(tokio::spawn(async move {
            let mut clients = Vec::new();
            for ep in &endpoints {
                clients.push(KvClient::new(channel(ep, Duration::from_secs(3)).await));
            }
            let mut at = t % clients.len();
            // Bounded: stops when told, and never past 20 000 puts.
            for n in 0..20_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{t}/{n:05}");
                let value = format!("v{t}-{n}");
                let r = clients[at]
                    .put(PutRequest {
                        key: key.clone().into(),
                        value: value.clone().into(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => {
                        acked.lock().await.insert(key, value);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                at = (at + 1) % clients.len();
            }
        }));
    }
    handles
}

async fn acked_len(acked: &Arc<Mutex<BTreeMap<String, String>>>) -> usize {
    acked.lock().await.len()
}

async fn leader_failover(n: usize) {
    leader_failover_with(n, &[]).await;
}

async fn leader_failover_with(n: usize, extra: &[&str]) -> Cluster {
    let mut c = Cluster::start(program(), n, extra).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let handles = writers(c.endpoints(), 4, stop.clone(), acked.clone()).await;
    let a = acked.clone();
    wait_for("writes before the kill", Duration::from_secs(60), || {
        let a = a.clone();
        async move { (acked_len(&a).await >= 200).then_some(()) }
    })
    .await;

    let killed_at = Instant::now();
    c.kill9(leader);
    let new_leader = c.wait_leader(Duration::from_secs(10)).await;
    let elected_in = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        elected_in < Duration::from_secs(3),
        "new leader after {elected_in:?}"
    );

    let before = acked_len(&acked).await;
    let a = acked.clone();
    wait_for(
        "writes after the new leader",
        Duration::from_secs(60),
        || {
            let a = a.clone();
            async move { (acked_len(&a).await >= before + 200).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }

    // The killed member comes back and catches up.
    c.restart(leader).await;
    let (rev, hashes) = converged_hashes(&mut c).await;
    assert!(
        hashes.iter().all(|(_, h)| *h == hashes[0].1),
        "HashKV differs at revision {rev}: {hashes:?}"
    );

    // No acknowledged write is lost: read everything back from each member.
    let acked = acked.lock().await.clone();
    for ep in c.endpoints() {
        let have = written(&ep).await;
        for (k, v) in &acked {
            assert_eq!(
                have.get(k).map(|(v, _)| v),
                Some(v),
                "acknowledged {k} lost on {ep}"
            );
        }
    }
    c
}

/// Members that do not serve the append stream (as members built before
/// it): every leader, the first and the one after the kill, must notice
/// and replicate with unary calls, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_the_append_stream_get_unary_appends() {
    let mut c = leader_failover_with(3, &["--experimental-peer-append-stream=false"]).await;
    let fell_back = c
        .members
        .iter()
        .filter(|m| {
            m.log_text()
                .contains("peer has no append stream; unary appends")
        })
        .count();
    assert!(
        fell_back >= 2,
        "both leaders fell back to unary appends; {fell_back} member logs say so"
    );
    // And a member that does serve it is still fed by stream or unary
    // alike: a write after a restart with the flag at its default commits.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    c.members[follower]
        .args
        .retain(|a| a != "--experimental-peer-append-stream=false");
    c.restart(follower).await;
    let ep = c.members[leader].endpoint.clone();
    lookout_testkit::kv::put(&mut kv(&ep).await, "w-mixed", "1").await;
    let (rev, hashes) = converged_hashes(&mut c).await;
    assert!(
        hashes.iter().all(|(_, h)| *h == hashes[0].1),
        "HashKV differs at revision {rev}: {hashes:?}"
    );
}

/// A paused leader (SIGSTOP: sockets open, nothing answered) must not
/// hold up writes once the others elected a new one. The first writes
/// through a follower are forwarded to the paused leader and stay unknown
/// until it resumes or they time out; the writes after them must commit
/// through the new leader while the old one is still paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_the_old_leader_is_paused() {
    let mut c = Cluster::start(program(), 3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;
    let ep = c.members[follower].endpoint.clone();
    lookout_testkit::kv::put(&mut kv(&ep).await, "before", "1").await;
    c.pause(leader, true);
    let paused_at = Instant::now();
    // More concurrent writes than the proposer has submitter slots, all
    // sent while the follower still names the paused member as leader.
    let mut stuck = Vec::new();
    for i in 0..8 {
        let mut k = kv(&ep).await;
        stuck.push(tokio::spawn(async move {
            k.put(PutRequest {
                key: format!("stuck-{i}").into(),
                value: bytes::Bytes::from_static(b"x"),
                ..Default::default()
            })
            .await
        }));
    }
    // Then writes until one commits, each bounded; the old leader stays
    // paused until one has (or until the bound, failing the test).
    let bound = Duration::from_secs(6);
    let mut attempt = 0;
    let committed = loop {
        attempt += 1;
        let mut k = KvClient::new(channel(&ep, Duration::from_millis(1500)).await);
        let r = k
            .put(PutRequest {
                key: format!("after-{attempt}").into(),
                value: bytes::Bytes::from_static(b"y"),
                ..Default::default()
            })
            .await;
        if r.is_ok() {
            break Some(paused_at.elapsed());
        }
        if paused_at.elapsed() >= bound {
            break None;
        }
    };
    c.pause(leader, false);
    let Some(took) = committed else {
        panic!(
            "no write committed in {bound:?} while the old leader was paused; follower log:\n{}",
            c.members[follower].log_text()
        );
    };
    eprintln!("first write after the pause committed {took:?} after it");
    // The writes sent to the paused leader end one way or the other
    // (committed, or an error: their outcome was unknown), never hang.
    let mut ok = 0;
    for h in stuck {
        let r = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("a write sent to the paused leader never answered")
            .expect("task");
        ok += usize::from(r.is_ok());
    }
    eprintln!("{ok} of 8 writes sent during the pause committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_leader_kill9() {
    leader_failover(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_survive_leader_kill9() {
    leader_failover(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_for_10k_writes_rejoins_by_snapshot() {
    let mut c = Cluster::start(
        program(),
        3,
        &[
            "--snapshot-count=300",
            "--experimental-snapshot-catchup-entries=50",
        ],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let down = (leader + 1) % 3;
    c.kill9(down);
    let live: Vec<String> = (0..3)
        .filter(|i| *i != down)
        .map(|i| c.members[i].endpoint.clone())
        .collect();
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let ep = live[t % live.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut client = kv(&ep).await;
            for i in (t..10_000).step_by(16) {
                client
                    .put(PutRequest {
                        key: format!("snap/{i:05}").into(),
                        value: vec![b'x'; 100].into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    c.restart(down).await;
    let (rev, hashes) = converged_hashes(&mut c).await;
    assert!(rev >= 10_001);
    assert!(
        hashes.iter().all(|(_, h)| *h == hashes[0].1),
        "HashKV differs at revision {rev}: {hashes:?}"
    );
    let log = c.members[down].log_text();
    assert!(
        log.contains("installed snapshot"),
        "the member caught up without a snapshot:\n{log}"
    );
    let mut client = kv(&c.members[down].endpoint).await;
    let r = client
        .range(RangeRequest {
            key: "snap/".into(),
            range_end: "snap0".into(),
            count_only: true,
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 10_000);
}

/// Every member's watch of the same prefix yields the same events in the
/// same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_every_member_see_identical_events() {
    use lookout_proto::pb::{DeleteRangeRequest, LeaseGrantRequest, lease_client::LeaseClient};
    let c = Cluster::start(program(), 3, &[]).await;
    let mut streams = Vec::new();
    for ep in c.endpoints() {
        let mut w = WatchClient::new(channel(&ep, Duration::from_secs(60)).await);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: "e/".into(),
                    range_end: "e0".into(),
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
        let s = w
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        streams.push((s, tx));
    }
    // Created responses first, so every watch starts at the same point.
    for (s, _) in &mut streams {
        let r = s.next().await.unwrap().unwrap();
        assert!(r.created);
    }
    let eps = c.endpoints();
    let mut lease = LeaseClient::new(channel(&eps[1], Duration::from_secs(10)).await);
    let l = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner();
    for i in 0..150usize {
        let mut client = kv(&eps[i % 3]).await;
        let key = format!("e/{}", i % 17);
        if i % 7 == 3 {
            client
                .delete_range(DeleteRangeRequest {
                    key: key.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        } else {
            let lease = if i % 10 == 0 { l.id } else { 0 };
            let r = client
                .put(PutRequest {
                    key: key.into(),
                    value: format!("{i}").into(),
                    lease,
                    ..Default::default()
                })
                .await;
            // On a loaded machine the 2 s lease may expire before the loop
            // ends; such a put writes nothing on any member, which is still
            // an identical history everywhere.
            match r {
                Ok(_) => {}
                Err(e) if lease != 0 && e.code() == tonic::Code::NotFound => {}
                Err(e) => panic!("put {i}: {e}"),
            }
        }
    }
    // The lease expires (decided by the leader): its keys are deleted in
    // one revision that every member must also deliver.
    let mut client = kv(&eps[0]).await;
    wait_for("lease expiry", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let r = client
                .range(RangeRequest {
                    key: "e/".into(),
                    range_end: "e0".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            r.kvs.iter().all(|kv| kv.lease == 0).then_some(())
        }
    })
    .await;
    let last = client
        .range(RangeRequest {
            key: "e/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let mut seen: Vec<Vec<(i64, i32, String, String)>> = Vec::new();
    for (s, _tx) in &mut streams {
        let mut events: Vec<(i64, i32, String, String)> = Vec::new();
        // Bounded: stops at the last revision or after 30 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        while events.last().is_none_or(|(r, ..)| *r < last) && Instant::now() < deadline {
            let Ok(Some(Ok(r))) = tokio::time::timeout(Duration::from_secs(5), s.next()).await
            else {
                break;
            };
            for e in r.events {
                let kv = e.kv.unwrap();
                events.push((
                    kv.mod_revision,
                    e.r#type,
                    String::from_utf8(kv.key.to_vec()).unwrap(),
                    String::from_utf8(kv.value.to_vec()).unwrap()
                        + "|"
                        + &e.prev_kv
                            .map(|p| p.mod_revision.to_string())
                            .unwrap_or_default(),
                ));
            }
        }
        seen.push(events);
    }
    // Deletes of absent keys make no event; the lease expiry makes some.
    assert!(seen[0].len() >= 130, "{} events", seen[0].len());
    assert!(seen[0].iter().any(|e| e.1 == 1), "no delete seen");
    assert_eq!(seen[0], seen[1], "member 0 vs member 1");
    assert_eq!(seen[0], seen[2], "member 0 vs member 2");
}

/// Keep-alives sent to a follower reach the leader, which owns expiry; a
/// lease nobody keeps alive expires (decided by the leader) everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_through_a_follower_hold_a_lease() {
    use lookout_proto::pb::{
        LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, lease_client::LeaseClient,
    };
    let mut c = Cluster::start(program(), 3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = c.members[(leader + 1) % 3].endpoint.clone();
    let mut lease = LeaseClient::new(channel(&follower, Duration::from_secs(10)).await);
    let mut kvc = kv(&follower).await;
    let held = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let dropped = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    for (k, l) in [("held", held), ("dropped", dropped)] {
        kvc.put(PutRequest {
            key: k.into(),
            value: "v".into(),
            lease: l,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Four seconds of keep-alives every 500 ms (twice the TTL).
    for _ in 0..8 {
        tx.send(LeaseKeepAliveRequest { id: held }).await.unwrap();
        let r = responses.next().await.unwrap().unwrap();
        assert_eq!(r.ttl, 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: held,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ttl.ttl >= 1 && ttl.keys.len() == 1, "{ttl:?}");
    let count = |k: &'static str| {
        let mut kvc = kvc.clone();
        async move {
            kvc.range(RangeRequest {
                key: k.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count
        }
    };
    assert_eq!(count("held").await, 1);
    assert_eq!(count("dropped").await, 0);
    let gone = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: dropped,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.ttl, -1);
}

/// With the quorum gone, writes fail with etcd's Unavailable errors and
/// serializable reads are still served locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_like_etcd() {
    let mut c = Cluster::start(
        program(),
        3,
        &["--election-timeout=500", "--heartbeat-interval=50"],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let mut client = kv(&c.members[(leader + 1) % 3].endpoint).await;
    client
        .put(PutRequest {
            key: "q".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            c.kill9(i);
        }
    }
    let mut client =
        KvClient::new(channel(&c.members[survivor].endpoint, Duration::from_secs(30)).await);
    let err = client
        .put(PutRequest {
            key: "q".into(),
            value: "2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        ["etcdserver: no leader", "etcdserver: request timed out"].contains(&err.message()),
        "{err:?}"
    );
    let r = client
        .range(RangeRequest {
            key: "q".into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kvs[0].value.as_ref(), b"1");
}
