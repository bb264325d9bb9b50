//! What the HTTP endpoints read off a request: the key a path names, the
//! query parameters, and the gRPC request a call is made as. `/v1`, `/v3`
//! and the watch streams all use these, so they live apart from each of
//! them.

use axum::http::HeaderMap;

use super::error::HttpError;
use super::text::{percent_decode, query_pairs};

/// The key a `/v1/<api>/<key>` path names, as bytes.
pub(crate) fn path_key(path: &str, api: &str) -> Vec<u8> {
    let rest = path.strip_prefix(api).unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    percent_decode(rest, false)
}

/// The first key after every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`); `[0]` (every key) when there is none.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Query parameters, checked against the names an endpoint takes (a typo
/// is an error, not a silently ignored option).
#[derive(Debug)]
pub(crate) struct Params(Vec<(String, Vec<u8>)>);

impl Params {
    pub(crate) fn parse(q: Option<&str>, allowed: &[&str]) -> Result<Self, HttpError> {
        let pairs = query_pairs(q);
        if let Some((name, _)) = pairs.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            return Err(HttpError::BadQuery {
                name: name.clone(),
                message: format!("unknown parameter; this path takes {}", allowed.join(", ")),
            });
        }
        Ok(Self(pairs))
    }

    /// A UTF-8 parameter (empty when absent).
    pub(crate) fn text(&self, name: &str) -> Result<String, HttpError> {
        let Some(v) = self.get(name) else {
            return Ok(String::new());
        };
        String::from_utf8(v.to_vec()).map_err(|_| HttpError::BadQuery {
            name: name.into(),
            message: "must be UTF-8".into(),
        })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// `?x`, `?x=true`, `?x=1` are true; absent, `false`, `0` false.
    pub(crate) fn flag(&self, name: &str) -> Result<bool, HttpError> {
        match self.get(name) {
            None => Ok(false),
            Some(b"" | b"true" | b"1") => Ok(true),
            Some(b"false" | b"0") => Ok(false),
            Some(v) => Err(HttpError::BadQuery {
                name: name.into(),
                message: format!("want true or false, got {:?}", String::from_utf8_lossy(v)),
            }),
        }
    }

    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, HttpError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| HttpError::BadQuery {
                name: name.into(),
                message: format!("want an integer, got {:?}", String::from_utf8_lossy(v)),
            })
    }
}

/// A gRPC request for `msg` carrying what grpc-gateway forwards from the
/// HTTP request: the `Authorization` header (etcd reads a token from the
/// `authorization` metadata as from `token`) and `Grpc-Metadata-*`
/// headers.
///
/// The request's extensions travel too: they hold its TLS connection, whose
/// client certificate names the user under `--client-cert-auth` (etcd's
/// own gateway dials with the server's certificate and so ignores the
/// client's; here the client's own certificate counts, on `/v3` as on
/// gRPC).
pub(crate) fn grpc_request<T>(
    headers: &HeaderMap,
    ext: &axum::http::Extensions,
    msg: T,
) -> tonic::Request<T> {
    let mut r = tonic::Request::from_parts(tonic::metadata::MetadataMap::new(), ext.clone(), msg);
    let md = r.metadata_mut();
    for (name, value) in headers {
        let key = if name == axum::http::header::AUTHORIZATION {
            "authorization"
        } else if let Some(k) = name.as_str().strip_prefix("grpc-metadata-") {
            k
        } else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_bytes()),
        ) {
            md.append(k, v);
        }
    }
    r
}
