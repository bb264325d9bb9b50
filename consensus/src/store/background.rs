//! A member's background tasks: bootstrap, following raft's metrics (term,
//! leader), the leader's lease expiry and auto-compaction, and publishing
//! this member's name and client URLs into the membership.
//!
//! Every task holds a `Weak` store and ends when the store is dropped or
//! closed. Decisions that change data (a lease expired, a compaction is
//! due) are taken by the leader alone and go through the log as requests.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::config::AutoCompaction;
use crate::mvcc::request::Request;
use crate::raft::cluster;
use crate::raft::peer::Forward;
use crate::raft::type_config::MemberNode;
use crate::store::{Inner, Store, upgrade};

impl Store {
    pub(crate) fn start_background(&self) {
        let w = std::sync::Arc::downgrade(&self.inner);
        tokio::spawn(bootstrap(w.clone()));
        tokio::spawn(follow_metrics(w.clone()));
        tokio::spawn(crate::lease::expiry::expiry_loop(w.clone()));
        tokio::spawn(publish_loop(w.clone()));
        if let Some(ac) = self.inner.cfg.auto_compaction {
            tokio::spawn(auto_compaction(w, ac));
        }
    }

    /// This member as it should appear in the membership.
    pub(crate) fn own_node(&self) -> MemberNode {
        MemberNode {
            name: self.inner.cfg.name.clone(),
            peer_urls: self.inner.cfg.peer_urls.clone(),
            client_urls: self.inner.cfg.client_urls.clone(),
        }
    }
}

/// A fresh member of a new cluster writes the initial membership (every
/// initial member writes the same one); a member alone in its cluster
/// elects itself at once instead of waiting an election timeout.
async fn bootstrap(w: Weak<Inner>) {
    let Some(store) = upgrade(&w) else { return };
    let cfg = &store.inner.cfg;
    let raft = store.raft().clone();
    if cfg.initial_cluster_new {
        let members =
            cluster::initial_members(&cfg.effective_initial_cluster(), &cfg.cluster_token);
        if !members.contains_key(&store.member_id()) {
            tracing::error!(
                member = %format!("{:x}", store.member_id()),
                "this member's --initial-advertise-peer-urls are not in --initial-cluster"
            );
        }
        match raft.is_initialized().await {
            Ok(false) => match raft.initialize(members).await {
                Ok(()) => tracing::info!("bootstrapped a new cluster"),
                Err(e) => tracing::debug!(error = %e, "initialize"),
            },
            Ok(true) => {}
            Err(_) => return,
        }
    }
    let m = raft.metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    if voters == [store.member_id()] && m.current_leader.is_none() {
        let _ = raft.trigger().elect().await;
    }
}

/// Keeps the term and leader atomics current; a member that becomes
/// leader gives every lease a fresh TTL (etcd's lessor promotion).
async fn follow_metrics(w: Weak<Inner>) {
    let Some(store) = upgrade(&w) else { return };
    let mut m = store.raft().metrics();
    drop(store);
    let mut was_leader = false;
    let mut last_leader = None;
    loop {
        let (term, leader, state) = {
            let cur = m.borrow_and_update();
            (cur.current_term, cur.current_leader, cur.state)
        };
        let Some(store) = upgrade(&w) else { return };
        // etcd counts a leader that differs from the last one seen,
        // including the first and one after a spell without a leader.
        if leader.is_some() && leader != last_leader {
            let m = store.metrics();
            m.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        last_leader = leader;
        store.inner.term.store(term, Ordering::Relaxed);
        store
            .inner
            .leader
            .store(leader.unwrap_or(0), Ordering::Relaxed);
        let leading = state == ServerState::Leader;
        if leading && !was_leader {
            tracing::info!(term, "became leader; leases get a fresh TTL");
            store.shared().refresh_leases();
        }
        was_leader = leading;
        drop(store);
        if m.changed().await.is_err() {
            return;
        }
    }
}

/// Once running, a member makes sure the membership shows its name and
/// client URLs (a member added with `member add` has neither yet).
async fn publish_loop(w: Weak<Inner>) {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::time::sleep(delay).await;
        let Some(store) = upgrade(&w) else { return };
        let me = store.own_node();
        let id = store.member_id();
        let current = store
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned();
        delay = match current {
            Some(n) if n == me => Duration::from_secs(2),
            Some(_) => match store.to_leader(Forward::Publish { id, node: me }).await {
                Ok(_) => {
                    tracing::info!("published member attributes");
                    Duration::from_millis(200)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes");
                    Duration::from_millis(500)
                }
            },
            // Not (yet) a member: an added member waits to be replicated to.
            None => Duration::from_millis(500),
        };
    }
}

/// etcd's auto-compaction, run by the leader.
///
/// `periodic`: every `retention / 10` (at most hourly), compact to the
/// revision that was current `retention` ago. `revision`: every 5 minutes,
/// compact to `current - retention`.
async fn auto_compaction(w: Weak<Inner>, ac: AutoCompaction) {
    let tick = match ac {
        AutoCompaction::Periodic(r) => {
            (r / 10).clamp(Duration::from_millis(100), Duration::from_secs(3600))
        }
        AutoCompaction::Revision(_) => Duration::from_secs(300),
    };
    // Revisions seen at each tick, to know what was current `retention` ago.
    let mut seen: BTreeMap<Instant, i64> = BTreeMap::new();
    let mut last_compacted = 0i64;
    loop {
        tokio::time::sleep(tick).await;
        let Some(store) = upgrade(&w) else { return };
        let now = Instant::now();
        let rev = store.revision();
        seen.insert(now, rev);
        if !store.is_leader() {
            continue;
        }
        let target = match ac {
            AutoCompaction::Periodic(r) => {
                let Some(cutoff) = now.checked_sub(r) else {
                    continue;
                };
                let old: Vec<Instant> = seen.range(..=cutoff).map(|(t, _)| *t).collect();
                let target = old.last().and_then(|t| seen.get(t)).copied();
                // Keep the newest entry at or before the cutoff only.
                for t in old.iter().rev().skip(1) {
                    seen.remove(t);
                }
                match target {
                    Some(t) => t,
                    None => continue,
                }
            }
            AutoCompaction::Revision(n) => rev - n,
        };
        let compacted = store.snapshot().compact_rev;
        if target <= compacted.max(last_compacted) || target <= 1 {
            continue;
        }
        match store.propose(Request::Compact { revision: target }).await {
            Ok(r) => match r.response {
                Ok(_) => {
                    tracing::info!(revision = target, "auto-compacted");
                    last_compacted = target;
                }
                Err(e) => tracing::debug!(revision = target, error = %e, "auto-compaction skipped"),
            },
            Err(e) => tracing::warn!(revision = target, error = %e, "auto-compaction failed"),
        }
    }
}
