//! Permission checks, as etcd 3.4's auth store and auth applier make
//! them (auth/store.go `isOpPermitted`, `IsAdminPermitted`;
//! etcdserver/apply_auth.go). Pure functions of the auth state, so the
//! apply (every member, same answer), the serving member's reads and a
//! gateway's copy of the state use the same code.
//!
//! The write checks need the keys attached to a lease (a put onto a
//! lease, a lease revoke): [`LeaseKeys`] hands them out, from the store's
//! own state or from what a gateway looked up.

use lookout_proto::pb::{
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op::Request as Op,
};

use super::{AuthInfo, AuthState};
use crate::error::{Error, Result};
use crate::mvcc::request::Request;
use crate::mvcc::state::MvccState;

/// The keys attached to a lease, for the checks that need them.
pub trait LeaseKeys {
    /// Calls `f` with each key attached to `lease` (none for an unknown
    /// lease), stopping at its first error.
    ///
    /// # Errors
    /// The first error `f` returned.
    fn each_key(&self, lease: i64, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
}

impl LeaseKeys for MvccState {
    fn each_key(&self, lease: i64, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if let Some(l) = self.leases.get(&lease) {
            for k in l.keys.iter() {
                f(k)?;
            }
        }
        Ok(())
    }
}

/// Leases and their keys as someone looked them up (a gateway asks the
/// store with `LeaseTimeToLive` before it checks a write itself).
impl LeaseKeys for std::collections::HashMap<i64, Vec<bytes::Bytes>> {
    fn each_key(&self, lease: i64, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        for k in self.get(&lease).into_iter().flatten() {
            f(k)?;
        }
        Ok(())
    }
}

/// etcd's `isOpPermitted`: nothing is checked while auth is off; then a
/// request must name a user (`revision` 0 means it named nobody), must not
/// be older than the auth state, and the user must hold the root role or
/// a permission covering `[key, range_end)`.
fn op_permitted(
    auth: &AuthState,
    user: &str,
    revision: u64,
    key: &[u8],
    range_end: &[u8],
    write: bool,
) -> Result<()> {
    if !auth.enabled {
        return Ok(());
    }
    if revision == 0 {
        return Err(Error::UserEmpty);
    }
    if revision < auth.revision {
        return Err(Error::AuthOldRevision);
    }
    let Some(perms) = auth.perms(user) else {
        return Err(Error::PermissionDenied);
    };
    if auth.is_root(user) {
        return Ok(());
    }
    let set = if write { &perms.write } else { &perms.read };
    if set.covers(key, range_end) {
        Ok(())
    } else {
        Err(Error::PermissionDenied)
    }
}

fn who(w: Option<&AuthInfo>) -> (&str, u64) {
    w.map_or(("", 0), |a| (a.user.as_str(), a.revision))
}

/// Read permission on `[key, range_end)` (Range, a txn compare).
///
/// # Errors
/// etcd's user-empty, old-revision or permission-denied answer.
pub fn check_range(auth: &AuthState, w: Option<&AuthInfo>, key: &[u8], end: &[u8]) -> Result<()> {
    let (u, r) = who(w);
    op_permitted(auth, u, r, key, end, false)
}

/// A watch create: etcd reads an empty key as `"\0"` (the smallest
/// key). A from-key watch (`range_end` `"\0"`) is checked as the whole
/// open range, as etcd 3.5 does (3.4 checked only its first key).
///
/// # Errors
/// As [`check_range`].
pub fn check_watch(auth: &AuthState, w: Option<&AuthInfo>, key: &[u8], end: &[u8]) -> Result<()> {
    let key: &[u8] = if key.is_empty() { &[0] } else { key };
    check_range(auth, w, key, end)
}

/// The cancel reason of a refused watch create, as etcd 3.5 writes it
/// (the full gRPC status text: clients print it).
pub fn watch_refusal(e: &Error) -> String {
    let code = match e {
        Error::InvalidAuthToken => "Unauthenticated",
        Error::UserEmpty | Error::AuthOldRevision => "InvalidArgument",
        _ => "PermissionDenied",
    };
    let msg = match e {
        Error::InvalidAuthToken | Error::UserEmpty | Error::AuthOldRevision => e.to_string(),
        _ => Error::PermissionDenied.to_string(),
    };
    format!("rpc error: code = {code} desc = {msg}")
}

/// etcd's `IsAdminPermitted`: the root role (always true while auth is
/// off).
///
/// # Errors
/// [`Error::UserEmpty`], [`Error::UserNotFound`] or
/// [`Error::PermissionDenied`].
pub fn check_admin(auth: &AuthState, w: Option<&AuthInfo>) -> Result<()> {
    if !auth.enabled {
        return Ok(());
    }
    let user = match w {
        Some(a) if !a.user.is_empty() => a.user.as_str(),
        _ => return Err(Error::UserEmpty),
    };
    if !auth.users.contains_key(user) {
        return Err(Error::UserNotFound);
    }
    if !auth.is_root(user) {
        return Err(Error::PermissionDenied);
    }
    Ok(())
}

/// The checks of one write request against `auth`, with the leases'
/// keys from `leases`.
struct Writer<'a, L: LeaseKeys + ?Sized> {
    auth: &'a AuthState,
    leases: &'a L,
    user: &'a str,
    rev: u64,
}

impl<L: LeaseKeys + ?Sized> Writer<'_, L> {
    fn op(&self, key: &[u8], end: &[u8], write: bool) -> Result<()> {
        op_permitted(self.auth, self.user, self.rev, key, end, write)
    }

    /// Write permission on every key attached to `lease` (etcd's
    /// `checkLeasePuts`): whoever may not write them may neither revoke
    /// the lease nor attach another key to it.
    fn lease_puts(&self, lease: i64) -> Result<()> {
        if lease == 0 || !self.auth.enabled {
            return Ok(());
        }
        self.leases.each_key(lease, &mut |k| self.op(k, &[], true))
    }

    /// A put: write on the key, write on the keys already attached to its
    /// lease, read on the key when it asks for the previous value.
    fn put(&self, p: &PutRequest) -> Result<()> {
        self.op(&p.key, &[], true)?;
        self.lease_puts(p.lease)?;
        if p.prev_kv {
            self.op(&p.key, &[], false)?;
        }
        Ok(())
    }

    fn delete(&self, d: &DeleteRangeRequest) -> Result<()> {
        self.op(&d.key, &d.range_end, true)?;
        if d.prev_kv {
            self.op(&d.key, &d.range_end, false)?;
        }
        Ok(())
    }

    fn ops(&self, ops: &[RequestOp]) -> Result<()> {
        for op in ops {
            match &op.request {
                Some(Op::RequestRange(r)) => self.op(&r.key, &r.range_end, false)?,
                Some(Op::RequestPut(p)) => self.put(p)?,
                Some(Op::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.op(&d.key, &d.range_end, false)?;
                    }
                    self.op(&d.key, &d.range_end, true)?;
                }
                Some(Op::RequestTxn(t)) => self.txn(t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Every compare (read), then every operation of both branches, nested
    /// txns included, whichever branch will run.
    fn txn(&self, t: &TxnRequest) -> Result<()> {
        for c in &t.compare {
            self.op(&c.key, &c.range_end, false)?;
        }
        self.ops(&t.success)?;
        self.ops(&t.failure)
    }
}

fn writer<'a, L: LeaseKeys + ?Sized>(
    auth: &'a AuthState,
    leases: &'a L,
    w: Option<&'a AuthInfo>,
) -> Writer<'a, L> {
    let (user, rev) = who(w);
    Writer {
        auth,
        leases,
        user,
        rev,
    }
}

/// A Put as the apply checks it (see [`check_write`]), against any copy
/// of the auth state.
///
/// # Errors
/// etcd's user-empty, old-revision or permission-denied answer.
pub fn check_put<L: LeaseKeys + ?Sized>(
    auth: &AuthState,
    leases: &L,
    w: Option<&AuthInfo>,
    p: &PutRequest,
) -> Result<()> {
    writer(auth, leases, w).put(p)
}

/// A DeleteRange as the apply checks it.
///
/// # Errors
/// As [`check_put`].
pub fn check_delete(auth: &AuthState, w: Option<&AuthInfo>, d: &DeleteRangeRequest) -> Result<()> {
    writer(auth, &std::collections::HashMap::new(), w).delete(d)
}

/// A Txn as the apply checks it: every compare and every operation of
/// both branches, nested txns included.
///
/// # Errors
/// As [`check_put`].
pub fn check_txn<L: LeaseKeys + ?Sized>(
    auth: &AuthState,
    leases: &L,
    w: Option<&AuthInfo>,
    t: &TxnRequest,
) -> Result<()> {
    writer(auth, leases, w).txn(t)
}

/// A LeaseRevoke: write permission on every key attached to `lease`.
///
/// # Errors
/// As [`check_put`].
pub fn check_lease_revoke<L: LeaseKeys + ?Sized>(
    auth: &AuthState,
    leases: &L,
    w: Option<&AuthInfo>,
    lease: i64,
) -> Result<()> {
    writer(auth, leases, w).lease_puts(lease)
}

/// A write that reached the log without [`Request::As`]: a client that
/// named nobody (its member had never seen a user), or the store itself
/// (lease expiry while auth was off). With auth on, checked as anonymous.
///
/// # Errors
/// [`Error::UserEmpty`] for a write auth would need a user for.
pub fn check_bare(st: &MvccState, req: &Request) -> Result<()> {
    if !st.auth.enabled {
        return Ok(());
    }
    match req {
        Request::Put(_)
        | Request::DeleteRange(_)
        | Request::Txn(_)
        | Request::LeaseRevoke { .. } => check_write(st, "", 0, req),
        _ => Ok(()),
    }
}

/// The apply-time check of a client's write (etcd's auth applier), made
/// by every member against the state the write applies to.
///
/// # Errors
/// etcd's answer: user empty, old revision, permission denied, or (for an
/// auth change) the admin check's.
pub fn check_write(st: &MvccState, user: &str, rev: u64, req: &Request) -> Result<()> {
    let w = Writer {
        auth: &st.auth,
        leases: st,
        user,
        rev,
    };
    match req {
        Request::Put(p) => w.put(p),
        Request::DeleteRange(d) => w.delete(d),
        Request::Txn(t) => w.txn(t),
        Request::LeaseRevoke { id } => w.lease_puts(*id),
        Request::Auth(a) if a.needs_admin() => {
            let w = AuthInfo {
                user: user.to_string(),
                revision: rev,
            };
            check_admin(&st.auth, Some(&w))
        }
        _ => Ok(()),
    }
}
