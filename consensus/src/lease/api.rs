//! The store's lease API: grant and revoke go through raft; keep-alive
//! and time-to-live are answered by the leader, which owns expiry.

use std::sync::atomic::Ordering;
use std::time::Instant;

use lookout_proto::pb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};

use crate::auth::AuthInfo;
use crate::config::MAX_LEASE_TTL;
use crate::error::{Error, Result};
use crate::mvcc::request::{Request, Response};
use crate::raft::peer::{Forward, ForwardOk};
use crate::store::{Store, unexpected};

impl Store {
    /// # Errors
    /// TTL too large, ID already in use, no space, storage failure, no
    /// leader or timeout.
    pub async fn lease_grant(&self, req: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        self.check_quota(16).await?;
        let ttl = req.ttl.max(self.inner.cfg.min_lease_ttl);
        let id = if req.id != 0 {
            req.id
        } else {
            let st = self.snapshot();
            loop {
                let id = rand::random::<i64>() & i64::MAX;
                if id != 0 && !st.leases.contains_key(&id) {
                    break id;
                }
            }
        };
        match self
            .propose(Request::LeaseGrant { id, ttl })
            .await?
            .response?
        {
            Response::LeaseGrant(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Revokes a lease, deleting its keys in one revision.
    ///
    /// # Errors
    /// Lease not found, storage failure, no leader or timeout.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.lease_revoke_as(None, id).await
    }

    /// [`Store::lease_revoke`] as `who`: write permission on every key
    /// attached to the lease, checked at apply.
    ///
    /// # Errors
    /// As [`Store::lease_revoke`], plus the permission check's.
    pub async fn lease_revoke_as(
        &self,
        who: Option<&AuthInfo>,
        id: i64,
    ) -> Result<LeaseRevokeResponse> {
        match self
            .propose(self.wrap(who, Request::LeaseRevoke { id }))
            .await?
            .response?
        {
            Response::LeaseRevoke(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// The leader's side of a keep-alive: renews to the full TTL; an
    /// unknown lease answers TTL 0, as etcd does. So does a lease past its
    /// deadline: its revoke is in flight (or about to be), and renewing it
    /// now would promise a TTL the revoke is about to break (etcd's Renew
    /// waits for that revoke and answers "not found").
    pub(crate) fn keep_alive_local(&self, id: i64) -> i64 {
        let st = self.snapshot();
        let mut exp = self.inner.shared.expiry.lock();
        let now = Instant::now();
        if st.leases.contains_key(&id) && exp.get(&id).is_none_or(|d| *d > now) {
            let m = &self.inner.shared.metrics;
            m.leases_renewed.fetch_add(1, Ordering::Relaxed);
        }
        match (st.leases.get(&id), exp.get_mut(&id)) {
            (Some(_), Some(deadline)) if *deadline <= now => 0,
            (Some(l), Some(deadline)) => {
                *deadline = crate::mvcc::state::LeaseState::deadline(Instant::now(), l.ttl);
                l.ttl
            }
            (Some(l), None) => {
                exp.insert(
                    id,
                    crate::mvcc::state::LeaseState::deadline(Instant::now(), l.ttl),
                );
                l.ttl
            }
            _ => 0,
        }
    }

    /// The leader's remaining TTL of a lease (whole seconds, rounded down).
    pub(crate) fn time_to_live_local(&self, id: i64) -> i64 {
        self.inner.shared.expiry.lock().get(&id).map_or(0, |d| {
            d.saturating_duration_since(Instant::now()).as_secs() as i64
        })
    }

    /// One keep-alive, answered by the leader (which owns lease expiry).
    ///
    /// # Errors
    /// No leader or timeout.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        let ttl = match self.to_leader(Forward::KeepAlive(id)).await? {
            ForwardOk::Ttl(t) => t,
            other => return Err(Error::Internal(format!("unexpected answer {other:?}"))),
        };
        Ok(LeaseKeepAliveResponse {
            header: self.header(self.revision()),
            id,
            ttl,
        })
    }

    /// Remaining TTL (from the leader) and optionally the keys; an unknown
    /// lease answers TTL -1, as etcd 3.4.
    ///
    /// # Errors
    /// No leader or timeout.
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        self.lease_time_to_live_as(None, req).await
    }

    /// [`Store::lease_time_to_live`] as `who`: listing the keys needs read
    /// permission on each (etcd 3.4's later fix; 3.4.23 listed them to
    /// anyone).
    ///
    /// # Errors
    /// As [`Store::lease_time_to_live`], plus the permission check's.
    pub async fn lease_time_to_live_as(
        &self,
        who: Option<&AuthInfo>,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        if req.keys {
            let st = self.snapshot();
            if st.auth.enabled {
                let Some(w) = who else {
                    return Err(Error::UserEmpty);
                };
                if let Some(l) = st.leases.get(&req.id) {
                    for k in l.keys.iter() {
                        crate::auth::check_range(&st.auth, Some(w), k, &[])?;
                    }
                }
            }
        }
        let remaining = match self.to_leader(Forward::TimeToLive(req.id)).await? {
            ForwardOk::Ttl(t) => t,
            other => return Err(Error::Internal(format!("unexpected answer {other:?}"))),
        };
        let st = self.snapshot();
        let Some(l) = st.leases.get(&req.id) else {
            return Ok(LeaseTimeToLiveResponse {
                header: self.header(st.rev),
                id: req.id,
                ttl: -1,
                ..Default::default()
            });
        };
        Ok(LeaseTimeToLiveResponse {
            header: self.header(st.rev),
            id: req.id,
            ttl: remaining,
            granted_ttl: l.ttl,
            keys: if req.keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    pub async fn lease_leases(&self) -> LeaseLeasesResponse {
        let st = self.snapshot();
        LeaseLeasesResponse {
            header: self.header(st.rev),
            leases: st.leases.keys().map(|&id| LeaseStatus { id }).collect(),
        }
    }
}
