//! What every battery client shares: a clock, a pool of endpoints it moves
//! through when one fails, and the translation between the checkers' plain
//! requests and etcd's wire messages.
//!
//! ```text
//!   checker Request ──to_proto──> KV call on pool.current() ──> Outcome
//!        (every error of a write is Unknown: it may have been applied)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lookout_proto::pb::{
    self, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    kv_client::KvClient, request_op, response_op,
};
use lookout_testkit::kv_history::{Kv, Nanos};
use lookout_testkit::kv_linearizability::{
    CmpResult, CmpTarget, Outcome, Request, Response, TxnOp, TxnResult,
};
use tonic::transport::Channel;

/// Nanoseconds since the run started, shared by every task of a run.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn now(&self) -> Nanos {
        self.0.elapsed().as_nanos() as Nanos
    }

    pub fn at(&self, t: Instant) -> Nanos {
        t.saturating_duration_since(self.0).as_nanos() as Nanos
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// One server a client may talk to.
#[derive(Debug, Clone)]
pub struct Ep {
    /// "g0", "m2".
    pub name: String,
    pub addr: String,
    /// Index among all servers (members, then gateways), for sessions.
    pub index: u64,
    /// The server's restart count (shared with the topology).
    pub incarnation: Arc<AtomicU64>,
}

/// A lazily connected channel to `addr`, with HTTP/2 keepalive so that a
/// paused or cut-off server is noticed within about two seconds.
pub fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint URL")
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Endpoints a client moves through, starting at `first`.
#[derive(Debug, Clone)]
pub struct Pool {
    eps: Vec<Ep>,
    channels: Vec<Channel>,
    at: usize,
}

impl Pool {
    pub fn new(eps: Vec<Ep>, first: usize) -> Self {
        let channels = eps.iter().map(|e| channel(&e.addr)).collect();
        let at = first % eps.len().max(1);
        Self { eps, channels, at }
    }

    pub fn ep(&self) -> &Ep {
        &self.eps[self.at]
    }

    pub fn channel(&self) -> Channel {
        self.channels[self.at].clone()
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel()).max_decoding_message_size(64 << 20)
    }

    /// Moves to the next endpoint (after a failure).
    pub fn rotate(&mut self) {
        self.at = (self.at + 1) % self.eps.len();
    }

    /// The current server and its incarnation: read-your-writes holds
    /// within one.
    pub fn session(&self) -> u64 {
        let e = self.ep();
        (e.index << 32) | e.incarnation.load(Ordering::SeqCst)
    }
}

fn compare_to_proto(c: &lookout_testkit::kv_linearizability::Compare) -> pb::Compare {
    let (target, union) = match &c.target {
        CmpTarget::Value(v) => (
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(v.clone()),
        ),
        CmpTarget::Version(x) => (
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(*x),
        ),
        CmpTarget::Create(x) => (
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(*x),
        ),
        CmpTarget::Mod(x) => (
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(*x),
        ),
        CmpTarget::Lease(x) => (
            compare::CompareTarget::Lease,
            compare::TargetUnion::Lease(*x),
        ),
    };
    let result = match c.result {
        CmpResult::Equal => compare::CompareResult::Equal,
        CmpResult::Greater => compare::CompareResult::Greater,
        CmpResult::Less => compare::CompareResult::Less,
        CmpResult::NotEqual => compare::CompareResult::NotEqual,
    };
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: c.key.clone(),
        range_end: Bytes::new(),
        target_union: Some(union),
    }
}

fn op_to_proto(op: &TxnOp) -> RequestOp {
    let r = match op {
        TxnOp::Put { key, value, lease } => request_op::Request::RequestPut(PutRequest {
            key: key.clone(),
            value: value.clone(),
            lease: *lease,
            ..Default::default()
        }),
        TxnOp::Delete { key, range_end } => {
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.clone(),
                range_end: range_end.clone(),
                ..Default::default()
            })
        }
        TxnOp::Range { key, range_end } => request_op::Request::RequestRange(RangeRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            ..Default::default()
        }),
    };
    RequestOp { request: Some(r) }
}

fn kvs(v: &[lookout_proto::mvccpb::KeyValue]) -> Vec<Kv> {
    v.iter().map(Kv::from).collect()
}

fn rev(h: Option<pb::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision)
}

/// Sends `req` on `kv`, bounded by `timeout`. A write's error is
/// `Unknown`, a read's `Failed`.
pub async fn exec(kv: &mut KvClient<Channel>, req: &Request, timeout: Duration) -> Outcome {
    let fut = async {
        match req {
            Request::Put { key, value, lease } => kv
                .put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    lease: *lease,
                    ..Default::default()
                })
                .await
                .map(|r| Response::Put {
                    rev: rev(r.into_inner().header),
                }),
            Request::Delete { key, range_end } => kv
                .delete_range(DeleteRangeRequest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    Response::Delete {
                        rev: rev(r.header),
                        deleted: r.deleted,
                    }
                }),
            Request::Txn {
                compares,
                success,
                failure,
            } => kv
                .txn(TxnRequest {
                    compare: compares.iter().map(compare_to_proto).collect(),
                    success: success.iter().map(op_to_proto).collect(),
                    failure: failure.iter().map(op_to_proto).collect(),
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    Response::Txn {
                        rev: rev(r.header),
                        succeeded: r.succeeded,
                        results: r
                            .responses
                            .iter()
                            .map(|o| match &o.response {
                                Some(response_op::Response::ResponseRange(x)) => {
                                    TxnResult::Range { kvs: kvs(&x.kvs) }
                                }
                                Some(response_op::Response::ResponseDeleteRange(x)) => {
                                    TxnResult::Delete { deleted: x.deleted }
                                }
                                _ => TxnResult::Put,
                            })
                            .collect(),
                    }
                }),
            Request::Range {
                key,
                range_end,
                revision,
                serializable,
            } => kv
                .range(RangeRequest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    revision: *revision,
                    serializable: *serializable,
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    Response::Range {
                        rev: rev(r.header),
                        kvs: kvs(&r.kvs),
                    }
                }),
        }
    };
    let res = tokio::time::timeout(timeout, fut).await;
    let write = req.may_write();
    match res {
        Ok(Ok(r)) => Outcome::Ok(r),
        Ok(Err(s)) => {
            let m = format!("{:?}: {}", s.code(), s.message());
            if write {
                Outcome::Unknown(m)
            } else {
                Outcome::Failed(m)
            }
        }
        Err(_) => {
            let m = format!("no answer in {timeout:?}");
            if write {
                Outcome::Unknown(m)
            } else {
                Outcome::Failed(m)
            }
        }
    }
}

/// A key or value from text.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}
