//! etcd's JSON gateway paths: `POST <prefix>/<service>/<method>` with the
//! request message as JSON, answered with the response message as JSON
//! (the generated serde impls write etcd's form) or etcd's error body.
//!
//! Every path is served under each prefix etcd's gateway has used, so
//! clients of every etcd release find theirs: `/v3` (etcd 3.4+),
//! `/v3beta` (3.3, still served by 3.4) and `/v3alpha` (3.2 and 3.3
//! clients). The set is etcd 3.4's registrations
//! (`etcdserverpb/gw/rpc.pb.gw.go`, `v3lockpb/gw`, `v3electionpb/gw`) plus
//! the two etcd 3.5 added (`maintenance/hashkv`, `auth/status`); as in
//! 3.4, `maintenance/hash` is Hash.
//!
//! Unary calls go through the backend's tonic services, so an answer is
//! exactly the gRPC answer. Streams answer one `{"result": ...}` line per
//! message: `lease/keepalive` per request object in the body, `watch` (in
//! `watch.rs`) per watch response, `maintenance/snapshot` per chunk and
//! `election/observe` per leader change.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, post};
use futures::{Stream, StreamExt};
use lookout_proto::pb::{
    self, LeaseKeepAliveRequest, auth_server::Auth, cluster_server::Cluster, kv_server::Kv,
    lease_server::Lease, maintenance_server::Maintenance,
};
use lookout_proto::v3electionpb::{self as epb, election_server::Election};
use lookout_proto::v3lockpb::{self as lpb, lock_server::Lock};
use serde::Serialize;
use tonic::Status;

use super::body::{JsonStream, parse_json, read_limited};
use super::error::{EtcdError, HttpError, json_response};
use super::request::grpc_request;
use super::{EtcdApi, HttpState};

type S<A> = State<Arc<HttpState<A>>>;
type Route<A> = MethodRouter<Arc<HttpState<A>>>;

/// The JSON gateway's path prefixes, newest first.
pub(crate) const PREFIXES: &[&str] = &["/v3", "/v3beta", "/v3alpha"];

/// Every path under each prefix, in etcd's registration order.
pub(crate) const PATHS: &[&str] = &[
    "/kv/range",
    "/kv/put",
    "/kv/deleterange",
    "/kv/txn",
    "/kv/compaction",
    "/watch",
    "/lease/grant",
    "/lease/revoke",
    "/kv/lease/revoke",
    "/lease/keepalive",
    "/lease/timetolive",
    "/kv/lease/timetolive",
    "/lease/leases",
    "/kv/lease/leases",
    "/cluster/member/add",
    "/cluster/member/remove",
    "/cluster/member/update",
    "/cluster/member/list",
    "/cluster/member/promote",
    "/maintenance/alarm",
    "/maintenance/status",
    "/maintenance/defragment",
    "/maintenance/hash",
    "/maintenance/hashkv",
    "/maintenance/snapshot",
    "/maintenance/transfer-leadership",
    "/auth/enable",
    "/auth/disable",
    "/auth/status",
    "/auth/authenticate",
    "/auth/user/add",
    "/auth/user/get",
    "/auth/user/list",
    "/auth/user/delete",
    "/auth/user/changepw",
    "/auth/user/grant",
    "/auth/user/revoke",
    "/auth/role/add",
    "/auth/role/get",
    "/auth/role/list",
    "/auth/role/delete",
    "/auth/role/grant",
    "/auth/role/revoke",
    "/lock/lock",
    "/lock/unlock",
    "/election/campaign",
    "/election/proclaim",
    "/election/leader",
    "/election/observe",
    "/election/resign",
];

/// A successful answer: the message as etcd's gateway writes it.
pub(crate) fn ok_json(m: &impl Serialize) -> Response {
    json_response(StatusCode::OK, m)
}

/// POST only; OPTIONS answers the CORS preflight; any other method gets
/// grpc-gateway's plain-text 405.
fn post_only<A: EtcdApi>(m: Route<A>) -> Route<A> {
    m.options(|| async { StatusCode::OK }).fallback(|| async {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                ),
                (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            "Method Not Allowed\n",
        )
    })
}

/// One unary handler per path: parse the body as the request message,
/// call the backend's service, write the response message.
macro_rules! unary {
    ($($name:ident($s:ident, $req:ident): $ty:ty => $call:expr;)*) => {$(
        async fn $name<A: EtcdApi>(
            State($s): S<A>,
            headers: HeaderMap,
            ext: Extensions,
            body: Body,
        ) -> Result<Response, EtcdError> {
            let bytes = read_limited(&headers, body, $s.cfg.json_limit()).await?;
            let msg: $ty = parse_json(&bytes)?;
            let $req = grpc_request(&headers, &ext, msg);
            Ok(ok_json(&$call.await?.into_inner()))
        }
    )*};
}

unary! {
    put(s, r): pb::PutRequest => Kv::put(s.api.kv(), r);
    delete_range(s, r): pb::DeleteRangeRequest => Kv::delete_range(s.api.kv(), r);
    txn(s, r): pb::TxnRequest => Kv::txn(s.api.kv(), r);
    compact(s, r): pb::CompactionRequest => Kv::compact(s.api.kv(), r);
    lease_grant(s, r): pb::LeaseGrantRequest => Lease::lease_grant(s.api.lease(), r);
    lease_revoke(s, r): pb::LeaseRevokeRequest => Lease::lease_revoke(s.api.lease(), r);
    lease_time_to_live(s, r): pb::LeaseTimeToLiveRequest =>
        Lease::lease_time_to_live(s.api.lease(), r);
    lease_leases(s, r): pb::LeaseLeasesRequest => Lease::lease_leases(s.api.lease(), r);
    member_add(s, r): pb::MemberAddRequest => Cluster::member_add(s.api.cluster(), r);
    member_remove(s, r): pb::MemberRemoveRequest => Cluster::member_remove(s.api.cluster(), r);
    member_update(s, r): pb::MemberUpdateRequest => Cluster::member_update(s.api.cluster(), r);
    member_list(s, r): pb::MemberListRequest => Cluster::member_list(s.api.cluster(), r);
    member_promote(s, r): pb::MemberPromoteRequest =>
        Cluster::member_promote(s.api.cluster(), r);
    alarm(s, r): pb::AlarmRequest => Maintenance::alarm(s.api.maintenance(), r);
    status(s, r): pb::StatusRequest => Maintenance::status(s.api.maintenance(), r);
    defragment(s, r): pb::DefragmentRequest => Maintenance::defragment(s.api.maintenance(), r);
    hash(s, r): pb::HashRequest => Maintenance::hash(s.api.maintenance(), r);
    hash_kv(s, r): pb::HashKvRequest => Maintenance::hash_kv(s.api.maintenance(), r);
    move_leader(s, r): pb::MoveLeaderRequest => Maintenance::move_leader(s.api.maintenance(), r);
    auth_enable(s, r): pb::AuthEnableRequest => Auth::auth_enable(s.api.auth(), r);
    auth_disable(s, r): pb::AuthDisableRequest => Auth::auth_disable(s.api.auth(), r);
    auth_status(s, r): pb::AuthStatusRequest => Auth::auth_status(s.api.auth(), r);
    authenticate(s, r): pb::AuthenticateRequest => Auth::authenticate(s.api.auth(), r);
    user_add(s, r): pb::AuthUserAddRequest => Auth::user_add(s.api.auth(), r);
    user_get(s, r): pb::AuthUserGetRequest => Auth::user_get(s.api.auth(), r);
    user_list(s, r): pb::AuthUserListRequest => Auth::user_list(s.api.auth(), r);
    user_delete(s, r): pb::AuthUserDeleteRequest => Auth::user_delete(s.api.auth(), r);
    user_change_password(s, r): pb::AuthUserChangePasswordRequest =>
        Auth::user_change_password(s.api.auth(), r);
    user_grant_role(s, r): pb::AuthUserGrantRoleRequest => Auth::user_grant_role(s.api.auth(), r);
    user_revoke_role(s, r): pb::AuthUserRevokeRoleRequest =>
        Auth::user_revoke_role(s.api.auth(), r);
    role_add(s, r): pb::AuthRoleAddRequest => Auth::role_add(s.api.auth(), r);
    role_get(s, r): pb::AuthRoleGetRequest => Auth::role_get(s.api.auth(), r);
    role_list(s, r): pb::AuthRoleListRequest => Auth::role_list(s.api.auth(), r);
    role_delete(s, r): pb::AuthRoleDeleteRequest => Auth::role_delete(s.api.auth(), r);
    role_grant_permission(s, r): pb::AuthRoleGrantPermissionRequest =>
        Auth::role_grant_permission(s.api.auth(), r);
    role_revoke_permission(s, r): pb::AuthRoleRevokePermissionRequest =>
        Auth::role_revoke_permission(s.api.auth(), r);
    lock(s, r): lpb::LockRequest => Lock::lock(&s.lock, r);
    unlock(s, r): lpb::UnlockRequest => Lock::unlock(&s.lock, r);
    campaign(s, r): epb::CampaignRequest => Election::campaign(&s.election, r);
    proclaim(s, r): epb::ProclaimRequest => Election::proclaim(&s.election, r);
    leader(s, r): epb::LeaderRequest => Election::leader(&s.election, r);
    resign(s, r): epb::ResignRequest => Election::resign(&s.election, r);
}

/// Range refuses Lookout's extension fields where the backend cannot
/// serve them, before the call.
async fn range<A: EtcdApi>(
    State(s): S<A>,
    headers: HeaderMap,
    ext: Extensions,
    body: Body,
) -> Result<Response, EtcdError> {
    let bytes = read_limited(&headers, body, s.cfg.json_limit()).await?;
    let msg: pb::RangeRequest = parse_json(&bytes)?;
    s.api.check_range_extensions(&msg)?;
    let r = grpc_request(&headers, &ext, msg);
    Ok(ok_json(&Kv::range(s.api.kv(), r).await?.into_inner()))
}

/// `{"result": <message>}` and a newline: one element of a gateway stream.
pub(crate) fn result_line(m: &impl Serialize) -> Vec<u8> {
    #[derive(Serialize)]
    struct Chunk<'a, T> {
        result: &'a T,
    }
    let mut v = serde_json::to_vec(&Chunk { result: m }).expect("messages serialize");
    v.push(b'\n');
    v
}

/// A server stream as `{"result": ...}` lines; an error becomes
/// grpc-gateway's stream error object and ends the answer.
fn stream_lines<T: Serialize + Send + 'static>(
    s: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> Response {
    let lines = s
        .scan(false, |failed, item| {
            if *failed {
                return std::future::ready(None);
            }
            let line = match item {
                Ok(m) => bytes::Bytes::from(result_line(&m)),
                Err(st) => {
                    *failed = true;
                    bytes::Bytes::from(HttpError::Api(st).stream_line())
                }
            };
            std::future::ready(Some(Ok::<_, std::convert::Infallible>(line)))
        })
        .boxed();
    stream_response(Body::from_stream(lines))
}

/// `maintenance/snapshot`: the backup as base64 chunks, one line each.
async fn snapshot<A: EtcdApi>(
    State(s): S<A>,
    headers: HeaderMap,
    ext: Extensions,
    body: Body,
) -> Result<Response, EtcdError> {
    let bytes = read_limited(&headers, body, s.cfg.json_limit()).await?;
    let msg: pb::SnapshotRequest = parse_json(&bytes)?;
    let chunks = Maintenance::snapshot(s.api.maintenance(), grpc_request(&headers, &ext, msg))
        .await?
        .into_inner();
    Ok(stream_lines(chunks))
}

/// `election/observe`: a line per leader change, for as long as the client
/// stays.
async fn observe<A: EtcdApi>(
    State(s): S<A>,
    headers: HeaderMap,
    ext: Extensions,
    body: Body,
) -> Result<Response, EtcdError> {
    let bytes = read_limited(&headers, body, s.cfg.json_limit()).await?;
    let msg: epb::LeaderRequest = parse_json(&bytes)?;
    let leaders = Election::observe(&s.election, grpc_request(&headers, &ext, msg))
        .await?
        .into_inner();
    // Ends with the server, as the watch streams do.
    let stopped = s.stop.clone().cancelled_owned();
    Ok(stream_lines(leaders.take_until(Box::pin(stopped))))
}

/// `lease/keepalive`: the body is a stream of `{"ID": ...}` objects;
/// each gets a `{"result": ...}` line, and the answer ends with the body.
/// A bad first object is a 400 before anything is streamed.
async fn keep_alive<A: EtcdApi>(
    State(s): S<A>,
    headers: HeaderMap,
    ext: Extensions,
    body: Body,
) -> Result<Response, EtcdError> {
    let mut requests = JsonStream::new(body, s.cfg.json_limit());
    let first = match requests.next::<LeaseKeepAliveRequest>().await {
        Some(r) => Some(r?),
        None => None,
    };
    let rest = futures::stream::unfold(requests, |mut r| async move {
        match r.next::<LeaseKeepAliveRequest>().await {
            Some(Ok(req)) => Some((req, r)),
            // The stream of requests ends at the first bad object, as
            // grpc-gateway stops reading there.
            Some(Err(e)) => {
                tracing::debug!(error = %e, "bad keep-alive request; ending the stream");
                None
            }
            None => None,
        }
    });
    let requests = futures::stream::iter(first).chain(rest).boxed();
    let meta = crate::api::CallMeta::of(&grpc_request(&headers, &ext, ()));
    let answers = s.api.lease_keep_alive(meta, requests).await?;
    let lines = answers.map(|a| {
        Ok::<_, std::convert::Infallible>(match a {
            Ok(resp) => bytes::Bytes::from(result_line(&resp)),
            Err(st) => bytes::Bytes::from(HttpError::Api(st).stream_line()),
        })
    });
    Ok(stream_response(Body::from_stream(lines)))
}

/// A streamed JSON answer.
pub(crate) fn stream_response(body: Body) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The handler of one path (under any prefix).
fn handler<A: EtcdApi>(path: &str) -> Option<Route<A>> {
    let h = match path {
        "/kv/range" => post(range::<A>),
        "/kv/put" => post(put::<A>),
        "/kv/deleterange" => post(delete_range::<A>),
        "/kv/txn" => post(txn::<A>),
        "/kv/compaction" => post(compact::<A>),
        "/watch" => post(super::watch::v3_watch::<A>),
        "/lease/grant" => post(lease_grant::<A>),
        "/lease/revoke" | "/kv/lease/revoke" => post(lease_revoke::<A>),
        "/lease/keepalive" => post(keep_alive::<A>),
        "/lease/timetolive" | "/kv/lease/timetolive" => post(lease_time_to_live::<A>),
        "/lease/leases" | "/kv/lease/leases" => post(lease_leases::<A>),
        "/cluster/member/add" => post(member_add::<A>),
        "/cluster/member/remove" => post(member_remove::<A>),
        "/cluster/member/update" => post(member_update::<A>),
        "/cluster/member/list" => post(member_list::<A>),
        "/cluster/member/promote" => post(member_promote::<A>),
        "/maintenance/alarm" => post(alarm::<A>),
        "/maintenance/status" => post(status::<A>),
        "/maintenance/defragment" => post(defragment::<A>),
        "/maintenance/hash" => post(hash::<A>),
        "/maintenance/hashkv" => post(hash_kv::<A>),
        "/maintenance/snapshot" => post(snapshot::<A>),
        "/maintenance/transfer-leadership" => post(move_leader::<A>),
        "/auth/enable" => post(auth_enable::<A>),
        "/auth/disable" => post(auth_disable::<A>),
        "/auth/status" => post(auth_status::<A>),
        "/auth/authenticate" => post(authenticate::<A>),
        "/auth/user/add" => post(user_add::<A>),
        "/auth/user/get" => post(user_get::<A>),
        "/auth/user/list" => post(user_list::<A>),
        "/auth/user/delete" => post(user_delete::<A>),
        "/auth/user/changepw" => post(user_change_password::<A>),
        "/auth/user/grant" => post(user_grant_role::<A>),
        "/auth/user/revoke" => post(user_revoke_role::<A>),
        "/auth/role/add" => post(role_add::<A>),
        "/auth/role/get" => post(role_get::<A>),
        "/auth/role/list" => post(role_list::<A>),
        "/auth/role/delete" => post(role_delete::<A>),
        "/auth/role/grant" => post(role_grant_permission::<A>),
        "/auth/role/revoke" => post(role_revoke_permission::<A>),
        "/lock/lock" => post(lock::<A>),
        "/lock/unlock" => post(unlock::<A>),
        "/election/campaign" => post(campaign::<A>),
        "/election/proclaim" => post(proclaim::<A>),
        "/election/leader" => post(leader::<A>),
        "/election/observe" => post(observe::<A>),
        "/election/resign" => post(resign::<A>),
        _ => return None,
    };
    Some(post_only(h))
}

pub(crate) fn routes<A: EtcdApi>() -> Router<Arc<HttpState<A>>> {
    let mut r = Router::new();
    for path in PATHS {
        let h = handler::<A>(path).expect("every listed path has a handler");
        for prefix in PREFIXES {
            r = r.route(&format!("{prefix}{path}"), h.clone());
        }
    }
    r.route("/", any(super::serve::listing))
        .route("/v3", any(super::serve::listing))
        .route("/v1", any(super::serve::listing))
        .route("/version", any(super::version::version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_a_handler_once() {
        let mut seen = std::collections::HashSet::new();
        for p in PATHS {
            assert!(seen.insert(p), "{p} listed twice");
            assert!(handler::<crate::api::StoreApi>(p).is_some(), "{p}");
        }
        assert!(handler::<crate::api::StoreApi>("/nope").is_none());
    }

    #[test]
    fn authorization_and_grpc_metadata_travel() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "tok".parse().unwrap());
        h.insert("grpc-metadata-x-trace", "1".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let r = grpc_request(&h, &Extensions::new(), ());
        assert_eq!(r.metadata().get("authorization").unwrap(), "tok");
        assert_eq!(r.metadata().get("x-trace").unwrap(), "1");
        assert!(r.metadata().get("accept").is_none());
    }
}
