//! The Cluster and Maintenance APIs of a member, and the leader's side of
//! every forwarded request.
//!
//! Membership changes run on the leader through openraft (joint
//! consensus): `member add` adds a voter at once (etcd's semantics: the
//! new member then starts with `--initial-cluster-state existing`), or a
//! learner with `--learner`, which `member promote` turns into a voter.

use std::collections::{BTreeMap, BTreeSet};

use lookout_proto::pb::{
    AlarmMember, AlarmRequest, AlarmResponse, HashKvResponse, Member, MemberAddResponse,
    MemberListResponse, MemberPromoteResponse, MemberRemoveResponse, MemberUpdateResponse,
    StatusResponse, alarm_request::AlarmAction,
};
use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use redb::{ReadableDatabase, ReadableTableMetadata};

use crate::error::{Error, Result};
use crate::mvcc::backend::{ALARMS, KV, LEASES};
use crate::mvcc::request::{Request, Response};
use crate::raft::cluster;
use crate::raft::peer::{Forward, ForwardOk};
use crate::raft::type_config::{MemberNode, NodeId, StoredMembership};
use crate::store::{Store, VERSION};

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Error::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => Error::UnhealthyCluster,
            ChangeMembershipError::EmptyMembership(_) => Error::NotEnoughStartedMembers,
            ChangeMembershipError::LearnerNotFound(_) => Error::MemberNotFound,
        },
        RaftError::Fatal(_) => Error::Stopped,
    }
}

impl Store {
    /// The leader's side of a [`Forward`] (also used locally when this
    /// member is the leader). [`Error::NotLeader`] tells the sender to
    /// retry on the current leader: nothing was done.
    pub(crate) async fn handle_forward(&self, f: Forward) -> Result<ForwardOk> {
        if !self.is_leader() {
            return Err(Error::NotLeader);
        }
        match f {
            Forward::Propose(reqs) => Ok(ForwardOk::Replies(
                self.inner.proposer.propose_all(self, reqs).await,
            )),
            Forward::ReadIndex => self.read_index_local().await.map(ForwardOk::Index),
            // Renew only as a leader a quorum still follows: a leader cut
            // off from the others (or paused) would otherwise promise TTLs
            // while the new leader expires the lease on its own schedule.
            // openraft has no CheckQuorum to make it step down, so ask.
            // And only once it applied what its log held when it became
            // leader (etcd's waitAppliedIndex before Renew): that may be a
            // revoke its predecessor proposed, and renewing first promises
            // a TTL the revoke then breaks (battery seed 13: a new leader
            // answered TTL 3, then the old term's revoke deleted the keys).
            Forward::KeepAlive(id) => {
                let index = self.read_index_local().await?;
                self.inner
                    .raft
                    .wait(Some(self.inner.cfg.request_timeout()))
                    .applied_index_at_least(Some(index), "keep-alive")
                    .await
                    .map_err(|_| Error::Timeout)?;
                Ok(ForwardOk::Ttl(self.keep_alive_local(id)))
            }
            Forward::TimeToLive(id) => Ok(ForwardOk::Ttl(self.time_to_live_local(id))),
            Forward::MemberAdd { peer_urls, learner } => self
                .member_add_local(peer_urls, learner)
                .await
                .map(ForwardOk::Member),
            Forward::MemberRemove(id) => {
                self.member_remove_local(id).await.map(|_| ForwardOk::Done)
            }
            Forward::MemberPromote(id) => {
                self.member_promote_local(id).await.map(|_| ForwardOk::Done)
            }
            Forward::MemberUpdate { id, peer_urls } => {
                let mut node = self.node_of(id).ok_or(Error::MemberNotFound)?;
                node.peer_urls = peer_urls;
                self.set_node(id, node).await.map(|_| ForwardOk::Done)
            }
            Forward::Publish { id, node } => {
                let cur = self.node_of(id).ok_or(Error::MemberNotFound)?;
                // Only the name and client URLs are the member's to set.
                let node = MemberNode {
                    peer_urls: cur.peer_urls,
                    ..node
                };
                self.set_node(id, node).await.map(|_| ForwardOk::Done)
            }
        }
    }

    fn membership(&self) -> std::sync::Arc<StoredMembership> {
        self.raft().metrics().borrow().membership_config.clone()
    }

    fn node_of(&self, id: NodeId) -> Option<MemberNode> {
        self.membership().membership().get_node(&id).cloned()
    }

    async fn set_node(&self, id: NodeId, node: MemberNode) -> Result<()> {
        self.raft()
            .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), true)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    async fn member_add_local(&self, peer_urls: Vec<String>, learner: bool) -> Result<NodeId> {
        let id = cluster::member_id(&peer_urls, &self.config().cluster_token);
        let m = self.membership();
        for (nid, n) in m.membership().nodes() {
            if *nid == id {
                return Err(Error::MemberExist);
            }
            if n.peer_urls.iter().any(|u| peer_urls.contains(u)) {
                return Err(Error::PeerUrlExist);
            }
        }
        let node = MemberNode {
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
        };
        let raft = self.raft();
        if learner {
            raft.add_learner(id, node, false)
                .await
                .map_err(membership_error)?;
        } else {
            // A voter that has not started yet counts towards the quorum
            // at once, exactly as etcd's member add.
            raft.change_membership(
                ChangeMembers::AddVoters(BTreeMap::from([(id, node)])),
                false,
            )
            .await
            .map_err(membership_error)?;
        }
        tracing::info!(member = %format!("{id:x}"), learner, "member added");
        Ok(id)
    }

    async fn member_remove_local(&self, id: NodeId) -> Result<()> {
        let m = self.membership();
        let is_voter = m.membership().voter_ids().any(|v| v == id);
        if m.membership().get_node(&id).is_none() {
            return Err(Error::MemberNotFound);
        }
        let raft = self.raft();
        if is_voter {
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(membership_error)?;
        } else {
            raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(membership_error)?;
        }
        tracing::info!(member = %format!("{id:x}"), "member removed");
        Ok(())
    }

    async fn member_promote_local(&self, id: NodeId) -> Result<()> {
        let metrics = self.raft().metrics().borrow().clone();
        let mem = metrics.membership_config.membership();
        if mem.get_node(&id).is_none() {
            return Err(Error::MemberNotFound);
        }
        if mem.voter_ids().any(|v| v == id) {
            return Err(Error::MemberNotLearner);
        }
        // etcd: a learner is ready once it has 90% of the leader's log.
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map_or(0, |l| l.index);
        if (matched as f64) < last as f64 * 0.9 {
            return Err(Error::LearnerNotReady);
        }
        self.raft()
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    // === Cluster API ===

    /// Every member as etcd lists them (voters and learners). This member
    /// shows its own name and client URLs even before the membership
    /// records them (publishing them takes a raft round after start): etcd
    /// serves clients only once it has published, so its own entry is
    /// never blank.
    pub fn members(&self) -> Vec<Member> {
        let m = self.membership();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        let own = self.member_id();
        m.membership()
            .nodes()
            .map(|(id, n)| {
                let n = if *id == own && n.name.is_empty() {
                    MemberNode {
                        peer_urls: n.peer_urls.clone(),
                        ..self.own_node()
                    }
                } else {
                    n.clone()
                };
                Member {
                    id: *id,
                    name: n.name,
                    peer_ur_ls: n.peer_urls,
                    client_ur_ls: n.client_urls,
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// This member as the Cluster API lists it.
    pub fn member(&self) -> Member {
        let n = self.own_node();
        Member {
            id: self.member_id(),
            name: n.name,
            peer_ur_ls: n.peer_urls,
            client_ur_ls: n.client_urls,
            is_learner: !self
                .membership()
                .membership()
                .voter_ids()
                .any(|v| v == self.member_id()),
        }
    }

    pub async fn member_list(&self) -> MemberListResponse {
        MemberListResponse {
            header: self.header(self.revision()),
            members: self.members(),
        }
    }

    /// # Errors
    /// Peer URL or ID already in use, no leader, timeout.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<MemberAddResponse> {
        let id = match self
            .to_leader(Forward::MemberAdd {
                peer_urls: peer_urls.clone(),
                learner,
            })
            .await?
        {
            ForwardOk::Member(id) => id,
            other => return Err(Error::Internal(format!("unexpected answer {other:?}"))),
        };
        self.wait_member(|ms| ms.iter().any(|m| m.id == id)).await;
        Ok(MemberAddResponse {
            header: self.header(self.revision()),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: peer_urls,
                client_ur_ls: Vec::new(),
                is_learner: learner,
            }),
            members: self.members(),
        })
    }

    /// # Errors
    /// Unknown member, no leader, timeout.
    pub async fn member_remove(&self, id: NodeId) -> Result<MemberRemoveResponse> {
        self.to_leader(Forward::MemberRemove(id)).await?;
        self.wait_member(|ms| ms.iter().all(|m| m.id != id)).await;
        Ok(MemberRemoveResponse {
            header: self.header(self.revision()),
            members: self.members(),
        })
    }

    /// # Errors
    /// Unknown member, a voter, a learner not caught up, no leader, timeout.
    pub async fn member_promote(&self, id: NodeId) -> Result<MemberPromoteResponse> {
        self.to_leader(Forward::MemberPromote(id)).await?;
        self.wait_member(|ms| ms.iter().any(|m| m.id == id && !m.is_learner))
            .await;
        Ok(MemberPromoteResponse {
            header: self.header(self.revision()),
            members: self.members(),
        })
    }

    /// # Errors
    /// Unknown member, no leader, timeout.
    pub async fn member_update(
        &self,
        id: NodeId,
        peer_urls: Vec<String>,
    ) -> Result<MemberUpdateResponse> {
        self.to_leader(Forward::MemberUpdate { id, peer_urls })
            .await?;
        Ok(MemberUpdateResponse {
            header: self.header(self.revision()),
            members: self.members(),
        })
    }

    /// Waits (bounded) until this member's view of the membership shows a
    /// change the leader committed.
    async fn wait_member(&self, done: impl Fn(&[Member]) -> bool) {
        let deadline = std::time::Instant::now() + self.config().request_timeout();
        let mut m = self.raft().metrics();
        while !done(&self.members()) && std::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), m.changed()).await;
        }
    }

    // === Maintenance ===

    /// # Errors
    /// Storage failure while measuring the file.
    pub async fn status(&self) -> Result<StatusResponse> {
        let st = self.snapshot();
        let db_size = self.db_size() as i64;
        let db = self.db();
        let tx = db.begin_read()?;
        let mut in_use = 0u64;
        {
            let s = tx.open_table(KV)?.stats()?;
            in_use += s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
            let s = tx.open_table(LEASES)?.stats()?;
            in_use += s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
        }
        let metrics = self.raft().metrics().borrow().clone();
        let errors = self
            .alarm_members(&st)
            .into_iter()
            .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
            .collect();
        Ok(StatusResponse {
            header: self.header(st.rev),
            version: VERSION.into(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: (in_use as i64).min(db_size),
            is_learner: !metrics
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.member_id()),
        })
    }

    /// CRC-32 over every MVCC record up to `revision` (0 = current).
    ///
    /// # Errors
    /// Future or compacted revision, storage failure.
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        let st = self.snapshot();
        let rev = st.read_rev(revision)?;
        let db = self.db();
        let tx = db.begin_read()?;
        let kv = tx.open_table(KV)?;
        let mut h = crc32fast::Hasher::new();
        for row in kv.range(..=crate::mvcc::revision::Revision::last_key(rev))? {
            let (k, v) = row?;
            h.update(&k.value().to_be_bytes());
            h.update(v.value());
        }
        Ok(HashKvResponse {
            header: self.header(st.rev),
            hash: h.finalize(),
            // etcd's store starts with compactMainRev = -1: a never
            // compacted store answers -1, not 0.
            compact_revision: if st.compact_rev == 0 {
                -1
            } else {
                st.compact_rev
            },
        })
    }

    fn alarm_members(&self, st: &crate::mvcc::state::MvccState) -> Vec<AlarmMember> {
        let mut out = Vec::new();
        for (m, bits) in st.alarms.iter() {
            for a in 1..=2 {
                if bits & (1 << a) != 0 {
                    out.push(AlarmMember {
                        member_id: *m,
                        alarm: a,
                    });
                }
            }
        }
        out
    }

    /// etcd's Alarm: GET lists raised alarms; ACTIVATE / DEACTIVATE go
    /// through the log so every member agrees.
    ///
    /// # Errors
    /// No leader, timeout.
    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse> {
        let action = AlarmAction::try_from(req.action).unwrap_or(AlarmAction::Get);
        if action == AlarmAction::Get {
            let st = self.snapshot();
            let alarms = self
                .alarm_members(&st)
                .into_iter()
                .filter(|a| req.alarm == 0 || a.alarm == req.alarm)
                .filter(|a| req.member_id == 0 || a.member_id == req.member_id)
                .collect();
            return Ok(AlarmResponse {
                header: self.header(st.rev),
                alarms,
            });
        }
        let reply = self
            .propose(Request::Alarm {
                activate: action == AlarmAction::Activate,
                member: req.member_id,
                alarm: req.alarm,
            })
            .await?;
        match reply.response? {
            Response::Alarm(mut r) => {
                r.header = self.header(reply.revision);
                Ok(r)
            }
            other => Err(Error::Internal(format!("unexpected response {other:?}"))),
        }
    }

    /// etcd's Defragment of this member: the MVCC file is rewritten
    /// without the space freed by compaction. Returns (before, after)
    /// file sizes.
    ///
    /// # Errors
    /// Storage failure (the old file stays in use).
    pub async fn defragment(&self) -> Result<(u64, u64)> {
        let shared = self.shared().clone();
        tokio::task::spawn_blocking(move || crate::raft::sm::defragment(&shared))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Number of raised alarms (for tests and status).
    pub fn alarm_count(&self) -> usize {
        let st = self.snapshot();
        self.alarm_members(&st).len()
    }

    /// Rows in the alarms table (used by tests to check persistence).
    pub fn stored_alarms(&self) -> Result<u64> {
        let db = self.db();
        let tx = db.begin_read()?;
        Ok(tx.open_table(ALARMS)?.len()?)
    }

    /// Entries currently in the raft log (bounded by snapshots).
    pub fn log_len(&self) -> u64 {
        self.inner.log.len()
    }
}

fn alarm_name(a: i32) -> &'static str {
    match a {
        1 => "NOSPACE",
        2 => "CORRUPT",
        _ => "NONE",
    }
}
