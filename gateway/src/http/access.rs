//! etcd's HTTP access control (`--cors`, `--host-whitelist`), in front of
//! the HTTP API routes:
//!
//! ```text
//!  request ─ plain HTTP and Host not whitelisted? ─> 421 (etcd's text: DNS rebinding)
//!          ─ OPTIONS? ─> 200 (preflight)  ─┐
//!          ─ otherwise the route ──────────┴─> CORS headers for an allowed Origin
//! ```
//!
//! As etcd: `*` (or nothing) in `--host-whitelist` allows any host, and the
//! check applies to plain HTTP only (TLS already binds the name); `*` in
//! `--cors` answers `Access-Control-Allow-Origin: *`, otherwise a listed
//! `Origin` is echoed back and any other gets no CORS header. Unlike etcd,
//! no `--cors` means no CORS header at all (etcd's default is `*`): a
//! browser page on another origin must be allowed by name.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// `--cors` and `--host-whitelist`, as lists (defaults: no origin, any
/// host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub cors: Vec<String>,
    pub host_whitelist: Vec<String>,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            cors: Vec::new(),
            host_whitelist: vec!["*".into()],
        }
    }
}

impl Access {
    fn host_allowed(&self, host: &str) -> bool {
        self.host_whitelist.is_empty() || self.host_whitelist.iter().any(|h| h == "*" || h == host)
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if any.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        if self.cors.iter().any(|c| c == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin?;
        let s = o.to_str().ok()?;
        self.cors.iter().any(|c| c == s).then(|| o.clone())
    }
}

/// The request's host name without its port (etcd's `GetHostname`).
fn hostname(req: &Request) -> String {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string))
        .unwrap_or_default();
    if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or("").to_string();
    }
    match raw.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => raw,
    }
}

fn is_tls(req: &Request) -> bool {
    req.extensions()
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
        .is_some()
}

/// etcd's answer to a Host it does not serve (CVE-2018-5702).
fn misdirected(host: &str) -> Response {
    let text = format!(
        "\netcd received your request, but the Host header was unrecognized.\n\nTo fix this, choose one of the following options:\n- Enable TLS, then any HTTPS request will be allowed.\n- Add the hostname you want to use to the whitelist in settings.\n  - e.g. etcd --host-whitelist {host:?}\n\nThis requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n"
    );
    (StatusCode::MISDIRECTED_REQUEST, text).into_response()
}

/// The middleware (see the module doc).
pub(crate) async fn check(access: std::sync::Arc<Access>, req: Request, next: Next) -> Response {
    if !is_tls(&req) {
        let host = hostname(&req);
        if !access.host_allowed(&host) {
            tracing::warn!(%host, "rejecting HTTP request to prevent DNS rebinding attacks");
            return misdirected(&host);
        }
    }
    let allow = access.allow_origin(req.headers().get(header::ORIGIN));
    let mut r = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = allow {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("accept, content-type, authorization, last-event-id"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins_like_etcd() {
        // Defaults: any host (etcd's), no CORS header (etcd says `*`).
        let open = Access::default();
        assert!(open.host_allowed("evil.example"));
        let page = HeaderValue::from_static("https://evil.example");
        assert_eq!(open.allow_origin(Some(&page)), None);
        let any = Access {
            cors: vec!["*".into()],
            ..Access::default()
        };
        assert_eq!(any.allow_origin(None), Some(HeaderValue::from_static("*")));
        let strict = Access {
            cors: vec!["https://ui.example".into()],
            host_whitelist: vec!["localhost".into(), "127.0.0.1".into()],
        };
        assert!(strict.host_allowed("localhost"));
        assert!(!strict.host_allowed("evil.example"));
        let ui = HeaderValue::from_static("https://ui.example");
        assert_eq!(strict.allow_origin(Some(&ui)), Some(ui.clone()));
        let other = HeaderValue::from_static("https://evil.example");
        assert_eq!(strict.allow_origin(Some(&other)), None);
        assert_eq!(strict.allow_origin(None), None);
        let r = |h: &str| {
            axum::http::Request::builder()
                .header(header::HOST, h)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(hostname(&r("localhost:2379")), "localhost");
        assert_eq!(hostname(&r("[::1]:2379")), "::1");
        assert_eq!(hostname(&r("example.com")), "example.com");
    }
}
