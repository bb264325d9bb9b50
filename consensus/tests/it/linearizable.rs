//! Clients doing puts, linearizable gets and compare-and-swap txns on a
//! few keys while the leader is killed; the recorded history must be
//! linearizable (testkit's checker). A write that fails or times out is
//! recorded as unknown, never as absent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout_proto::pb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, kv_client::KvClient,
    request_op,
};
use lookout_testkit::cluster::Cluster;
use lookout_testkit::linearizability::{Input, Op, Output, check};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::Mutex;

use crate::cluster::{channel, program};

const KEYS: usize = 3;
const CLIENTS: usize = 5;
/// Client-side deadline of one operation.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

fn cas(key: &str, expect: &Option<String>, new: &str) -> TxnRequest {
    let cmp = match expect {
        Some(v) => Compare {
            key: key.to_string().into(),
            target: compare::CompareTarget::Value as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Value(v.clone().into())),
            ..Default::default()
        },
        None => Compare {
            key: key.to_string().into(),
            target: compare::CompareTarget::Version as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Version(0)),
            ..Default::default()
        },
    };
    TxnRequest {
        compare: vec![cmp],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_string().into(),
                value: new.to_string().into(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    }
}

async fn client_loop(
    id: usize,
    endpoints: Vec<String>,
    start: Instant,
    until: Instant,
    history: Arc<Mutex<Vec<Op>>>,
) {
    let mut rng = StdRng::seed_from_u64(id as u64 * 7919 + 1);
    let mut clients: Vec<KvClient<Channel>> = Vec::new();
    for ep in &endpoints {
        clients.push(KvClient::new(channel(ep, OP_TIMEOUT).await));
    }
    let mut at = id % clients.len();
    let mut last_seen: Vec<Option<String>> = vec![None; KEYS];
    // Bounded by time and by count.
    for n in 0..5_000usize {
        if Instant::now() >= until {
            break;
        }
        let k = rng.random_range(0..KEYS);
        let key = format!("lin/{k}");
        let value = format!("c{id}-{n}");
        let roll = rng.random_range(0..10);
        let call = start.elapsed().as_nanos();
        let c = &mut clients[at];
        let (input, output) = if roll < 4 {
            let r = c
                .range(RangeRequest {
                    key: key.clone().into(),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(r) => {
                    let v = r
                        .into_inner()
                        .kvs
                        .first()
                        .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap());
                    last_seen[k] = v.clone();
                    (Input::Get, Output::Get(v))
                }
                // A failed read has no effect: leave it out.
                Err(_) => {
                    at = (at + 1) % clients.len();
                    continue;
                }
            }
        } else if roll < 7 {
            let r = c
                .put(PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(_) => (Input::Put(value), Output::Put),
                Err(_) => (Input::Put(value), Output::Unknown),
            }
        } else {
            let expect = last_seen[k].clone();
            let r = c.txn(cas(&key, &expect, &value)).await;
            let input = Input::Cas {
                expect,
                new: value.clone(),
            };
            match r {
                Ok(r) => {
                    let ok = r.into_inner().succeeded;
                    if ok {
                        last_seen[k] = Some(value);
                    }
                    (input, Output::Cas(ok))
                }
                Err(_) => (input, Output::Unknown),
            }
        };
        let ret = (output != Output::Unknown).then(|| start.elapsed().as_nanos());
        if output == Output::Unknown {
            at = (at + 1) % clients.len();
        }
        history.lock().await.push(Op {
            client: id,
            key,
            input,
            output,
            call,
            ret,
        });
    }
}

use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_with_a_leader_kill_is_linearizable() {
    let mut c = Cluster::start(program(), 3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let history = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let until = start + Duration::from_secs(7);
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        tasks.push(tokio::spawn(client_loop(
            id,
            c.endpoints(),
            start,
            until,
            history.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill9(leader);
    for t in tasks {
        t.await.unwrap();
    }
    let h = history.lock().await.clone();
    let unknown = h.iter().filter(|o| o.output == Output::Unknown).count();
    let after_kill = h
        .iter()
        .filter(|o| o.call > 2_500_000_000 && o.output != Output::Unknown)
        .count();
    assert!(h.len() > 100, "only {} operations", h.len());
    if after_kill <= 10 {
        let logs: Vec<String> = c
            .members
            .iter()
            .map(|m| {
                let t = m.log_text();
                let tail: Vec<&str> = t.lines().rev().take(40).collect();
                format!(
                    "--- {}:\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        panic!(
            "only {after_kill} operations completed after the kill\n{}",
            logs.join("\n")
        );
    }
    eprintln!(
        "{} operations, {unknown} unknown, {after_kill} completed after the kill",
        h.len()
    );
    if let Err(e) = check(&h) {
        panic!("not linearizable ({} ops, {unknown} unknown): {e}", h.len());
    }
}
