//! Permission checks, as etcd 3.4's auth store and auth applier make
//! them (auth/store.go `isOpPermitted`, `IsAdminPermitted`;
//! etcdserver/apply_auth.go). Pure functions of the auth state, so the
//! apply (every member, same answer) and the serving member's reads use
//! the same code.

use lookout_proto::pb::{
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op::Request as Op,
};

use super::{AuthInfo, AuthState};
use crate::error::{Error, Result};
use crate::request::Request;
use crate::state::MvccState;

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

/// Write permission on every key attached to `lease` (etcd's
/// `checkLeasePuts`): whoever may not write them may neither revoke the
/// lease nor attach another key to it.
fn lease_puts(st: &MvccState, user: &str, rev: u64, lease: i64) -> Result<()> {
    if lease == 0 {
        return Ok(());
    }
    if let Some(l) = st.leases.get(&lease) {
        for k in l.keys.iter() {
            op_permitted(&st.auth, user, rev, k, &[], true)?;
        }
    }
    Ok(())
}

/// A put: write on the key, write on the keys already attached to its
/// lease, read on the key when it asks for the previous value.
fn put(st: &MvccState, user: &str, rev: u64, p: &PutRequest) -> Result<()> {
    op_permitted(&st.auth, user, rev, &p.key, &[], true)?;
    lease_puts(st, user, rev, p.lease)?;
    if p.prev_kv {
        op_permitted(&st.auth, user, rev, &p.key, &[], false)?;
    }
    Ok(())
}

fn delete(st: &MvccState, user: &str, rev: u64, d: &DeleteRangeRequest) -> Result<()> {
    op_permitted(&st.auth, user, rev, &d.key, &d.range_end, true)?;
    if d.prev_kv {
        op_permitted(&st.auth, user, rev, &d.key, &d.range_end, false)?;
    }
    Ok(())
}

fn ops(st: &MvccState, user: &str, rev: u64, ops: &[RequestOp]) -> Result<()> {
    for op in ops {
        match &op.request {
            Some(Op::RequestRange(r)) => {
                op_permitted(&st.auth, user, rev, &r.key, &r.range_end, false)?
            }
            Some(Op::RequestPut(p)) => put(st, user, rev, p)?,
            Some(Op::RequestDeleteRange(d)) => {
                if d.prev_kv {
                    op_permitted(&st.auth, user, rev, &d.key, &d.range_end, false)?;
                }
                op_permitted(&st.auth, user, rev, &d.key, &d.range_end, true)?;
            }
            Some(Op::RequestTxn(t)) => txn(st, user, rev, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Every compare (read), then every operation of both branches, nested
/// txns included, whichever branch will run.
fn txn(st: &MvccState, user: &str, rev: u64, t: &TxnRequest) -> Result<()> {
    for c in &t.compare {
        op_permitted(&st.auth, user, rev, &c.key, &c.range_end, false)?;
    }
    ops(st, user, rev, &t.success)?;
    ops(st, user, rev, &t.failure)
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
    match req {
        Request::Put(p) => put(st, user, rev, p),
        Request::DeleteRange(d) => delete(st, user, rev, d),
        Request::Txn(t) => txn(st, user, rev, t),
        Request::LeaseRevoke { id } => lease_puts(st, user, rev, *id),
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
