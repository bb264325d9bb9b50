//! The Auth service on a gateway: every call is forwarded to the store,
//! which owns users, roles and permissions, and answered as the store
//! answered it (the header names this gateway, as every forwarded answer
//! does).
//!
//! A call travels with the client's token when it sent one. A client named
//! by its certificate is checked here with the store's rules (the root
//! role; or, for UserGet and RoleGet, the user itself or a holder of the
//! role) and sent as the gateway; anyone else is sent nameless, after the
//! same check as nameless (etcd's "user name is empty" while auth is on).
//! `--auth-config` identities are unknown to the store: nameless to it.
//!
//! A change (users, roles, grants, enable, disable) is answered only once
//! the gateway's copy of the auth state holds it, so the client's next
//! request through this gateway is judged by it. A token Authenticate
//! hands out through here is remembered (no store round trip at its first
//! use).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lookout_cache::{AuthChannel, CallAs};
use lookout_consensus::auth::{AuthInfo, AuthState, check_admin};
use lookout_consensus::to_status;
use lookout_proto::pb::{self, auth_client::AuthClient, auth_server::Auth};
use tonic::{Request, Response, Status};

use super::{Creds, Who};
use crate::shared::Shared;

/// Longest a change's answer waits for the gateway's copy to hold it.
const CHANGE_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub(crate) struct AuthService {
    shared: Arc<Shared>,
}

type Rule<'a> =
    Box<dyn FnOnce(&AuthState, Option<&AuthInfo>) -> lookout_consensus::Result<()> + Send + 'a>;

/// etcd's `IsAdminPermitted`.
fn admin<T>(_: &T) -> Rule<'_> {
    Box::new(check_admin)
}

/// UserGet: root, or the user asking about itself.
fn user_get(m: &pb::AuthUserGetRequest) -> Rule<'_> {
    let name = m.name.as_str();
    Box::new(move |st, w| {
        check_admin(st, w).or_else(|e| match w {
            Some(w) if w.user == name => Ok(()),
            _ => Err(e),
        })
    })
}

/// RoleGet: root, or a user holding the role.
fn role_get(m: &pb::AuthRoleGetRequest) -> Rule<'_> {
    let role = m.role.as_str();
    Box::new(move |st, w| {
        check_admin(st, w).or_else(|e| {
            let holds = w
                .and_then(|w| st.users.get(&w.user))
                .is_some_and(|u| u.roles.iter().any(|r| r == role));
            if holds { Ok(()) } else { Err(e) }
        })
    })
}

impl AuthService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// How a call from `creds` travels, once `rule` passed where it must.
    async fn call_as(&self, creds: &Creds, rule: Rule<'_>) -> Result<CallAs, Status> {
        let auth = &self.shared.auth;
        let who = auth.who(creds).await?;
        auth.named(&who)?;
        // Auth calls are the store's: judged by its state, whatever the
        // gateway declares itself.
        let st = auth.mirror().state();
        match who {
            Who::Token { token, .. } => Ok(CallAs::Client(Some(token))),
            Who::Cert(info) => {
                rule(&st, Some(&info)).map_err(to_status)?;
                Ok(CallAs::Gateway)
            }
            Who::Nobody | Who::Local(_) => {
                rule(&st, None).map_err(to_status)?;
                Ok(CallAs::Client(None))
            }
        }
    }

    /// Forwards one call as `who`; the answer's header restamped.
    async fn forward<Req, Resp, F, Fut>(&self, who: &CallAs, msg: Req, f: F) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(AuthClient<AuthChannel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        self.shared.metrics.forwarded.fetch_add(1, Relaxed);
        self.shared
            .upstream
            .call_as(who, |ch| f(AuthClient::new(ch), msg.clone()))
            .await
    }

    /// After a change: the copy holds it before the client hears back.
    async fn changed(&self) {
        self.shared.auth.mirror().refresh_now(CHANGE_WAIT).await;
    }
}

/// One method: resolve, check, forward, restamp; a change waits for the
/// gateway's copy.
macro_rules! forward_auth {
    ($($method:ident: $req:ident => $resp:ident, $rule:path, $changes:expr;)*) => {
        #[tonic::async_trait]
        impl Auth for AuthService {
            async fn authenticate(
                &self,
                request: Request<pb::AuthenticateRequest>,
            ) -> Result<Response<pb::AuthenticateResponse>, Status> {
                // Nameless, whatever it carries: a stale token must not keep
                // a client from logging in again (etcd's later 3.4 fix).
                let msg = request.into_inner();
                let name = msg.name.clone();
                let mut r = self
                    .forward(&CallAs::Client(None), msg, |mut c, m| async move {
                        c.authenticate(m).await
                    })
                    .await?;
                let auth = &self.shared.auth;
                auth.tokens().learn(&r.token, &name);
                // A JWT newer than the copy: the store changed meanwhile.
                if super::jwt_revision(&r.token)
                    .is_some_and(|rev| rev > auth.mirror().state().revision)
                {
                    auth.mirror().kick();
                }
                self.shared.restamp(&mut r.header);
                Ok(Response::new(r))
            }

            $(
                async fn $method(
                    &self,
                    request: Request<pb::$req>,
                ) -> Result<Response<pb::$resp>, Status> {
                    let creds = Creds::of_request(&request);
                    let msg = request.into_inner();
                    let rule: Rule<'_> = $rule(&msg);
                    let who = self.call_as(&creds, rule).await?;
                    let mut r = self
                        .forward(&who, msg.clone(), |mut c, m| async move { c.$method(m).await })
                        .await?;
                    if $changes {
                        self.changed().await;
                    }
                    self.shared.restamp(&mut r.header);
                    Ok(Response::new(r))
                }
            )*
        }
    };
}

forward_auth! {
    auth_enable: AuthEnableRequest => AuthEnableResponse, admin, true;
    auth_disable: AuthDisableRequest => AuthDisableResponse, admin, true;
    auth_status: AuthStatusRequest => AuthStatusResponse, admin, false;
    user_add: AuthUserAddRequest => AuthUserAddResponse, admin, true;
    user_get: AuthUserGetRequest => AuthUserGetResponse,
        user_get, false;
    user_list: AuthUserListRequest => AuthUserListResponse, admin, false;
    user_delete: AuthUserDeleteRequest => AuthUserDeleteResponse, admin, true;
    user_change_password: AuthUserChangePasswordRequest => AuthUserChangePasswordResponse,
        admin, true;
    user_grant_role: AuthUserGrantRoleRequest => AuthUserGrantRoleResponse, admin, true;
    user_revoke_role: AuthUserRevokeRoleRequest => AuthUserRevokeRoleResponse, admin, true;
    role_add: AuthRoleAddRequest => AuthRoleAddResponse, admin, true;
    role_get: AuthRoleGetRequest => AuthRoleGetResponse,
        role_get, false;
    role_list: AuthRoleListRequest => AuthRoleListResponse, admin, false;
    role_delete: AuthRoleDeleteRequest => AuthRoleDeleteResponse, admin, true;
    role_grant_permission: AuthRoleGrantPermissionRequest => AuthRoleGrantPermissionResponse,
        admin, true;
    role_revoke_permission: AuthRoleRevokePermissionRequest => AuthRoleRevokePermissionResponse,
        admin, true;
}
