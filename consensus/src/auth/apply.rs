//! Applying an [`AuthRequest`] to the auth state and the redb table, with
//! etcd 3.4's rules and answers (auth/store.go): the root user and role
//! cannot be removed while auth is on, AuthEnable needs a root user with
//! the root role, every change bumps the auth revision (AuthEnable and
//! no-op grants do not), and each user's merged permissions are rebuilt.
//! Deterministic: the same log gives every member the same state.

use std::sync::Arc;

use lookout_proto::authpb::{Permission, Role, User, UserAddOptions};
use redb::Table;

use super::perms::valid_permission_range;
use super::state::{AuthTable, ROOT};
use super::{AuthRequest, AuthState};
use crate::error::{Error, Result};
use crate::mvcc::request::Response;
use crate::mvcc::state::MvccState;

fn done() -> Result<Response> {
    Ok(Response::Auth {
        token: String::new(),
    })
}

/// Applies `req` as log entry `index`.
///
/// # Errors
/// etcd's answer for the request (user not found, root role missing...),
/// or a storage failure.
pub(crate) fn apply_auth(
    st: &mut MvccState,
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    index: u64,
    req: &AuthRequest,
) -> Result<Response> {
    let mut t = AuthTable { t: table };
    // Copy-on-write: readers keep the state they hold.
    let auth = Arc::make_mut(&mut st.auth);
    match req {
        AuthRequest::Enable | AuthRequest::Disable | AuthRequest::Authenticate { .. } => {
            switch(auth, &mut t, index, req)
        }
        AuthRequest::UserAdd { .. }
        | AuthRequest::UserDelete { .. }
        | AuthRequest::UserChangePassword { .. }
        | AuthRequest::UserGrantRole { .. }
        | AuthRequest::UserRevokeRole { .. } => users(auth, &mut t, req),
        AuthRequest::RoleAdd { .. } | AuthRequest::RoleDelete { .. } => roles(auth, &mut t, req),
        AuthRequest::RoleGrantPermission { .. } | AuthRequest::RoleRevokePermission { .. } => {
            permissions(auth, &mut t, req)
        }
    }
}

/// How a change that moves the auth revision ends: the revision bumped
/// and stored, each user's merged permissions rebuilt (a new role bumps
/// the revision only: nobody holds it yet).
fn commit(auth: &mut AuthState, t: &mut AuthTable<'_, '_>) -> Result<()> {
    auth.revision += 1;
    t.put_revision(auth.revision)?;
    auth.rebuild_perms();
    Ok(())
}

/// Enable, disable and authenticate.
fn switch(
    auth: &mut AuthState,
    t: &mut AuthTable<'_, '_>,
    index: u64,
    req: &AuthRequest,
) -> Result<Response> {
    match req {
        AuthRequest::Enable => {
            if auth.enabled {
                return done();
            }
            let Some(root) = auth.users.get(ROOT) else {
                return Err(Error::RootUserNotExist);
            };
            if !root.roles.iter().any(|r| r == ROOT) {
                return Err(Error::RootRoleNotExist);
            }
            auth.enabled = true;
            t.put_enabled(true)?;
            done()
        }
        AuthRequest::Disable => {
            if !auth.enabled {
                return done();
            }
            auth.enabled = false;
            t.put_enabled(false)?;
            commit(auth, t)?;
            done()
        }
        AuthRequest::Authenticate { name, prefix } => {
            if !auth.enabled {
                return Err(Error::AuthNotEnabled);
            }
            let Some(u) = auth.users.get(name) else {
                return Err(Error::AuthFailed);
            };
            if u.options.is_some_and(|o| o.no_password) {
                return Err(Error::AuthFailed);
            }
            Ok(Response::Auth {
                token: format!("{prefix}.{index}"),
            })
        }
        _ => unreachable!("apply_auth routes only Enable, Disable, Authenticate here"),
    }
}

/// User changes.
fn users(auth: &mut AuthState, t: &mut AuthTable<'_, '_>, req: &AuthRequest) -> Result<Response> {
    match req {
        AuthRequest::UserAdd {
            name,
            hash,
            no_password,
        } => {
            if name.is_empty() {
                return Err(Error::UserEmpty);
            }
            if auth.users.contains_key(name) {
                return Err(Error::UserAlreadyExist);
            }
            let u = User {
                name: name.clone().into_bytes().into(),
                password: hash.clone().into(),
                roles: Vec::new(),
                options: Some(UserAddOptions {
                    no_password: *no_password,
                }),
            };
            t.put_user(name, &u)?;
            auth.users.insert(name.clone(), Arc::new(u));
            commit(auth, t)?;
            done()
        }
        AuthRequest::UserDelete { name } => {
            if auth.enabled && name == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            if auth.users.remove(name).is_none() {
                return Err(Error::UserNotFound);
            }
            t.del_user(name)?;
            commit(auth, t)?;
            done()
        }
        AuthRequest::UserChangePassword { name, hash } => {
            let Some(u) = auth.users.get(name) else {
                return Err(Error::UserNotFound);
            };
            let mut u = User::clone(u);
            u.password = hash.clone().into();
            t.put_user(name, &u)?;
            auth.users.insert(name.clone(), Arc::new(u));
            commit(auth, t)?;
            done()
        }
        AuthRequest::UserGrantRole { user, role } => {
            let Some(u) = auth.users.get(user) else {
                return Err(Error::UserNotFound);
            };
            if role != ROOT && !auth.roles.contains_key(role) {
                return Err(Error::RoleNotFound);
            }
            if u.roles.iter().any(|r| r == role) {
                return done();
            }
            let mut u = User::clone(u);
            u.roles.push(role.clone());
            u.roles.sort();
            t.put_user(user, &u)?;
            auth.users.insert(user.clone(), Arc::new(u));
            commit(auth, t)?;
            done()
        }
        AuthRequest::UserRevokeRole { name, role } => {
            if auth.enabled && name == ROOT && role == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            let Some(u) = auth.users.get(name) else {
                return Err(Error::UserNotFound);
            };
            if !u.roles.iter().any(|r| r == role) {
                return Err(Error::RoleNotGranted);
            }
            let mut u = User::clone(u);
            u.roles.retain(|r| r != role);
            t.put_user(name, &u)?;
            auth.users.insert(name.clone(), Arc::new(u));
            commit(auth, t)?;
            done()
        }
        _ => unreachable!(
            "apply_auth routes only UserAdd, UserDelete, UserChangePassword, UserGrantRole, UserRevokeRole here"
        ),
    }
}

/// Roles added and deleted.
fn roles(auth: &mut AuthState, t: &mut AuthTable<'_, '_>, req: &AuthRequest) -> Result<Response> {
    match req {
        AuthRequest::RoleAdd { name } => {
            if name.is_empty() {
                return Err(Error::RoleEmpty);
            }
            if auth.roles.contains_key(name) {
                return Err(Error::RoleAlreadyExist);
            }
            let r = Role {
                name: name.clone().into_bytes().into(),
                key_permission: Vec::new(),
            };
            t.put_role(name, &r)?;
            auth.roles.insert(name.clone(), Arc::new(r));
            // etcd bumps the revision but does not rebuild permissions: a
            // new role is granted to nobody.
            auth.revision += 1;
            t.put_revision(auth.revision)?;
            done()
        }
        AuthRequest::RoleDelete { role } => {
            if auth.enabled && role == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            if auth.roles.remove(role).is_none() {
                return Err(Error::RoleNotFound);
            }
            t.del_role(role)?;
            let holders: Vec<String> = auth
                .users
                .iter()
                .filter(|(_, u)| u.roles.iter().any(|r| r == role))
                .map(|(n, _)| n.clone())
                .collect();
            for name in holders {
                if let Some(u) = auth.users.get(&name) {
                    let mut u = User::clone(u);
                    u.roles.retain(|r| r != role);
                    t.put_user(&name, &u)?;
                    auth.users.insert(name, Arc::new(u));
                }
            }
            commit(auth, t)?;
            done()
        }
        _ => unreachable!("apply_auth routes only RoleAdd, RoleDelete here"),
    }
}

/// Permissions granted to and revoked from a role.
fn permissions(
    auth: &mut AuthState,
    t: &mut AuthTable<'_, '_>,
    req: &AuthRequest,
) -> Result<Response> {
    match req {
        AuthRequest::RoleGrantPermission {
            name,
            perm_type,
            key,
            range_end,
        } => {
            if !valid_permission_range(key, range_end) {
                return Err(Error::InvalidAuthMgmt);
            }
            let Some(r) = auth.roles.get(name) else {
                return Err(Error::RoleNotFound);
            };
            let mut r = Role::clone(r);
            // etcd keeps the list sorted by key and updates the first
            // permission at or after the key when it has the same range.
            let i = r
                .key_permission
                .partition_point(|p| p.key.as_ref() < key.as_slice());
            match r.key_permission.get_mut(i) {
                Some(p)
                    if p.key.as_ref() == key.as_slice()
                        && p.range_end.as_ref() == range_end.as_slice() =>
                {
                    p.perm_type = *perm_type;
                }
                _ => {
                    r.key_permission.push(Permission {
                        perm_type: *perm_type,
                        key: key.clone().into(),
                        range_end: range_end.clone().into(),
                    });
                    r.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            t.put_role(name, &r)?;
            auth.roles.insert(name.clone(), Arc::new(r));
            commit(auth, t)?;
            done()
        }
        AuthRequest::RoleRevokePermission {
            role,
            key,
            range_end,
        } => {
            let Some(r) = auth.roles.get(role) else {
                return Err(Error::RoleNotFound);
            };
            let mut r = Role::clone(r);
            let before = r.key_permission.len();
            r.key_permission.retain(|p| {
                p.key.as_ref() != key.as_slice() || p.range_end.as_ref() != range_end.as_slice()
            });
            if r.key_permission.len() == before {
                return Err(Error::PermissionNotGranted);
            }
            t.put_role(role, &r)?;
            auth.roles.insert(role.clone(), Arc::new(r));
            commit(auth, t)?;
            done()
        }
        _ => unreachable!("apply_auth routes only RoleGrantPermission, RoleRevokePermission here"),
    }
}
