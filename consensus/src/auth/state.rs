//! The replicated auth state: the enabled flag, the auth revision, users
//! and roles (etcd's `authEnabled`, `authRevision`, `authUsers` and
//! `authRoles` buckets), as one immutable value inside the published
//! [`MvccState`](crate::mvcc::state::MvccState), with every user's merged
//! permissions derived from it.
//!
//! ```text
//!  redb table "auth": b"enabled" -> [0|1], b"revision" -> u64 BE,
//!                     b"user/<name>" -> authpb.User, b"role/<name>" -> authpb.Role
//!  apply (auth/apply.rs) ─> new AuthState (users/roles + perms rebuilt) ─> published
//!  checks (auth/check.rs) read the published value: no lock, no I/O
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use lookout_proto::authpb::{Role, User};
use prost::Message;
use redb::{ReadableTable, Table, TableDefinition};

use super::perms::UserPerms;
use crate::error::{Error, Result};

/// The auth bucket: flag, revision, users and roles.
pub(crate) const AUTH: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("auth");

const ENABLED_KEY: &[u8] = b"enabled";
const REVISION_KEY: &[u8] = b"revision";
const USER_PREFIX: &[u8] = b"user/";
const ROLE_PREFIX: &[u8] = b"role/";

/// etcd's root user and role names.
pub const ROOT: &str = "root";

/// See the module doc.
#[derive(Debug, Clone)]
pub struct AuthState {
    pub enabled: bool,
    /// Bumped by every change to users, roles or permissions (and by
    /// AuthDisable); etcd starts it at 1.
    pub revision: u64,
    pub users: imbl::OrdMap<String, Arc<User>>,
    pub roles: imbl::OrdMap<String, Arc<Role>>,
    /// Each user's merged permissions (etcd's rangePermCache), rebuilt
    /// whenever users or roles change.
    perms: Arc<HashMap<String, Arc<UserPerms>>>,
}

impl Default for AuthState {
    fn default() -> Self {
        Self {
            enabled: false,
            revision: 1,
            users: Default::default(),
            roles: Default::default(),
            perms: Default::default(),
        }
    }
}

impl AuthState {
    /// Whether `user` holds the root role (every key, every admin call).
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// The merged permissions of `user` (`None`: no such user).
    pub fn perms(&self, user: &str) -> Option<&Arc<UserPerms>> {
        self.perms.get(user)
    }

    /// Recomputes every user's merged permissions (after users or roles
    /// changed).
    pub fn rebuild_perms(&mut self) {
        let mut m = HashMap::with_capacity(self.users.len());
        for (name, u) in self.users.iter() {
            let perms = u
                .roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .flat_map(|r| r.key_permission.iter());
            m.insert(name.clone(), Arc::new(UserPerms::merge(perms)));
        }
        self.perms = Arc::new(m);
    }

    // === persistence ===

    /// Reads the auth bucket (a store that never used auth has none of
    /// its keys: disabled, revision 1, no users).
    ///
    /// # Errors
    /// Storage failure or an undecodable record.
    pub fn load<T: ReadableTable<&'static [u8], &'static [u8]>>(t: &T) -> Result<Self> {
        let mut st = Self::default();
        for row in t.iter()? {
            let (k, v) = row?;
            let (k, v) = (k.value(), v.value());
            if k == ENABLED_KEY {
                st.enabled = v == [1];
            } else if k == REVISION_KEY {
                let b: [u8; 8] = v
                    .try_into()
                    .map_err(|_| Error::Storage("auth revision record".into()))?;
                st.revision = u64::from_be_bytes(b);
            } else if let Some(name) = k.strip_prefix(USER_PREFIX) {
                let u = User::decode(v)?;
                st.users
                    .insert(String::from_utf8_lossy(name).into_owned(), Arc::new(u));
            } else if let Some(name) = k.strip_prefix(ROLE_PREFIX) {
                let r = Role::decode(v)?;
                st.roles
                    .insert(String::from_utf8_lossy(name).into_owned(), Arc::new(r));
            }
        }
        st.rebuild_perms();
        Ok(st)
    }
}

/// Writes of the auth bucket, inside the apply's redb transaction.
pub(crate) struct AuthTable<'a, 'txn> {
    pub t: &'a mut Table<'txn, &'static [u8], &'static [u8]>,
}

impl AuthTable<'_, '_> {
    pub fn put_enabled(&mut self, on: bool) -> Result<()> {
        self.t.insert(ENABLED_KEY, [u8::from(on)].as_slice())?;
        Ok(())
    }

    pub fn put_revision(&mut self, rev: u64) -> Result<()> {
        self.t.insert(REVISION_KEY, rev.to_be_bytes().as_slice())?;
        Ok(())
    }

    pub fn put_user(&mut self, name: &str, u: &User) -> Result<()> {
        let k = [USER_PREFIX, name.as_bytes()].concat();
        self.t.insert(k.as_slice(), u.encode_to_vec().as_slice())?;
        Ok(())
    }

    pub fn del_user(&mut self, name: &str) -> Result<()> {
        let k = [USER_PREFIX, name.as_bytes()].concat();
        self.t.remove(k.as_slice())?;
        Ok(())
    }

    pub fn put_role(&mut self, name: &str, r: &Role) -> Result<()> {
        let k = [ROLE_PREFIX, name.as_bytes()].concat();
        self.t.insert(k.as_slice(), r.encode_to_vec().as_slice())?;
        Ok(())
    }

    pub fn del_role(&mut self, name: &str) -> Result<()> {
        let k = [ROLE_PREFIX, name.as_bytes()].concat();
        self.t.remove(k.as_slice())?;
        Ok(())
    }
}
