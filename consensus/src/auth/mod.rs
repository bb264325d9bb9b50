//! etcd's authentication and role-based access control for the store:
//! users, roles, key-range permissions, the enabled flag and the auth
//! revision as replicated state, tokens (simple and JWT), password hashes,
//! and every permission check at the place etcd 3.4 makes it.
//!
//! ```text
//!  gRPC (server.rs) ─ token | TLS CN ─> Store::auth_info (service.rs, token.rs)
//!      │                                    └─> AuthInfo{user, revision}
//!      ├─ reads: Range, Watch create, LeaseTimeToLive --keys, admin calls:
//!      │         checked on the serving member against its published state (check.rs)
//!      └─ writes: Request::As{user, revision, req} ─raft─> every member's apply:
//!                 check.rs (Put, DeleteRange, Txn with compares and nested
//!                 txns, LeaseRevoke) then the write; auth changes (apply.rs)
//!                 -> AuthState (state.rs) + redb table "auth"
//!  simple tokens: Authenticate goes through raft, so every member learns
//!                 token -> user at the same log index (token.rs keeps them,
//!                 with a sliding TTL, in memory only, as etcd does)
//!  JWT: signed by the serving member, verified by any member with the key
//! ```
//!
//! Semantics are etcd 3.4.23's (the installed reference, checked by the
//! differential test), plus the permission fixes later 3.4 and 3.5
//! releases made where 3.4.23 let data out: nested txn operations and a
//! txn's puts are checked like top-level ones, `LeaseTimeToLive` with keys
//! needs read on every attached key, a watch from a key checks the whole
//! open range, and a permission on an empty or empty-range key is refused.
//!
//! It must never read a clock or a random source inside apply (token
//! prefixes, password hashes and JWT expiry are decided before raft),
//! never write a password (only its bcrypt hash) to the log, never hold a
//! lock across a bcrypt hash, and never compare a secret in variable time.

mod apply;
mod check;
mod password;
mod perms;
mod service;
mod state;
mod token;

use serde::{Deserialize, Serialize};

pub(crate) use apply::apply_auth;
pub use check::{
    LeaseKeys, check_admin, check_bare, check_delete, check_lease_revoke, check_put, check_range,
    check_txn, check_watch, check_write, watch_refusal,
};
pub use password::{DEFAULT_COST, effective_cost};
pub use perms::{KeyRange, RangeSet, UserPerms, valid_permission_range};
pub use service::{Credentials, unmapped};
pub(crate) use state::AUTH;
pub use state::{AuthState, ROOT};
pub(crate) use token::{TokenEvent, Tokens, token_event};

/// A fresh token for [`AuthConfig::gateway_token`].
pub fn new_gateway_token() -> String {
    Tokens::new_gateway_token()
}
pub use token::{AuthConfig, DEFAULT_TTL, JwtClaims, JwtConfig, TokenKind, parse_auth_token};

/// Who sent a request, as etcd's `AuthInfo`: the user name and the auth
/// revision the identity was resolved at (a token's, or the store's when
/// it was looked up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// A change to the auth state, as the log carries it. Everything
/// nondeterministic (password hashes, a simple token's random prefix) is
/// decided before it is proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    Enable,
    Disable,
    /// Issues the simple token `"{prefix}.{log index}"` to `name` on
    /// every member.
    Authenticate {
        name: String,
        prefix: String,
    },
    /// `hash` is the bcrypt hash (empty for a `no_password` user).
    UserAdd {
        name: String,
        hash: Vec<u8>,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        hash: Vec<u8>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        perm_type: i32,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthRequest {
    /// Whether etcd's auth applier asks for the root role first
    /// (`needAdminPermission`): every change but Authenticate.
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthRequest::Authenticate { .. })
    }
}
