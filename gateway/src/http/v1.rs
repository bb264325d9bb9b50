//! The readable key-value API: keys in the URL path (percent-encoded bytes
//! allowed), values as raw bodies, JSON answers with text keys and values.
//!
//! ```text
//!   GET    /v1/kv/<key>                 raw value (+ X-Lookout-* headers); JSON on Accept: application/json
//!   GET    /v1/kv/<prefix>?prefix=true  {"revision":R,"count":N,"more":false,"kvs":[...]}
//!          ...&index=node&value=n1       only the entries whose index `node` is `n1`
//!   PUT    /v1/kv/<key>[?lease=ID]      body = value       -> {"revision":R}
//!   DELETE /v1/kv/<key>[?prefix=true]                      -> {"revision":R,"deleted":N}
//! ```
//!
//! Every call is made as its sender (`login.rs`: a bearer token, a Basic
//! login, or the TLS client certificate), checked as the same gRPC call.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use lookout_proto::mvccpb::KeyValue;
use lookout_proto::pb::{DeleteRangeRequest, PutRequest, RangeRequest, kv_server::Kv};
use serde::Serialize;

use super::body::read_limited;
use super::error::{HttpError, readable_json};
use super::login::as_sender;
use super::request::{Params, path_key, prefix_end};
use super::text::TextKv;
use super::{EtcdApi, HttpState};
use crate::api::inner;

type S<A> = State<Arc<HttpState<A>>>;

/// `(key, range_end)` for a key or, with `prefix`, every key under it.
fn range_of(key: Vec<u8>, prefix: bool) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
    if prefix {
        if key.is_empty() {
            return Ok((vec![0], vec![0]));
        }
        let end = prefix_end(&key);
        return Ok((key, end));
    }
    if key.is_empty() {
        return Err(HttpError::BadRequest(
            "a key is required in the path (or ?prefix=true for every key)".into(),
        ));
    }
    Ok((key, Vec::new()))
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

#[derive(Serialize)]
struct ListAnswer<'a> {
    revision: i64,
    count: i64,
    more: bool,
    kvs: Vec<TextKv<'a>>,
}

#[derive(Serialize)]
struct OneAnswer<'a> {
    revision: i64,
    kv: TextKv<'a>,
}

#[derive(Serialize)]
struct PutAnswer<'a> {
    revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_kv: Option<TextKv<'a>>,
}

#[derive(Serialize)]
struct DeleteAnswer<'a> {
    revision: i64,
    deleted: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prev_kvs: Vec<TextKv<'a>>,
}

async fn get_kv<A: EtcdApi>(
    State(s): S<A>,
    uri: Uri,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Response, HttpError> {
    let p = Params::parse(
        uri.query(),
        &[
            "prefix",
            "rev",
            "limit",
            "keys_only",
            "count_only",
            "serializable",
            "index",
            "value",
        ],
    )?;
    let prefix = p.flag("prefix")?;
    let (key, range_end) = range_of(path_key(uri.path(), "/v1/kv"), prefix)?;
    let keys_only = p.flag("keys_only")?;
    let req = RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        limit: p.int("limit")?.unwrap_or(0),
        revision: p.int("rev")?.unwrap_or(0),
        keys_only,
        count_only: p.flag("count_only")?,
        serializable: p.flag("serializable")?,
        index: p.text("index")?,
        value: p
            .get("value")
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        ..Default::default()
    };
    s.api.check_range_extensions(&req)?;
    let resp = as_sender(&s, &headers, &ext, |m| {
        let req = req.clone();
        let s = &s;
        async move { inner(Kv::range(s.api.kv(), m.request(req)).await) }
    })
    .await?;
    let revision = resp.header.map_or(0, |h| h.revision);
    if prefix || p.get("count_only").is_some() {
        let body = ListAnswer {
            revision,
            count: resp.count,
            more: resp.more,
            kvs: resp
                .kvs
                .iter()
                .map(|kv| TextKv::new(kv, !keys_only))
                .collect(),
        };
        return Ok(readable_json(StatusCode::OK, &body));
    }
    let Some(kv) = resp.kvs.first() else {
        return Err(HttpError::KeyNotFound);
    };
    if wants_json(&headers) {
        let body = OneAnswer {
            revision,
            kv: TextKv::new(kv, !keys_only),
        };
        return Ok(readable_json(StatusCode::OK, &body));
    }
    Ok(raw_value(revision, kv, keys_only))
}

/// The value as the body; the metadata in headers.
fn raw_value(revision: i64, kv: &KeyValue, keys_only: bool) -> Response {
    let body = if keys_only {
        Body::empty()
    } else {
        Body::from(kv.value.clone())
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    for (name, v) in [
        ("x-lookout-revision", revision),
        ("x-lookout-create-revision", kv.create_revision),
        ("x-lookout-mod-revision", kv.mod_revision),
        ("x-lookout-version", kv.version),
        ("x-lookout-lease", kv.lease),
    ] {
        if v != 0 || name == "x-lookout-revision" {
            h.insert(name, HeaderValue::from(v));
        }
    }
    r
}

async fn put_kv<A: EtcdApi>(
    State(s): S<A>,
    uri: Uri,
    headers: HeaderMap,
    ext: Extensions,
    body: Body,
) -> Result<Response, HttpError> {
    let p = Params::parse(uri.query(), &["lease", "prev_kv"])?;
    let key = path_key(uri.path(), "/v1/kv");
    if key.is_empty() {
        return Err(HttpError::BadRequest(
            "a key is required in the path".into(),
        ));
    }
    let value = read_limited(&headers, body, s.cfg.value_limit()).await?;
    let prev_kv = p.flag("prev_kv")?;
    let req = PutRequest {
        key: key.into(),
        value,
        lease: p.int("lease")?.unwrap_or(0),
        prev_kv,
        ..Default::default()
    };
    let resp = as_sender(&s, &headers, &ext, |m| {
        let req = req.clone();
        let s = &s;
        async move { inner(Kv::put(s.api.kv(), m.request(req)).await) }
    })
    .await?;
    let body = PutAnswer {
        revision: resp.header.map_or(0, |h| h.revision),
        prev_kv: resp.prev_kv.as_ref().map(|kv| TextKv::new(kv, true)),
    };
    Ok(readable_json(StatusCode::OK, &body))
}

async fn delete_kv<A: EtcdApi>(
    State(s): S<A>,
    uri: Uri,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Response, HttpError> {
    let p = Params::parse(uri.query(), &["prefix", "prev_kv"])?;
    let (key, range_end) = range_of(path_key(uri.path(), "/v1/kv"), p.flag("prefix")?)?;
    let req = DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prev_kv: p.flag("prev_kv")?,
    };
    let resp = as_sender(&s, &headers, &ext, |m| {
        let req = req.clone();
        let s = &s;
        async move { inner(Kv::delete_range(s.api.kv(), m.request(req)).await) }
    })
    .await?;
    let body = DeleteAnswer {
        revision: resp.header.map_or(0, |h| h.revision),
        deleted: resp.deleted,
        prev_kvs: resp
            .prev_kvs
            .iter()
            .map(|kv| TextKv::new(kv, true))
            .collect(),
    };
    Ok(readable_json(StatusCode::OK, &body))
}

fn with_405<A: EtcdApi>(
    m: MethodRouter<Arc<HttpState<A>>>,
    allowed: &'static str,
) -> MethodRouter<Arc<HttpState<A>>> {
    m.options(|| async { StatusCode::OK })
        .fallback(move |method: Method, uri: Uri| async move {
            HttpError::MethodNotAllowed {
                method: method.to_string(),
                path: uri.path().to_string(),
                allowed,
            }
        })
}

pub(crate) fn routes<A: EtcdApi>() -> Router<Arc<HttpState<A>>> {
    let kv = || {
        with_405(
            get(get_kv::<A>).put(put_kv::<A>).delete(delete_kv::<A>),
            "GET, PUT, DELETE",
        )
    };
    let watch = || with_405(get(super::watch::v1_watch::<A>), "GET");
    Router::new()
        .route("/v1/kv", kv())
        .route("/v1/kv/", kv())
        .route("/v1/kv/{*key}", kv())
        .route("/v1/watch", watch())
        .route("/v1/watch/", watch())
        .route("/v1/watch/{*key}", watch())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(path_key("/v1/kv/a/b%20c", "/v1/kv"), b"a/b c");
        assert_eq!(path_key("/v1/kv/", "/v1/kv"), b"");
        assert_eq!(path_key("/v1/kv", "/v1/kv"), b"");
        assert_eq!(path_key("/v1/kv//lead", "/v1/kv"), b"/lead");
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert!(range_of(Vec::new(), false).is_err());
        assert_eq!(range_of(Vec::new(), true).unwrap(), (vec![0], vec![0]));
    }

    #[test]
    fn params_are_checked() {
        let p = Params::parse(Some("prefix&rev=4&limit=x"), &["prefix", "rev", "limit"]).unwrap();
        assert!(p.flag("prefix").unwrap());
        assert_eq!(p.int("rev").unwrap(), Some(4));
        assert!(
            p.int("limit")
                .unwrap_err()
                .to_string()
                .contains("\"limit\"")
        );
        let e = Params::parse(Some("prefx=true"), &["prefix"]).unwrap_err();
        assert!(e.to_string().contains("prefx"), "{e}");
    }
}
