//! `GET /version`, as etcd answers it: `{"etcdserver":"X.Y.Z","etcdcluster":"X.Y.0"}`.
//!
//! Clients read it before anything else to pick their JSON path prefix
//! (`/v3alpha` before 3.3, `/v3beta` in 3.3, `/v3` from 3.4) and the
//! features they may use, so it reports the etcd API level Lookout
//! implements, not Lookout's own version: the store, `lookout dev` and every
//! gateway answer the same, whatever sits upstream of a gateway.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The etcd release whose API Lookout implements (Maintenance.Status's
/// `version` says the same).
pub const ETCD_SERVER_VERSION: &str = lookout_consensus::store::VERSION;

/// The cluster version etcd derives from it: major.minor.0.
pub fn etcd_cluster_version() -> String {
    let mut parts = ETCD_SERVER_VERSION.splitn(3, '.');
    let major = parts.next().unwrap_or("3");
    let minor = parts.next().unwrap_or("4");
    format!("{major}.{minor}.0")
}

/// The JSON body, field order as etcd's.
pub fn version_json() -> String {
    serde_json::json!({
        "etcdserver": ETCD_SERVER_VERSION,
        "etcdcluster": etcd_cluster_version(),
    })
    .to_string()
}

/// `GET /version`; any other method is etcd's 405 with `Allow: GET`.
pub(crate) async fn version(method: Method) -> Response {
    if method != Method::GET {
        let mut r = (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    }
    let mut r = (StatusCode::OK, version_json()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_version_is_major_minor_zero() {
        let v: serde_json::Value = serde_json::from_str(&version_json()).unwrap();
        assert_eq!(v["etcdserver"], ETCD_SERVER_VERSION);
        let cluster = v["etcdcluster"].as_str().unwrap();
        assert!(cluster.ends_with(".0"));
        assert!(ETCD_SERVER_VERSION.starts_with(cluster.trim_end_matches('0')));
    }
}
