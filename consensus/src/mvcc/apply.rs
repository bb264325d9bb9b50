//! The deterministic state machine step: apply one [`Request`] to the
//! in-memory state and to an open redb write transaction.
//!
//! `apply` never reads the clock or a random source: everything
//! nondeterministic is already inside the request. Raft replays the same
//! requests on every member and gets the same revisions.

use std::sync::Arc;

use bytes::Bytes;
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use lookout_proto::pb::{
    AlarmMember, AlarmResponse, CompactionResponse, Compare, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    request_op, response_op,
};
use prost::Message;
use redb::{Table, WriteTransaction};

use crate::error::{Error, Result};
use crate::mvcc::backend::{self, ALARMS, KV, LEASES, META_KEY, Meta};
use crate::mvcc::keyindex::LiveKv;
use crate::mvcc::request::{Request, Response};
use crate::mvcc::revision::Revision;
use crate::mvcc::state::{LeaseState, MvccState};

/// The outcome of one applied request.
#[derive(Debug)]
pub struct Applied {
    /// The client's answer; an `Err` here is etcd's answer (lease not
    /// found, compacted...), decided deterministically, not a failure.
    pub response: Result<Response>,
    /// Changes in revision order, with `prev_kv` always filled so the
    /// watch hub can serve watchers that asked for it.
    pub events: Vec<Event>,
    /// Store revision after the request.
    pub revision: i64,
}

/// Applies requests inside one redb write transaction. Tables are opened
/// once per transaction; call [`Applier::finish`] before committing.
pub struct Applier<'txn> {
    kv: Table<'txn, u128, &'static [u8]>,
    leases: Table<'txn, i64, i64>,
    alarms: Table<'txn, u64, u64>,
    auth: Table<'txn, &'static [u8], &'static [u8]>,
}

impl std::fmt::Debug for Applier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Applier")
    }
}

impl<'txn> Applier<'txn> {
    /// # Errors
    /// A table cannot be opened.
    pub fn new(txn: &'txn WriteTransaction) -> Result<Self> {
        Ok(Self {
            kv: txn.open_table(KV)?,
            leases: txn.open_table(LEASES)?,
            alarms: txn.open_table(ALARMS)?,
            auth: txn.open_table(crate::auth::AUTH)?,
        })
    }

    /// Applies `req` as log entry `index`.
    ///
    /// # Errors
    /// Only storage failures; the caller must then abort the transaction
    /// and discard `state`.
    pub fn apply(&mut self, state: &mut MvccState, index: u64, req: &Request) -> Result<Applied> {
        state.applied_index = index;
        // etcd's auth applier first: a client's request is checked as its
        // user, a bare write as an anonymous client.
        let checked = match req {
            Request::As {
                user,
                revision,
                req,
            } => crate::auth::check_write(state, user, *revision, req).map(|()| &**req),
            bare => crate::auth::check_bare(state, bare).map(|()| bare),
        };
        let req = match checked {
            Ok(r) => r,
            Err(e) => {
                return Ok(Applied {
                    response: Err(e),
                    events: Vec::new(),
                    revision: state.rev,
                });
            }
        };
        // etcd's capped applier: while NOSPACE is raised, nothing that
        // grows the store is applied (deletes and compaction still are).
        if state.nospace() && req.grows_store() {
            return Ok(Applied {
                response: Err(Error::NoSpace),
                events: Vec::new(),
                revision: state.rev,
            });
        }
        let mut cx = Ctx {
            main: state.rev + 1,
            sub: 0,
            state,
            w: self,
            events: Vec::new(),
        };
        let response = match req {
            Request::Put(p) => cx.checked_put(p).map(Response::Put),
            Request::DeleteRange(d) => cx.delete(d).map(Response::DeleteRange),
            Request::Txn(t) => cx.txn(t).map(Response::Txn),
            Request::Compact { revision } => cx.compact(*revision).map(Response::Compact),
            Request::LeaseGrant { id, ttl } => cx.lease_grant(*id, *ttl).map(Response::LeaseGrant),
            Request::LeaseRevoke { id } => cx.lease_revoke(*id).map(Response::LeaseRevoke),
            Request::Alarm {
                activate,
                member,
                alarm,
            } => cx.alarm(*activate, *member, *alarm).map(Response::Alarm),
            Request::Auth(a) => crate::auth::apply_auth(cx.state, &mut cx.w.auth, index, a),
            // Unwrapped above.
            Request::As { .. } => Err(Error::Internal("nested client request".into())),
        };
        // Storage errors abort the batch; etcd answers pass through.
        let response = match response {
            Err(Error::Storage(e)) => return Err(Error::Storage(e)),
            other => other,
        };
        let (main, sub, events) = (cx.main, cx.sub, cx.events);
        if sub > 0 {
            state.rev = main;
        }
        Ok(Applied {
            response,
            events,
            revision: state.rev,
        })
    }

    /// Records the counters raft and restarts rely on.
    ///
    /// # Errors
    /// Storage failure.
    pub fn finish(&mut self, state: &MvccState) -> Result<()> {
        let meta = Meta {
            rev: state.rev,
            compact_rev: state.compact_rev,
            applied_index: state.applied_index,
            applied: state.applied_log,
        };
        self.kv.insert(META_KEY, meta.encode().as_slice())?;
        Ok(())
    }
}

/// One request's write context: all its changes share `main` and get
/// increasing `sub`.
struct Ctx<'a, 'txn> {
    state: &'a mut MvccState,
    w: &'a mut Applier<'txn>,
    main: i64,
    sub: i64,
    events: Vec<Event>,
}

/// The ops a txn runs when its compares came out `succeeded`.
fn branch(t: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded { &t.success } else { &t.failure }
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

impl Ctx<'_, '_> {
    /// Revision a read inside this request sees (its own writes included).
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.state.rev
        }
    }

    fn next_rev(&mut self) -> Revision {
        let r = Revision::new(self.main, self.sub);
        self.sub += 1;
        r
    }

    fn live(&self, key: &[u8]) -> Option<&KeyValue> {
        self.state
            .keys
            .get(key)
            .and_then(|ki| ki.live.as_ref())
            .map(|l| &l.kv)
    }

    fn check_put(&self, p: &PutRequest) -> Result<()> {
        if p.lease != 0 && !self.state.leases.contains_key(&p.lease) {
            return Err(Error::LeaseNotFound);
        }
        if (p.ignore_value || p.ignore_lease) && self.live(&p.key).is_none() {
            return Err(Error::KeyNotFound);
        }
        Ok(())
    }

    fn checked_put(&mut self, p: &PutRequest) -> Result<PutResponse> {
        self.check_put(p)?;
        self.put(p)
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse> {
        let key = p.key.clone();
        let prev = self.live(&key).cloned();
        let rev = self.next_rev();
        let kv = KeyValue {
            key: key.clone(),
            create_revision: prev.as_ref().map_or(rev.main, |k| k.create_revision),
            mod_revision: rev.main,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            value: match (&prev, p.ignore_value) {
                (Some(k), true) => k.value.clone(),
                _ => p.value.clone(),
            },
            lease: match (&prev, p.ignore_lease) {
                (Some(k), true) => k.lease,
                _ => p.lease,
            },
        };
        let live = LiveKv::new(&kv);
        self.w.kv.insert(rev.to_key(), live.encoded.as_ref())?;
        let old_lease = prev.as_ref().map_or(0, |k| k.lease);
        if old_lease != kv.lease {
            self.detach(old_lease, &key);
            self.attach(kv.lease, &key);
        }
        let entry = self.state.keys.entry(key).or_default();
        Arc::make_mut(entry).put(rev, live.clone());
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(live.kv),
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            header: header(self.main),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn attach(&mut self, lease: i64, key: &Bytes) {
        if lease != 0
            && let Some(l) = self.state.leases.get_mut(&lease)
        {
            Arc::make_mut(l).keys.insert(key.clone());
        }
    }

    fn detach(&mut self, lease: i64, key: &Bytes) {
        if lease != 0
            && let Some(l) = self.state.leases.get_mut(&lease)
        {
            Arc::make_mut(l).keys.remove(key);
        }
    }

    fn delete_key(&mut self, key: &Bytes) -> Result<Option<KeyValue>> {
        let Some(prev) = self.live(key).cloned() else {
            return Ok(None);
        };
        let rev = self.next_rev();
        let tomb = KeyValue {
            key: key.clone(),
            mod_revision: rev.main,
            ..Default::default()
        };
        self.w
            .kv
            .insert(rev.to_key(), tomb.encode_to_vec().as_slice())?;
        self.detach(prev.lease, key);
        if let Some(ki) = self.state.keys.get_mut(key) {
            Arc::make_mut(ki).tombstone(rev);
        }
        self.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(tomb),
            prev_kv: Some(prev.clone()),
        });
        Ok(Some(prev))
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let keys: Vec<Bytes> = self
            .state
            .index_range(&d.key, &d.range_end)
            .filter(|(_, ki)| ki.live.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let mut resp = DeleteRangeResponse::default();
        for k in &keys {
            if let Some(prev) = self.delete_key(k)? {
                resp.deleted += 1;
                if d.prev_kv {
                    resp.prev_kvs.push(prev);
                }
            }
        }
        resp.header = header(self.read_revision());
        Ok(resp)
    }

    fn range(&mut self, r: &RangeRequest) -> Result<RangeResponse> {
        // Reads inside a txn see the txn's earlier writes: the working
        // state already holds them, and historic revisions come from the
        // write transaction's own view of the kv table.
        let mut req = r.clone();
        if req.revision <= 0 {
            req.revision = self.read_revision();
        }
        let kv = &self.w.kv;
        let mut read = |rev: Revision| backend::read_rev(kv, rev);
        // The working state's `rev` lags `main` while the txn writes; read
        // from a view that counts the txn's own revision as current.
        let view;
        let st: &MvccState = if self.sub > 0 {
            view = MvccState {
                rev: self.main,
                ..self.state.clone()
            };
            &view
        } else {
            self.state
        };
        let res = st.range(&req, &mut read)?;
        Ok(RangeResponse {
            header: header(st.rev),
            kvs: res.kvs,
            more: res.more,
            count: res.count,
        })
    }

    /// etcd's `applyCompare` over the live pairs of the compare's range.
    fn compare(&self, c: &Compare) -> bool {
        let live = self
            .state
            .index_range(&c.key, &c.range_end)
            .filter_map(|(_, ki)| ki.live.as_ref().map(|l| &l.kv));
        lookout_semantics::compare(c, live)
    }

    /// etcd's `compareToPath`: the outcome of the txn's compares, then of
    /// every nested txn's along the chosen branches, depth first. All of
    /// them read the state before the txn writes anything, so a nested
    /// txn's compares never see the outer branch's earlier writes.
    fn txn_path(&self, t: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = t.compare.iter().all(|c| self.compare(c));
        path.push(succeeded);
        for op in branch(t, succeeded) {
            if let Some(request_op::Request::RequestTxn(n)) = &op.request {
                self.txn_path(n, path);
            }
        }
    }

    /// etcd's `checkRequests` along `path` (from `*pos`): every op that
    /// will run is checked before anything is written, so a txn either
    /// applies whole or answers an error with no revision used. etcd makes
    /// two passes, puts first, then range revisions; so does this.
    fn check_path(&self, t: &TxnRequest, path: &[bool], pos: &mut usize, puts: bool) -> Result<()> {
        let succeeded = path[*pos];
        *pos += 1;
        for op in branch(t, succeeded) {
            match &op.request {
                Some(request_op::Request::RequestTxn(n)) => self.check_path(n, path, pos, puts)?,
                Some(request_op::Request::RequestPut(p)) if puts => self.check_txn_put(p)?,
                Some(request_op::Request::RequestRange(r)) if !puts => self.check_txn_range(r)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// etcd's `checkRequestPut`: unlike a plain put (lease first), a put in
    /// a txn is checked for its previous pair first, then for its lease.
    fn check_txn_put(&self, p: &PutRequest) -> Result<()> {
        if (p.ignore_value || p.ignore_lease) && self.live(&p.key).is_none() {
            return Err(Error::KeyNotFound);
        }
        if p.lease != 0 && !self.state.leases.contains_key(&p.lease) {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd's `checkRequestRange`. A negative revision passes while nothing
    /// was ever compacted (etcd compares it with a first revision of -1)
    /// and reads the current revision; after a compaction it is compacted.
    fn check_txn_range(&self, r: &RangeRequest) -> Result<()> {
        if r.revision == 0 {
            return Ok(());
        }
        if r.revision > self.state.rev {
            return Err(Error::FutureRev);
        }
        if r.revision < self.state.compact_rev {
            return Err(Error::Compacted);
        }
        Ok(())
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse> {
        let mut path = Vec::new();
        self.txn_path(t, &mut path);
        self.check_path(t, &path, &mut 0, true)?;
        self.check_path(t, &path, &mut 0, false)?;
        let (succeeded, responses) = self.run_txn(t, &path, &mut 0)?;
        Ok(TxnResponse {
            header: header(self.read_revision()),
            succeeded,
            responses,
        })
    }

    /// Runs the branch `path[*pos]` chose, and the nested txns in it.
    fn run_txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
    ) -> Result<(bool, Vec<ResponseOp>)> {
        let succeeded = path[*pos];
        *pos += 1;
        let ops = branch(t, succeeded);
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(r)?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    // A key deleted earlier in this txn cannot keep its
                    // value; etcd has no answer for that, so write as given.
                    let mut p = p.clone();
                    if (p.ignore_value || p.ignore_lease) && self.live(&p.key).is_none() {
                        p.ignore_value = false;
                        p.ignore_lease = false;
                    }
                    response_op::Response::ResponsePut(self.put(&p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete(d)?)
                }
                Some(request_op::Request::RequestTxn(n)) => {
                    let (succeeded, responses) = self.run_txn(n, path, pos)?;
                    response_op::Response::ResponseTxn(TxnResponse {
                        // etcd fills only the outermost txn's header; a
                        // nested one stays empty (no revision).
                        header: Some(ResponseHeader::default()),
                        succeeded,
                        responses,
                    })
                }
                None => continue,
            };
            out.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok((succeeded, out))
    }

    fn compact(&mut self, at: i64) -> Result<CompactionResponse> {
        if at <= self.state.compact_rev {
            return Err(Error::Compacted);
        }
        if at > self.state.rev {
            return Err(Error::FutureRev);
        }
        let keys: Vec<Bytes> = self.state.keys.keys().cloned().collect();
        let mut removed = Vec::new();
        for k in keys {
            let Some(ki) = self.state.keys.get_mut(&k) else {
                continue;
            };
            // Skip entries with nothing at or below `at` to drop (cheap
            // check first, so untouched entries are not copied).
            let first = ki.generations.first().and_then(|g| g.revs.front().copied());
            let single = ki.generations.len() == 1 && ki.generations[0].revs.len() == 1;
            if first.is_none_or(|r| r.main > at) || (single && !ki.generations[0].closed) {
                continue;
            }
            let empty = Arc::make_mut(ki).compact(at, &mut removed);
            if empty {
                self.state.keys.remove(&k);
            }
        }
        for r in &removed {
            self.w.kv.remove(r.to_key())?;
        }
        self.state.compact_rev = at;
        Ok(CompactionResponse {
            header: header(self.state.rev),
        })
    }

    fn alarm(&mut self, activate: bool, member: u64, alarm: i32) -> Result<AlarmResponse> {
        let bit = 1u64 << (alarm.clamp(0, 63) as u32);
        let members: Vec<u64> = if member == 0 {
            self.state.alarms.keys().copied().collect()
        } else {
            vec![member]
        };
        let mut changed = Vec::new();
        for m in members {
            let old = self.state.alarms.get(&m).copied().unwrap_or(0);
            let new = if activate { old | bit } else { old & !bit };
            if new == old {
                continue;
            }
            changed.push(AlarmMember {
                member_id: m,
                alarm,
            });
            if new == 0 {
                self.state.alarms.remove(&m);
                self.w.alarms.remove(m)?;
            } else {
                self.state.alarms.insert(m, new);
                self.w.alarms.insert(m, new)?;
            }
        }
        Ok(AlarmResponse {
            header: header(self.state.rev),
            alarms: changed,
        })
    }

    fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse> {
        if self.state.leases.contains_key(&id) {
            return Err(Error::LeaseExist);
        }
        self.w.leases.insert(id, ttl)?;
        self.state.leases.insert(
            id,
            Arc::new(LeaseState {
                id,
                ttl,
                keys: Default::default(),
            }),
        );
        Ok(LeaseGrantResponse {
            header: header(self.state.rev),
            id,
            ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse> {
        let Some(lease) = self.state.leases.get(&id).cloned() else {
            return Err(Error::LeaseNotFound);
        };
        // All attached keys go in one revision, in key order.
        for k in lease.keys.iter() {
            self.delete_key(k)?;
        }
        self.state.leases.remove(&id);
        self.w.leases.remove(id)?;
        Ok(LeaseRevokeResponse {
            header: header(self.read_revision()),
        })
    }
}
