//! gRPC connections to a target. One [`Channel`] is one HTTP/2 connection:
//! scenarios open exactly as many as asked for and spread work over them.

use std::time::Duration;

use futures::StreamExt;
use lookout_proto::pb;
use tonic::transport::{Channel, Endpoint};

use crate::error::{LoadError, Result};

/// How many connects run at once while opening many connections, so a
/// 500-connection setup does not look like a SYN flood to the server.
const CONNECT_PARALLELISM: usize = 32;

/// Normalises "host:port" or "http://host:port" to a URI.
///
/// # Errors
/// [`LoadError::Endpoint`] for anything else (https is not supported: the
/// comparisons run on loopback without TLS).
pub fn endpoint_uri(endpoint: &str) -> Result<String> {
    let e = endpoint.trim();
    if e.starts_with("https://") {
        return Err(LoadError::Endpoint {
            endpoint: e.into(),
            reason: "TLS is not supported".into(),
        });
    }
    let uri = if e.starts_with("http://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    uri.parse::<http::Uri>()
        .map_err(|err| LoadError::Endpoint {
            endpoint: e.into(),
            reason: err.to_string(),
        })?;
    Ok(uri)
}

/// "host:port" from either form, for HTTP clients and reports.
pub fn host_port(endpoint: &str) -> String {
    endpoint
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Opens one HTTP/2 connection (to the first of comma-separated
/// endpoints).
///
/// # Errors
/// [`LoadError::Connect`] when the connection cannot be made in 5 s.
pub async fn connect(endpoint: &str) -> Result<Channel> {
    let endpoint = endpoint.split(',').next().unwrap_or(endpoint);
    let uri = endpoint_uri(endpoint)?;
    let ep = Endpoint::from_shared(uri).map_err(|e| LoadError::Endpoint {
        endpoint: endpoint.into(),
        reason: e.to_string(),
    })?;
    ep.connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Fixed windows, larger than h2's 64 KiB default so a stream carrying
        // many watchers is not throttled by flow control. Not the adaptive
        // (BDP) window: its PINGs make grpc-go servers (grpc-proxy) answer
        // GOAWAY ENHANCE_YOUR_CALM "too_many_pings" under load, which would
        // be the load generator's fault, not the target's.
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20))
        // No HTTP/2 keep-alive either: a server too busy to answer a PING
        // must show up as puts that time out and events that arrive late,
        // not as the load generator hanging up on it.
        .connect()
        .await
        .map_err(|source| LoadError::Connect {
            endpoint: endpoint.into(),
            source,
        })
}

/// Opens `n` separate connections, spread in turn over comma-separated
/// endpoints (etcd's `--endpoints` form).
///
/// # Errors
/// The first connection error.
pub async fn connect_many(endpoint: &str, n: usize) -> Result<Vec<Channel>> {
    let all: Vec<&str> = endpoint
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .collect();
    futures::stream::iter(0..n)
        .map(|i| connect(all.get(i % all.len().max(1)).copied().unwrap_or(endpoint)))
        .buffered(CONNECT_PARALLELISM)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// A KV client with message limits large enough for big lists.
pub fn kv(ch: &Channel) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::new(ch.clone())
        .max_decoding_message_size(512 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A Watch client with a decode limit above anything etcd sends.
pub fn watch(ch: &Channel) -> pb::watch_client::WatchClient<Channel> {
    pb::watch_client::WatchClient::new(ch.clone()).max_decoding_message_size(512 << 20)
}

/// The latest revision in `[key, range_end)` (the newest mod_revision), and
/// the store's current revision, by one linearizable Range.
///
/// # Errors
/// [`LoadError::Rpc`] or [`LoadError::Timeout`].
pub async fn prefix_head(ch: &Channel, key: &[u8], range_end: &[u8]) -> Result<(i64, i64)> {
    use pb::range_request::{SortOrder, SortTarget};
    let req = pb::RangeRequest {
        key: bytes::Bytes::copy_from_slice(key),
        range_end: bytes::Bytes::copy_from_slice(range_end),
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Mod as i32,
        keys_only: true,
        ..Default::default()
    };
    let resp = tokio::time::timeout(Duration::from_secs(15), kv(ch).range(req))
        .await
        .map_err(|_| LoadError::Timeout {
            what: "range for the prefix head".into(),
            secs: 15.0,
        })?
        .map_err(|s| LoadError::rpc("range (prefix head)", s))?
        .into_inner();
    let store_rev = resp.header.map(|h| h.revision).unwrap_or(0);
    let head = resp.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0);
    Ok((head, store_rev))
}

/// The store's current revision (a linearizable Range on an unused key).
///
/// # Errors
/// [`LoadError::Rpc`] or [`LoadError::Timeout`].
pub async fn current_revision(ch: &Channel) -> Result<i64> {
    let req = pb::RangeRequest {
        key: bytes::Bytes::from_static(b"\0lookout-load/revision-probe"),
        count_only: true,
        ..Default::default()
    };
    let resp = tokio::time::timeout(Duration::from_secs(15), kv(ch).range(req))
        .await
        .map_err(|_| LoadError::Timeout {
            what: "range for the current revision".into(),
            secs: 15.0,
        })?
        .map_err(|s| LoadError::rpc("range (current revision)", s))?
        .into_inner();
    Ok(resp.header.map(|h| h.revision).unwrap_or(0))
}
