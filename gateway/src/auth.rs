//! The Auth service on a gateway: every call is forwarded to the store,
//! which owns users, roles and permissions, and answered as the store
//! answered it (the header names this gateway, as every forwarded answer
//! does).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use lookout_proto::pb::{self, auth_client::AuthClient, auth_server::Auth};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::server::Shared;

#[derive(Debug, Clone)]
pub(crate) struct AuthService {
    shared: Arc<Shared>,
}

impl AuthService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn client(&self) -> Result<AuthClient<Channel>, Status> {
        let ch = self.shared.upstream.channel().await?;
        self.shared.metrics.forwarded.fetch_add(1, Relaxed);
        Ok(AuthClient::new(ch))
    }
}

/// One forwarding method per Auth call: the request's metadata (a token)
/// travels with it, the answer's header is restamped.
macro_rules! forward_auth {
    ($($method:ident: $req:ident => $resp:ident;)*) => {
        #[tonic::async_trait]
        impl Auth for AuthService {
            $(
                async fn $method(
                    &self,
                    request: Request<pb::$req>,
                ) -> Result<Response<pb::$resp>, Status> {
                    let mut client = self.client().await?;
                    let (meta, _, msg) = request.into_parts();
                    let mut up = Request::new(msg);
                    *up.metadata_mut() = meta;
                    match client.$method(up).await {
                        Ok(r) => {
                            let mut r = r.into_inner();
                            self.shared.restamp(&mut r.header);
                            Ok(Response::new(r))
                        }
                        Err(s) => {
                            self.shared.upstream.report_failure(&s);
                            Err(s)
                        }
                    }
                }
            )*
        }
    };
}

forward_auth! {
    auth_enable: AuthEnableRequest => AuthEnableResponse;
    auth_disable: AuthDisableRequest => AuthDisableResponse;
    auth_status: AuthStatusRequest => AuthStatusResponse;
    authenticate: AuthenticateRequest => AuthenticateResponse;
    user_add: AuthUserAddRequest => AuthUserAddResponse;
    user_get: AuthUserGetRequest => AuthUserGetResponse;
    user_list: AuthUserListRequest => AuthUserListResponse;
    user_delete: AuthUserDeleteRequest => AuthUserDeleteResponse;
    user_change_password: AuthUserChangePasswordRequest => AuthUserChangePasswordResponse;
    user_grant_role: AuthUserGrantRoleRequest => AuthUserGrantRoleResponse;
    user_revoke_role: AuthUserRevokeRoleRequest => AuthUserRevokeRoleResponse;
    role_add: AuthRoleAddRequest => AuthRoleAddResponse;
    role_get: AuthRoleGetRequest => AuthRoleGetResponse;
    role_list: AuthRoleListRequest => AuthRoleListResponse;
    role_delete: AuthRoleDeleteRequest => AuthRoleDeleteResponse;
    role_grant_permission: AuthRoleGrantPermissionRequest => AuthRoleGrantPermissionResponse;
    role_revoke_permission: AuthRoleRevokePermissionRequest => AuthRoleRevokePermissionResponse;
}
