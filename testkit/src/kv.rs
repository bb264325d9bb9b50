//! Plain etcd v3 KV calls over lookout-proto for tests, and a deterministic
//! write workload. Shared by every crate's integration tests so that the
//! same workload runs against etcd, the store and the gateway.

use std::time::Duration;

use bytes::Bytes;
use lookout_proto::pb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, kv_client::KvClient,
    request_op,
};
use tonic::transport::Channel;

/// A key or value from text.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A plaintext channel to `endpoint` ("host:port"), connected within 2 s.
pub async fn channel(endpoint: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint URL")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect")
}

pub async fn kv(endpoint: &str) -> KvClient<Channel> {
    KvClient::new(channel(endpoint).await)
}

/// Puts `key` = `value`; the revision it was written at.
pub async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    kv.put(PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    })
    .await
    .expect("put")
    .into_inner()
    .header
    .expect("header")
    .revision
}

/// A physical compaction at `revision`.
pub async fn compact(kv: &mut KvClient<Channel>, revision: i64) {
    kv.compact(CompactionRequest {
        revision,
        physical: true,
    })
    .await
    .expect("compact");
}

/// A Txn with no compares running `success`; its revision.
pub async fn txn(kv: &mut KvClient<Channel>, success: Vec<RequestOp>) -> i64 {
    kv.txn(TxnRequest {
        success,
        ..Default::default()
    })
    .await
    .expect("txn")
    .into_inner()
    .header
    .expect("header")
    .revision
}

/// A put as a txn operation.
pub fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })),
    }
}

/// A deterministic mix over `keys` keys under `prefix`: puts of growing
/// values, deletes, and two-key transactions (several events in one
/// revision). Returns the revision after the last operation.
pub async fn churn(
    kv: &mut KvClient<Channel>,
    prefix: &str,
    ops: usize,
    keys: usize,
    seed: u64,
) -> i64 {
    let mut x = seed | 1;
    let mut rev = 0;
    for i in 0..ops {
        // xorshift64: the same sequence for the same seed on every target.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = format!("{prefix}{:03}", x % keys as u64);
        let r = match x % 10 {
            0 => {
                kv.delete_range(DeleteRangeRequest {
                    key: b(&k),
                    ..Default::default()
                })
                .await
                .expect("delete")
                .into_inner()
                .header
                .expect("header")
                .revision
            }
            1 => {
                let k2 = format!("{prefix}{:03}", (x >> 8) % keys as u64);
                let mut ops = vec![put_op(&k, &format!("txn-{i}"))];
                if k2 != k {
                    ops.push(put_op(&k2, &format!("txn2-{i}")));
                }
                txn(kv, ops).await
            }
            _ => put(kv, &k, &format!("v{i}-{}", "x".repeat((x % 64) as usize))).await,
        };
        rev = rev.max(r);
    }
    rev
}
