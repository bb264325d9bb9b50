//! `--resolver-prefix`: gateways find each other through the store, as etcd
//! grpc-proxy's do. Each registers `<prefix>/<advertise url>` with a lease it
//! keeps alive; MemberList lists every registration, so a client that syncs
//! its endpoints (clientv3 `AutoSyncInterval`, `etcdctl member list`)
//! spreads over all live gateways. A gateway that dies stops renewing; its
//! key goes with its lease, and with it its MemberList entry.
//!
//! ```text
//!   register task: grant(ttl) ─> put(prefix/url, {"Op":0,"Addr":url,"Metadata":..}, lease)
//!                  └─ every ttl/3: keep-alive (through the hub) ─ TTL 0 or error ─> again (1/s)
//!   shutdown: revoke (the entry disappears at once)
//!   MemberList: the prefix from the cache (or the store, if outside the cached
//!               prefixes) ─> one member per key
//! ```
//!
//! The value is the JSON of grpc-go's `naming.Update`, what etcd's resolver
//! and grpc-proxy write, so their tooling reads our registrations too.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use lookout_cache::{KeyRange, prefix_end};
use lookout_proto::pb::{LeaseGrantRequest, LeaseRevokeRequest, Member, PutRequest, RangeRequest};

use crate::config::member_id;
use crate::keepalive::KeepAliveHub;
use crate::shared::Shared;

/// The name MemberList shows for a gateway (here, beside the registration
/// that carries it, so `cluster.rs` names this file and not the reverse).
pub(crate) const GATEWAY_MEMBER_NAME: &str = "lookout-gateway";

/// The key a gateway registers under.
pub(crate) fn key(prefix: &str, url: &str) -> String {
    format!("{prefix}/{url}")
}

/// grpc-go `naming.Update{Op: Add, Addr, Metadata}` as JSON, with etcd
/// grpc-proxy's metadata (`{"name": ...}`).
fn value(url: &str) -> String {
    let meta = serde_json::json!({ "name": GATEWAY_MEMBER_NAME }).to_string();
    serde_json::json!({ "Op": 0, "Addr": url, "Metadata": meta }).to_string()
}

/// Runs the registration until the task is aborted (shutdown revokes the
/// lease separately, see [`deregister`]).
pub(crate) async fn run(shared: Arc<Shared>, prefix: String) {
    let ttl = shared.config.resolver_ttl.as_secs().max(1) as i64;
    let key = key(&prefix, &shared.advertise_url);
    loop {
        if shared.is_shutting_down() {
            return;
        }
        match register_once(&shared, &key, ttl).await {
            Ok(lease) => {
                tracing::info!(%key, lease, ttl, "registered under the resolver prefix");
                keep(&shared, lease, ttl).await;
                tracing::warn!(%key, "registration lease lost; registering again");
            }
            Err(e) => tracing::warn!(%key, error = %e, "resolver registration failed"),
        }
        // etcd's proxy retries at most once per second.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn register_once(shared: &Shared, key: &str, ttl: i64) -> Result<i64, tonic::Status> {
    let up = shared.cache.upstream();
    let lease = up.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await?.id;
    shared.resolver_lease.store(lease, Relaxed);
    up.put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from(value(&shared.advertise_url)),
        lease,
        ..Default::default()
    })
    .await?;
    Ok(lease)
}

/// Renews `lease` every third of its TTL until it is gone.
async fn keep(shared: &Arc<Shared>, lease: i64, ttl: i64) {
    let every = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    loop {
        tokio::time::sleep(every).await;
        match KeepAliveHub::keep_alive(shared, lease).await {
            Ok(r) if r.ttl > 0 => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, lease, "registration keep-alive failed");
                // The lease may still be alive: try again before its TTL
                // runs out, give up (re-register) once it must be gone.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(ttl as u64);
                loop {
                    if tokio::time::Instant::now() >= deadline {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match KeepAliveHub::keep_alive(shared, lease).await {
                        Ok(r) if r.ttl > 0 => break,
                        Ok(_) => return,
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

/// Revokes the registration lease (graceful shutdown), bounded.
pub(crate) async fn deregister(shared: &Shared) {
    let lease = shared.resolver_lease.swap(0, Relaxed);
    if lease == 0 {
        return;
    }
    let revoke = shared
        .cache
        .upstream()
        .lease_revoke(LeaseRevokeRequest { id: lease });
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), revoke).await {
        tracing::warn!(error = %e, lease, "revoking the registration lease failed");
    }
}

/// Every gateway registered under `prefix`, from the cache when it holds
/// the prefix (else from the store).
///
/// # Errors
/// The store's status when the prefix has to be read from it.
pub(crate) async fn members(shared: &Shared, prefix: &str) -> Result<Vec<Member>, tonic::Status> {
    let start = format!("{prefix}/");
    let key = Bytes::copy_from_slice(start.as_bytes());
    let end = prefix_end(start.as_bytes()).unwrap_or_else(|| Bytes::from_static(&[0]));
    let req = RangeRequest {
        key: key.clone(),
        range_end: end.clone(),
        ..Default::default()
    };
    let range = KeyRange::from_request(&key, &end);
    let resp = if shared.cache.covers(&range) && shared.cache.is_ready() {
        shared.cache.range(&req)?
    } else {
        shared.cache.upstream().range(req).await?
    };
    let mut out: Vec<Member> = resp
        .kvs
        .iter()
        .filter_map(|kv| {
            let url = std::str::from_utf8(&kv.key[start.len()..])
                .ok()?
                .to_string();
            let name = name_of(&kv.value).unwrap_or_else(|| GATEWAY_MEMBER_NAME.to_string());
            Some(Member {
                id: member_id(&url),
                name,
                peer_ur_ls: Vec::new(),
                client_ur_ls: vec![url],
                is_learner: false,
            })
        })
        .collect();
    out.sort_by(|a, b| a.client_ur_ls.cmp(&b.client_ur_ls));
    Ok(out)
}

/// The `name` inside a registration's `Metadata` (itself JSON text).
fn name_of(value: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let meta = v.get("Metadata")?;
    let meta: serde_json::Value = match meta {
        serde_json::Value::String(s) => serde_json::from_str(s).ok()?,
        other => other.clone(),
    };
    Some(meta.get("name")?.as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_grpc_naming_json() {
        assert_eq!(key("/gw", "http://127.0.0.1:1"), "/gw/http://127.0.0.1:1");
        let v = value("http://127.0.0.1:1");
        let parsed: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(parsed["Op"], 0);
        assert_eq!(parsed["Addr"], "http://127.0.0.1:1");
        assert_eq!(name_of(v.as_bytes()).as_deref(), Some(GATEWAY_MEMBER_NAME));
        // etcd grpc-proxy's own registrations read the same way.
        let proxy = br#"{"Op":0,"Addr":"http://h:2","Metadata":"{\"name\":\"host-a\"}"}"#;
        assert_eq!(name_of(proxy).as_deref(), Some("host-a"));
        assert_eq!(name_of(b"not json"), None);
    }
}
