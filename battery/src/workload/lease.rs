//! A lease holder: grants a lease, attaches two keys under /l/, keeps it
//! alive every second for a while, then revokes it or lets it go, and
//! starts over. Every keep-alive answer is recorded with the time its
//! request was sent.

use std::time::Duration;

use lookout_proto::pb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    lease_client::LeaseClient,
};
use lookout_testkit::kv_linearizability::{Op, Request};
use lookout_testkit::lease_check::{KeepAlive, LeaseHistory};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{OP_TIMEOUT, Stop, backoff, pause_or_stop};
use crate::client::{Clock, Pool, b, exec};

/// The TTL asked for (seconds); pauses last longer.
pub const TTL: i64 = 3;

/// What one holder did.
#[derive(Debug, Clone, Default)]
pub struct LeaseOut {
    pub leases: Vec<LeaseHistory>,
    /// Its puts with a lease, for the linearizability checker.
    pub ops: Vec<Op>,
}

type KeepAliveStream = (
    mpsc::Sender<LeaseKeepAliveRequest>,
    Streaming<LeaseKeepAliveResponse>,
);

/// Holds leases until stopped.
pub async fn run(id: usize, mut pool: Pool, seed: u64, clock: Clock, mut stop: Stop) -> LeaseOut {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = LeaseOut::default();
    let mut failures = 0u32;
    let mut n = 0u64;
    while !*stop.borrow() {
        let granted = clock.now();
        let grant = tokio::time::timeout(
            OP_TIMEOUT,
            LeaseClient::new(pool.channel()).lease_grant(LeaseGrantRequest { ttl: TTL, id: 0 }),
        )
        .await;
        let grant = match grant {
            Ok(Ok(r)) => r.into_inner(),
            _ => {
                failures += 1;
                pool.rotate();
                if pause_or_stop(&mut stop, backoff(failures).max(Duration::from_millis(50))).await
                {
                    break;
                }
                continue;
            }
        };
        failures = 0;
        n += 1;
        let mut h = LeaseHistory {
            id: grant.id,
            holder: format!("h{id}"),
            granted,
            ttl: grant.ttl,
            keepalives: Vec::new(),
            revoked: None,
            released: None,
        };
        for k in 0..2 {
            let req = Request::Put {
                key: b(&format!("/l/h{id}/{n}.{k}")),
                value: b(&format!("h{id}.{n}.{k}")),
                lease: grant.id,
            };
            let session = pool.session();
            let call = clock.now();
            let res = exec(&mut pool.kv(), &req, OP_TIMEOUT).await;
            out.ops.push(Op {
                client: id,
                session,
                call,
                ret: clock.now(),
                req,
                out: res,
            });
        }
        let hold = Duration::from_millis(rng.random_range(4_000..10_000));
        let until = clock.now() + hold.as_nanos() as u64;
        let mut ka: Option<KeepAliveStream> = None;
        let mut gone = false;
        while clock.now() < until && !*stop.borrow() && !gone {
            let sent = clock.now();
            match keep_alive(&mut ka, &pool, grant.id).await {
                Some(r) => {
                    h.keepalives.push(KeepAlive {
                        sent,
                        received: clock.now(),
                        ttl: r.ttl,
                    });
                    gone = r.ttl <= 0;
                    if pause_or_stop(&mut stop, Duration::from_millis(1_000)).await {
                        break;
                    }
                }
                None => {
                    ka = None;
                    pool.rotate();
                    if pause_or_stop(&mut stop, Duration::from_millis(20)).await {
                        break;
                    }
                }
            }
        }
        drop(ka);
        if !gone && !*stop.borrow() && rng.random_bool(0.5) {
            h.revoked = Some(clock.now());
            let _ = tokio::time::timeout(
                OP_TIMEOUT,
                LeaseClient::new(pool.channel()).lease_revoke(LeaseRevokeRequest { id: grant.id }),
            )
            .await;
        } else {
            h.released = Some(clock.now());
        }
        out.leases.push(h);
    }
    out
}

/// One keep-alive on the open stream, or on a new one (the request is
/// queued before the stream opens: etcd answers the headers with the first
/// response). None: no answer within 1.5 s.
async fn keep_alive(
    ka: &mut Option<KeepAliveStream>,
    pool: &Pool,
    id: i64,
) -> Option<LeaseKeepAliveResponse> {
    let wait = Duration::from_millis(1_500);
    if ka.is_none() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(LeaseKeepAliveRequest { id }).await.ok()?;
        let st = tokio::time::timeout(
            wait,
            LeaseClient::new(pool.channel()).lease_keep_alive(ReceiverStream::new(rx)),
        )
        .await
        .ok()?
        .ok()?
        .into_inner();
        *ka = Some((tx, st));
    } else {
        let (tx, _) = ka.as_mut()?;
        tx.send(LeaseKeepAliveRequest { id }).await.ok()?;
    }
    let (_, st) = ka.as_mut()?;
    tokio::time::timeout(wait, st.message()).await.ok()?.ok()?
}
