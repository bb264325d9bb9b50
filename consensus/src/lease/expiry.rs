//! Lease expiry: the leader's loop that proposes a revoke for every lease
//! past its deadline (the deadlines themselves are kept by the state
//! machine, `raft/sm/`, as it applies grants, keep-alives and revokes).

use std::collections::HashMap;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::mvcc::request::Request;
use crate::store::{Inner, upgrade};

/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// The leader proposes a revoke for every lease past its deadline.
///
/// The deadline stays in the past while the revoke is in flight, so a
/// keep-alive arriving meanwhile finds the lease expired and cannot renew
/// it (the revoke would break the TTL it answered). And the revoke is
/// written only as the leader, never forwarded: a member that was leader
/// and got paused or cut off judges leases by its own stale deadlines, and
/// the new leader, which renewed them, must not commit that verdict.
pub(crate) async fn expiry_loop(w: Weak<Inner>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Revokes proposed and not yet applied: not proposed again for a second.
    let mut proposed: HashMap<i64, Instant> = HashMap::new();
    loop {
        tick.tick().await;
        let Some(store) = upgrade(&w) else { return };
        if !store.is_leader() {
            proposed.clear();
            continue;
        }
        let now = Instant::now();
        let due: Vec<i64> = {
            let exp = store.shared().expiry.lock();
            // The apply removes a revoked lease from the map.
            proposed.retain(|id, at| exp.contains_key(id) && now < *at + Duration::from_secs(1));
            exp.iter()
                .filter(|(id, d)| **d <= now && !proposed.contains_key(*id))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in due {
            proposed.insert(id, now);
            // With auth on, the store revokes as root (etcd's WithRoot):
            // the apply would refuse an anonymous revoke of a lease with
            // keys. A refusal (the auth state moved) is retried later.
            let req = store.as_root(Request::LeaseRevoke { id });
            match store.write_local(vec![req]).await {
                Ok(_) => {
                    let m = store.metrics();
                    m.leases_expired.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(lease = id, "lease expired")
                }
                Err(Error::Stopped) => return,
                Err(e) => tracing::warn!(lease = id, error = %e, "lease expiry failed; retrying"),
            }
        }
    }
}
