//! The gateway's one error type, mapped to a `tonic::Status` once, here.

use lookout_cache::CacheError;

/// Everything the gateway itself can fail with. Cache and upstream errors
/// keep their own status (etcd's code and message) through [`CacheError`].
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// A flag value that is not an address, URL or duration we understand.
    #[error("bad {what} {value:?}: {hint}")]
    BadFlag {
        what: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    Http(std::io::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    /// The gateway is stopping; clients should use another endpoint.
    #[error("lookout: gateway is shutting down")]
    ShuttingDown,
    /// The TLS files of a listener are not usable.
    #[error("TLS: {0}")]
    Tls(#[from] lookout_consensus::tls::TlsError),
    /// `--auth-config` could not be loaded.
    #[error("auth config: {0}")]
    Authz(#[from] crate::auth::AuthzError),
    /// A watch on keys this gateway does not cache (its `--prefix` flags).
    #[error("lookout: key range is outside the prefixes this gateway caches")]
    OutOfScope,
    /// An index filter on keys this gateway does not cache.
    #[error("lookout: an index filter needs a key range inside the prefixes this gateway caches")]
    FilterOutOfScope,
    /// An index filter in a Txn the cache cannot answer (writes, or ranges
    /// it forwards): the store would answer unfiltered.
    #[error(
        "lookout: index filters in a Txn are served only in read-only transactions on cached keys without a revision"
    )]
    FilterInTxn,
}

impl From<GatewayError> for tonic::Status {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Cache(c) => c.into(),
            GatewayError::ShuttingDown => tonic::Status::unavailable(e.to_string()),
            GatewayError::OutOfScope
            | GatewayError::FilterOutOfScope
            | GatewayError::FilterInTxn => tonic::Status::invalid_argument(e.to_string()),
            other => {
                // Startup failures never reach a client; keep a sane code anyway.
                tonic::Status::internal(other.to_string())
            }
        }
    }
}

// Every other status the gateway builds itself, one constructor each, so
// the codes and texts clients match on are all in this file. Messages are
// etcd's (or clientv3's, or tonic's) where the gateway stands in for them;
// changing one changes what clients see.

/// etcd's `ErrFutureRev`: a Range at a revision the store has not reached.
pub(crate) fn future_revision() -> tonic::Status {
    tonic::Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
}

/// The gateway cannot copy the store's users and roles (`why`: the
/// store's answer), so it cannot check anyone.
pub(crate) fn auth_state_unreadable(why: &str) -> tonic::Status {
    tonic::Status::unavailable(format!(
        "lookout: this gateway cannot read the store's users and roles (its --user needs the root role): {why}"
    ))
}

/// The shared revision probe of linearizable reads went away unanswered.
pub(crate) fn read_index_dropped() -> tonic::Status {
    tonic::Status::unavailable("lookout: read index probe dropped")
}

/// tonic's answer to a gRPC path no service serves (an empty message).
pub(crate) fn unimplemented_path() -> tonic::Status {
    tonic::Status::unimplemented("")
}

/// tonic's answer to a request compressed with `encoding`, which no etcd
/// client sends and no service here accepts.
pub(crate) fn compressed_request(encoding: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!(
        "Content is compressed with `{encoding}` which isn't supported"
    ))
}

/// The store serves no index filters; refused rather than answered
/// unfiltered.
pub(crate) fn store_refuses_extensions() -> tonic::Status {
    tonic::Status::invalid_argument(
        "lookout: index filters and initial_state are served by a lookout gateway (lookout gateway --index), not by the store",
    )
}

/// Storm control: `what` has no permit for this request; the hint goes in
/// the message and in `grpc-retry-pushback-ms`.
pub(crate) fn too_many_concurrent(
    what: &str,
    running: usize,
    queued: i64,
    retry_after_ms: u128,
) -> tonic::Status {
    let mut st = tonic::Status::resource_exhausted(format!(
        "lookout: too many concurrent {what} ({running} running, {queued} queued); retry after {retry_after_ms}ms"
    ));
    if let Ok(v) = retry_after_ms.to_string().parse() {
        st.metadata_mut().insert("grpc-retry-pushback-ms", v);
    }
    st
}

/// The one upstream keep-alive stream closed under a waiting request.
pub(crate) fn keepalive_stream_closed() -> tonic::Status {
    tonic::Status::unavailable("lookout: upstream keep-alive stream closed")
}

/// A keep-alive waited past its bound for the store's answer.
pub(crate) fn keepalive_unanswered() -> tonic::Status {
    tonic::Status::unavailable("lookout: no keep-alive answer from the store in time")
}

/// The store ended the upstream keep-alive stream itself.
pub(crate) fn keepalive_ended_by_store() -> tonic::Status {
    tonic::Status::unavailable("lookout: the store closed the keep-alive stream")
}

/// An etcd server error as etcd's Lock and Election services pass it on:
/// through clientv3, so with code Unknown and the message unchanged.
pub(crate) fn as_client_error(message: &str) -> tonic::Status {
    tonic::Status::unknown(message.to_string())
}

/// clientv3's `ErrCompacted`, as Lock/Election report a wait whose watch
/// was compacted away.
pub(crate) fn wait_compacted() -> tonic::Status {
    tonic::Status::unknown("etcdserver: mvcc: required revision has been compacted")
}

/// A Lock/Election wait whose watcher ended without a reason.
pub(crate) fn lost_watcher() -> tonic::Status {
    tonic::Status::unknown("lost watcher waiting for delete")
}

/// A Lock/Election wait whose watch was refused with `reason`.
pub(crate) fn wait_canceled(reason: &str) -> tonic::Status {
    tonic::Status::unknown(reason.to_string())
}

/// etcd's `ErrMissingLeaderKey` (a plain error: gRPC code Unknown).
pub(crate) fn missing_leader() -> tonic::Status {
    tonic::Status::unknown(r#""leader" field must be provided"#)
}

/// `concurrency.ErrElectionNotLeader`.
pub(crate) fn not_leader() -> tonic::Status {
    tonic::Status::unknown("election: not leader")
}

/// `concurrency.ErrElectionNoLeader`.
pub(crate) fn no_leader() -> tonic::Status {
    tonic::Status::unknown("election: no leader")
}

/// tonic's answer to a request message over the decode limit, rewritten
/// as grpc-go (so etcd) answers it: `ResourceExhausted`, "grpc: received
/// message larger than max (N vs. M)" instead of `OutOfRange`, "Error,
/// decoded message length too large: found N bytes, the limit is: M
/// bytes". Clients match on etcd's code, and the metrics count it as etcd
/// does. `headers` are a trailers-only answer's headers or a stream's
/// trailers; anything else is left alone.
pub(crate) fn oversized_as_grpc_go(headers: &mut http::HeaderMap) {
    const OUT_OF_RANGE: &str = "11";
    const TONIC: &str = "Error, decoded message length too large: found ";
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) != Some(OUT_OF_RANGE) {
        return;
    }
    let Some(msg) = headers.get("grpc-message").and_then(|v| v.to_str().ok()) else {
        return;
    };
    // tonic percent-encodes the message (spaces as %20 among others).
    let msg = percent_decode(msg);
    let Some(rest) = msg.strip_prefix(TONIC) else {
        return;
    };
    let mut numbers = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let (Some(found), Some(limit)) = (numbers.next(), numbers.next()) else {
        return;
    };
    let text = format!("grpc: received message larger than max ({found} vs. {limit})");
    if let Ok(v) = http::HeaderValue::from_str(&text) {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert("grpc-message", v);
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod oversized_tests {
    use super::*;

    #[test]
    fn tonic_decode_limit_reads_as_grpc_go() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", "11".parse().unwrap());
        h.insert(
            "grpc-message",
            "Error,%20decoded%20message%20length%20too%20large:%20found%202150413%20bytes,%20the%20limit%20is:%202097152%20bytes"
                .parse()
                .unwrap(),
        );
        oversized_as_grpc_go(&mut h);
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(
            h["grpc-message"],
            "grpc: received message larger than max (2150413 vs. 2097152)"
        );
        // Any other status stays as it is.
        let mut other = http::HeaderMap::new();
        other.insert("grpc-status", "11".parse().unwrap());
        other.insert(
            "grpc-message",
            "etcdserver: mvcc: required revision is a future revision"
                .parse()
                .unwrap(),
        );
        let before = other.clone();
        oversized_as_grpc_go(&mut other);
        assert_eq!(other, before);
    }
}
