//! The store's side of etcd's Auth service and identity: resolving a
//! request's token or certificate name to an [`AuthInfo`], Authenticate,
//! and user and role management. Changes go through raft as
//! [`Request::As`] wrapping an [`AuthRequest`], so the apply checks the
//! root role on every member; reads of users and roles are answered after
//! a read index, as linearizable as etcd's (which sends them through raft).

use std::time::{Duration, Instant};

use lookout_proto::pb::{
    AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGetResponse, AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse,
    AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordResponse,
    AuthUserDeleteResponse, AuthUserGetResponse, AuthUserGrantRoleResponse, AuthUserListResponse,
    AuthUserRevokeRoleResponse, AuthenticateResponse,
};

use super::{AuthInfo, AuthRequest, AuthState, check_admin, password};
use crate::error::{Error, Result};
use crate::mvcc::request::{Request, Response};
use crate::store::Store;

/// Longest a member waits to apply the log entry a simple token was
/// issued at before calling the token invalid (a token from a member that
/// is ahead of this one).
const TOKEN_INDEX_WAIT: Duration = Duration::from_secs(1);
/// Authenticate retries when the auth state changed between the password
/// check and the token (etcd loops the same way).
const AUTHENTICATE_TRIES: usize = 8;

/// What a request says about its sender: the token in its metadata
/// (`token`, or `authorization` as etcd's JSON gateway sends it) and the
/// common name of its verified TLS client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<String>,
    pub cert_cn: Option<String>,
}

/// etcd's `IsAdminPermitted` answer as Maintenance returns it: unmapped,
/// so the client sees code Unknown and the auth store's own text.
pub fn unmapped(e: Error) -> Error {
    let text = match e {
        Error::UserEmpty => "auth: user name is empty",
        Error::UserNotFound => "auth: user not found",
        Error::PermissionDenied => "auth: permission denied",
        Error::InvalidAuthToken => "auth: invalid auth token",
        other => return other,
    };
    Error::Unmapped(text.into())
}

impl Store {
    /// The auth state this member last applied.
    pub fn auth_state(&self) -> std::sync::Arc<AuthState> {
        self.snapshot().auth.clone()
    }

    /// etcd's `AuthInfoFromCtx` (plus the TLS fallback): a token names its
    /// user (a simple token at the current auth revision, a JWT at its
    /// own); without a token, with `--client-cert-auth`, the certificate's
    /// common name does. `None`: the request names nobody.
    ///
    /// # Errors
    /// [`Error::InvalidAuthToken`] for a token this member does not know,
    /// an expired one, or one signed by another key.
    pub async fn auth_info(&self, c: &Credentials) -> Result<Option<AuthInfo>> {
        match self.resolve(c) {
            Err(Error::InvalidAuthToken) => {}
            other => return other,
        }
        // A simple token issued at a log index this member has not applied
        // yet: wait (bounded) for it, as etcd's index waiter does.
        let Some(idx) = c.token.as_deref().and_then(super::Tokens::simple_index) else {
            return Err(Error::InvalidAuthToken);
        };
        if self.snapshot().applied_index >= idx || self.inner.tokens.jwt().is_some() {
            return Err(Error::InvalidAuthToken);
        }
        let _ = self
            .raft()
            .wait(Some(TOKEN_INDEX_WAIT))
            .applied_index_at_least(Some(idx), "simple token index")
            .await;
        self.resolve(c)
    }

    /// [`Store::auth_info`] without waiting: what this member knows now.
    ///
    /// # Errors
    /// As [`Store::auth_info`].
    pub fn resolve(&self, c: &Credentials) -> Result<Option<AuthInfo>> {
        let tokens = &self.inner.tokens;
        if let Some(t) = c.token.as_deref() {
            if tokens.is_gateway_token(t) {
                return Ok(Some(AuthInfo {
                    user: super::ROOT.to_string(),
                    revision: self.auth_state().revision,
                }));
            }
            if let Some(j) = tokens.jwt() {
                let (user, revision) = j.verify(t).ok_or(Error::InvalidAuthToken)?;
                return Ok(Some(AuthInfo { user, revision }));
            }
            if super::Tokens::simple_index(t).is_none() {
                return Err(Error::InvalidAuthToken);
            }
            let user = tokens.simple_user(t).ok_or(Error::InvalidAuthToken)?;
            return Ok(Some(AuthInfo {
                user,
                revision: self.auth_state().revision,
            }));
        }
        if tokens.cfg.client_cert_auth
            && let Some(cn) = &c.cert_cn
        {
            return Ok(Some(AuthInfo {
                user: cn.clone(),
                revision: self.auth_state().revision,
            }));
        }
        Ok(None)
    }

    /// Who `token` names, for a gateway that met it (lookout's
    /// `Tokens.Resolve`): the user, the auth revision the identity holds
    /// at, and how long the token stays valid without another use (`None`:
    /// it never expires). Resolving a simple token counts as a use of it.
    /// While auth is on, only a caller with the root role may ask.
    ///
    /// # Errors
    /// The caller is not root; [`Error::InvalidAuthToken`] for a token
    /// this member does not know, an expired one or one signed by another
    /// key.
    pub async fn resolve_token(
        &self,
        caller: Option<&AuthInfo>,
        token: &str,
    ) -> Result<(AuthInfo, Option<Duration>)> {
        check_admin(&self.auth_state(), caller)?;
        let creds = Credentials {
            token: Some(token.to_string()),
            cert_cn: None,
        };
        let who = self
            .auth_info(&creds)
            .await?
            .ok_or(Error::InvalidAuthToken)?;
        let ttl = match self.inner.tokens.jwt() {
            Some(j) => j.claims(token).and_then(|c| c.expires).map(|e| {
                e.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
            }),
            None => Some(self.inner.tokens.ttl()),
        };
        Ok((who, ttl))
    }

    /// Maintenance's admin calls (Defragment, Snapshot, Hash, HashKV):
    /// the root role, answered with etcd's unmapped texts.
    ///
    /// # Errors
    /// Code Unknown with "auth: ..." when the caller is not root.
    pub async fn check_maintenance_admin(&self, c: &Credentials) -> Result<()> {
        let who = self.auth_info(c).await.map_err(unmapped)?;
        check_admin(&self.auth_state(), who.as_ref()).map_err(unmapped)
    }

    /// Membership changes: the root role, with etcd's mapped errors.
    ///
    /// # Errors
    /// User empty, not found, permission denied, invalid token.
    pub async fn check_member_admin(&self, c: &Credentials) -> Result<()> {
        let who = self.auth_info(c).await?;
        check_admin(&self.auth_state(), who.as_ref())
    }

    /// Wraps a client's write with who sent it (see [`Request::As`]).
    /// A store that has never had a user writes the request bare, as
    /// before auth existed (so members of an older version still read its
    /// log); the apply treats a bare client write as anonymous.
    pub(crate) fn wrap(&self, who: Option<&AuthInfo>, req: Request) -> Request {
        let a = self.auth_state();
        if who.is_none() && !a.enabled && a.users.is_empty() {
            return req;
        }
        Request::As {
            user: who.map(|w| w.user.clone()).unwrap_or_default(),
            revision: who.map_or(0, |w| w.revision),
            req: Box::new(req),
        }
    }

    /// A request the store makes itself (lease expiry) as the root user,
    /// when auth is on.
    pub(crate) fn as_root(&self, req: Request) -> Request {
        let a = self.auth_state();
        if !a.enabled {
            return req;
        }
        Request::As {
            user: super::ROOT.to_string(),
            revision: a.revision,
            req: Box::new(req),
        }
    }

    /// Proposes one auth change as `who`; the token an Authenticate
    /// issued (empty otherwise).
    async fn propose_auth(&self, who: Option<&AuthInfo>, a: AuthRequest) -> Result<String> {
        // Always wrapped: the apply checks the root role.
        let req = Request::As {
            user: who.map(|w| w.user.clone()).unwrap_or_default(),
            revision: who.map_or(0, |w| w.revision),
            req: Box::new(Request::Auth(a)),
        };
        match self.propose(req).await?.response? {
            Response::Auth { token } => Ok(token),
            other => Err(Error::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    fn auth_header(&self) -> Option<lookout_proto::pb::ResponseHeader> {
        self.header(self.revision())
    }

    // === Auth API ===

    /// # Errors
    /// Not root (while enabled), no root user or no root role.
    pub async fn auth_enable(&self, who: Option<&AuthInfo>) -> Result<AuthEnableResponse> {
        self.propose_auth(who, AuthRequest::Enable).await?;
        Ok(AuthEnableResponse {
            header: self.auth_header(),
        })
    }

    /// # Errors
    /// Not root.
    pub async fn auth_disable(&self, who: Option<&AuthInfo>) -> Result<AuthDisableResponse> {
        self.propose_auth(who, AuthRequest::Disable).await?;
        Ok(AuthDisableResponse {
            header: self.auth_header(),
        })
    }

    /// etcd 3.5's AuthStatus (root only while enabled).
    ///
    /// # Errors
    /// Not root, no leader.
    pub async fn auth_status(&self, who: Option<&AuthInfo>) -> Result<AuthStatusResponse> {
        self.read_index().await?;
        let a = self.auth_state();
        check_admin(&a, who)?;
        Ok(AuthStatusResponse {
            header: self.auth_header(),
            enabled: a.enabled,
            auth_revision: a.revision,
        })
    }

    /// etcd's Authenticate: the password checked (bcrypt, off the async
    /// workers) against the linearizable auth state, then a token: a JWT
    /// signed here, or a simple token every member learns through raft.
    ///
    /// # Errors
    /// Auth not enabled, unknown user or wrong password (one answer for
    /// both), a password given for a `no_password` user.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<AuthenticateResponse> {
        self.read_index().await?;
        let deadline = Instant::now() + self.config().request_timeout();
        for _ in 0..AUTHENTICATE_TRIES {
            let a = self.auth_state();
            if !a.enabled {
                return Err(Error::AuthNotEnabled);
            }
            let hash = match a.users.get(name) {
                None => return Err(Error::AuthFailed),
                Some(u) if u.options.is_some_and(|o| o.no_password) => {
                    return Err(Error::Unmapped(
                        "auth: authentication failed, password was given for no password user"
                            .into(),
                    ));
                }
                Some(u) => u.password.to_vec(),
            };
            if !password::verify(password.to_string(), hash).await? {
                return Err(Error::AuthFailed);
            }
            let token = match self.inner.tokens.jwt() {
                Some(j) => j.sign(name, a.revision).map_err(Error::Unmapped)?,
                None => {
                    let prefix = super::Tokens::new_prefix();
                    let a = AuthRequest::Authenticate {
                        name: name.to_string(),
                        prefix,
                    };
                    // Not sent as the caller: Authenticate needs no role.
                    match self.propose(Request::Auth(a)).await?.response? {
                        Response::Auth { token } => token,
                        other => {
                            return Err(Error::Internal(format!("unexpected answer {other:?}")));
                        }
                    }
                }
            };
            if self.auth_state().revision == a.revision || Instant::now() >= deadline {
                return Ok(AuthenticateResponse {
                    header: self.auth_header(),
                    token,
                });
            }
        }
        Err(Error::Timeout)
    }

    /// # Errors
    /// Not root, empty name, the user exists.
    pub async fn user_add(
        &self,
        who: Option<&AuthInfo>,
        r: AuthUserAddRequest,
    ) -> Result<AuthUserAddResponse> {
        // Refuse before paying for a hash the apply would throw away.
        check_admin(&self.auth_state(), who)?;
        let no_password = r.options.is_some_and(|o| o.no_password);
        let hash = if no_password {
            Vec::new()
        } else {
            password::hash(r.password, self.inner.tokens.cfg.bcrypt_cost).await?
        };
        self.propose_auth(
            who,
            AuthRequest::UserAdd {
                name: r.name,
                hash,
                no_password,
            },
        )
        .await?;
        Ok(AuthUserAddResponse {
            header: self.auth_header(),
        })
    }

    /// A user's roles: root, or the user asking about itself.
    ///
    /// # Errors
    /// Not permitted, no such user.
    pub async fn user_get(
        &self,
        who: Option<&AuthInfo>,
        name: &str,
    ) -> Result<AuthUserGetResponse> {
        self.read_index().await?;
        let a = self.auth_state();
        if let Err(e) = check_admin(&a, who)
            && who.is_none_or(|w| w.user != name)
        {
            return Err(e);
        }
        let u = a.users.get(name).ok_or(Error::UserNotFound)?;
        Ok(AuthUserGetResponse {
            header: self.auth_header(),
            roles: u.roles.clone(),
        })
    }

    /// # Errors
    /// Not root.
    pub async fn user_list(&self, who: Option<&AuthInfo>) -> Result<AuthUserListResponse> {
        self.read_index().await?;
        let a = self.auth_state();
        check_admin(&a, who)?;
        Ok(AuthUserListResponse {
            header: self.auth_header(),
            users: a.users.keys().cloned().collect(),
        })
    }

    /// # Errors
    /// Not root, root while enabled, no such user.
    pub async fn user_delete(
        &self,
        who: Option<&AuthInfo>,
        name: String,
    ) -> Result<AuthUserDeleteResponse> {
        self.propose_auth(who, AuthRequest::UserDelete { name })
            .await?;
        Ok(AuthUserDeleteResponse {
            header: self.auth_header(),
        })
    }

    /// # Errors
    /// Not root, no such user.
    pub async fn user_change_password(
        &self,
        who: Option<&AuthInfo>,
        name: String,
        password: String,
    ) -> Result<AuthUserChangePasswordResponse> {
        check_admin(&self.auth_state(), who)?;
        let hash = password::hash(password, self.inner.tokens.cfg.bcrypt_cost).await?;
        self.propose_auth(who, AuthRequest::UserChangePassword { name, hash })
            .await?;
        Ok(AuthUserChangePasswordResponse {
            header: self.auth_header(),
        })
    }

    /// # Errors
    /// Not root, no such user or role.
    pub async fn user_grant_role(
        &self,
        who: Option<&AuthInfo>,
        user: String,
        role: String,
    ) -> Result<AuthUserGrantRoleResponse> {
        self.propose_auth(who, AuthRequest::UserGrantRole { user, role })
            .await?;
        Ok(AuthUserGrantRoleResponse {
            header: self.auth_header(),
        })
    }

    /// # Errors
    /// Not root, root's root role while enabled, no such user, not granted.
    pub async fn user_revoke_role(
        &self,
        who: Option<&AuthInfo>,
        name: String,
        role: String,
    ) -> Result<AuthUserRevokeRoleResponse> {
        self.propose_auth(who, AuthRequest::UserRevokeRole { name, role })
            .await?;
        Ok(AuthUserRevokeRoleResponse {
            header: self.auth_header(),
        })
    }

    /// # Errors
    /// Not root, empty name, the role exists.
    pub async fn role_add(
        &self,
        who: Option<&AuthInfo>,
        name: String,
    ) -> Result<AuthRoleAddResponse> {
        self.propose_auth(who, AuthRequest::RoleAdd { name })
            .await?;
        Ok(AuthRoleAddResponse {
            header: self.auth_header(),
        })
    }

    /// A role's permissions: root, or a user holding the role.
    ///
    /// # Errors
    /// Not permitted, no such role.
    pub async fn role_get(
        &self,
        who: Option<&AuthInfo>,
        role: &str,
    ) -> Result<AuthRoleGetResponse> {
        self.read_index().await?;
        let a = self.auth_state();
        if let Err(e) = check_admin(&a, who) {
            let holds = who
                .and_then(|w| a.users.get(&w.user))
                .is_some_and(|u| u.roles.iter().any(|r| r == role));
            if !holds {
                return Err(e);
            }
        }
        let r = a.roles.get(role).ok_or(Error::RoleNotFound)?;
        Ok(AuthRoleGetResponse {
            header: self.auth_header(),
            perm: r.key_permission.clone(),
        })
    }

    /// # Errors
    /// Not root.
    pub async fn role_list(&self, who: Option<&AuthInfo>) -> Result<AuthRoleListResponse> {
        self.read_index().await?;
        let a = self.auth_state();
        check_admin(&a, who)?;
        Ok(AuthRoleListResponse {
            header: self.auth_header(),
            roles: a.roles.keys().cloned().collect(),
        })
    }

    /// # Errors
    /// Not root, root while enabled, no such role.
    pub async fn role_delete(
        &self,
        who: Option<&AuthInfo>,
        role: String,
    ) -> Result<AuthRoleDeleteResponse> {
        self.propose_auth(who, AuthRequest::RoleDelete { role })
            .await?;
        Ok(AuthRoleDeleteResponse {
            header: self.auth_header(),
        })
    }

    /// # Errors
    /// Not root, no permission given, an empty or empty-range key, no
    /// such role.
    pub async fn role_grant_permission(
        &self,
        who: Option<&AuthInfo>,
        r: AuthRoleGrantPermissionRequest,
    ) -> Result<AuthRoleGrantPermissionResponse> {
        check_admin(&self.auth_state(), who)?;
        let p = r.perm.ok_or(Error::PermissionNotGiven)?;
        self.propose_auth(
            who,
            AuthRequest::RoleGrantPermission {
                name: r.name,
                perm_type: p.perm_type,
                key: p.key.to_vec(),
                range_end: p.range_end.to_vec(),
            },
        )
        .await?;
        Ok(AuthRoleGrantPermissionResponse {
            header: self.auth_header(),
        })
    }

    /// # Errors
    /// Not root, no such role, no such permission.
    pub async fn role_revoke_permission(
        &self,
        who: Option<&AuthInfo>,
        r: AuthRoleRevokePermissionRequest,
    ) -> Result<AuthRoleRevokePermissionResponse> {
        self.propose_auth(
            who,
            AuthRequest::RoleRevokePermission {
                role: r.role,
                key: r.key.to_vec(),
                range_end: r.range_end.to_vec(),
            },
        )
        .await?;
        Ok(AuthRoleRevokePermissionResponse {
            header: self.auth_header(),
        })
    }
}
