//! etcd 3.4's JSON gateway paths: `POST /v3/<service>/<method>` with the
//! request message as JSON, answered with the response message as JSON
//! (the generated serde impls write etcd's form) or etcd's error body.
//! `/v3/lease/keepalive` answers one `{"result": ...}` line per request
//! object in the body, as etcd's gateway streams it; `/v3/watch` lives in
//! `watch.rs`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, post};
use futures::StreamExt;
use lookout_proto::pb::LeaseKeepAliveRequest;
use serde::Serialize;

use super::body::{JsonStream, parse_json, read_limited};
use super::error::{EtcdError, HttpError, json_response};
use super::{EtcdApi, HttpState};

type S<A> = State<Arc<HttpState<A>>>;

/// A successful answer: the message as etcd's gateway writes it.
pub(crate) fn ok_json(m: &impl Serialize) -> Response {
    json_response(StatusCode::OK, m)
}

/// POST only; OPTIONS answers the CORS preflight; anything else 405.
fn post_only<A: EtcdApi>(m: MethodRouter<Arc<HttpState<A>>>) -> MethodRouter<Arc<HttpState<A>>> {
    m.options(|| async { StatusCode::OK })
        .fallback(|method: Method, uri: Uri| async move {
            EtcdError(HttpError::MethodNotAllowed {
                method: method.to_string(),
                path: uri.path().to_string(),
                allowed: "POST",
            })
        })
}

/// One unary handler per path: parse the body as the request message,
/// call the API, write the response message.
macro_rules! unary {
    ($($name:ident: $req:ty => $method:ident;)*) => {$(
        async fn $name<A: EtcdApi>(
            State(s): S<A>,
            headers: HeaderMap,
            body: Body,
        ) -> Result<Response, EtcdError> {
            let bytes = read_limited(&headers, body, s.cfg.json_limit()).await?;
            let req: $req = parse_json(&bytes)?;
            Ok(ok_json(&s.api.$method(req).await?))
        }
    )*};
}

unary! {
    range: lookout_proto::pb::RangeRequest => range;
    put: lookout_proto::pb::PutRequest => put;
    delete_range: lookout_proto::pb::DeleteRangeRequest => delete_range;
    txn: lookout_proto::pb::TxnRequest => txn;
    compact: lookout_proto::pb::CompactionRequest => compact;
    lease_grant: lookout_proto::pb::LeaseGrantRequest => lease_grant;
    lease_revoke: lookout_proto::pb::LeaseRevokeRequest => lease_revoke;
    lease_time_to_live: lookout_proto::pb::LeaseTimeToLiveRequest => lease_time_to_live;
    lease_leases: lookout_proto::pb::LeaseLeasesRequest => lease_leases;
    status: lookout_proto::pb::StatusRequest => status;
    member_list: lookout_proto::pb::MemberListRequest => member_list;
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

/// `/v3/lease/keepalive`: the body is a stream of `{"ID": ...}` objects;
/// each gets a `{"result": ...}` line, and the answer ends with the body.
/// A bad first object is a 400 before anything is streamed.
async fn keep_alive<A: EtcdApi>(State(s): S<A>, body: Body) -> Result<Response, EtcdError> {
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
    let answers = s.api.lease_keep_alive(requests).await?;
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

pub(crate) fn routes<A: EtcdApi>() -> Router<Arc<HttpState<A>>> {
    Router::new()
        .route("/v3/kv/range", post_only(post(range::<A>)))
        .route("/v3/kv/put", post_only(post(put::<A>)))
        .route("/v3/kv/deleterange", post_only(post(delete_range::<A>)))
        .route("/v3/kv/txn", post_only(post(txn::<A>)))
        .route("/v3/kv/compaction", post_only(post(compact::<A>)))
        .route("/v3/lease/grant", post_only(post(lease_grant::<A>)))
        .route("/v3/lease/revoke", post_only(post(lease_revoke::<A>)))
        .route(
            "/v3/lease/timetolive",
            post_only(post(lease_time_to_live::<A>)),
        )
        .route("/v3/lease/leases", post_only(post(lease_leases::<A>)))
        .route("/v3/lease/keepalive", post_only(post(keep_alive::<A>)))
        // etcd 3.4's additional bindings for the same three calls; clients
        // such as Python etcd3gw revoke and read TTLs only through these.
        .route("/v3/kv/lease/revoke", post_only(post(lease_revoke::<A>)))
        .route(
            "/v3/kv/lease/timetolive",
            post_only(post(lease_time_to_live::<A>)),
        )
        .route("/v3/kv/lease/leases", post_only(post(lease_leases::<A>)))
        .route("/v3/watch", post_only(post(super::watch::v3_watch::<A>)))
        .route("/v3/maintenance/status", post_only(post(status::<A>)))
        .route("/v3/cluster/member/list", post_only(post(member_list::<A>)))
        .route("/", any(super::serve::listing))
        .route("/v3", any(super::serve::listing))
        .route("/v1", any(super::serve::listing))
        .route("/version", any(super::version::version))
}
