//! etcd 3.5's `/livez` and `/readyz` (server/etcdserver/api/etcdhttp
//! health.go), in its exact text format, for the store, `lookout dev` and
//! the gateway (client port and `--metrics-addr`).
//!
//! ```text
//!  GET /readyz[?verbose][&exclude=NAME...]  ─> run every check not excluded, in order
//!        all ok:  200 "ok\n"   (verbose: "[+]NAME ok\n" per check, then "ok\n")
//!        any bad: 503 "[+]a ok\n[-]b failed: REASON\n" + "\n" (always the full list)
//!  GET /readyz/NAME[?verbose]              ─> that check alone, same format
//!  any other method                        ─> 405 "Method Not Allowed\n", Allow: GET
//! ```
//!
//! Checks of `lookout store` are etcd's: `/livez` serializable_read;
//! `/readyz` data_corruption, serializable_read, linearizable_read,
//! non_learner. A gateway (and `lookout dev`, whose client port is its
//! gateway) keeps the meaning its `/readyz` always had under names of the
//! same style: `/livez` serializable_read (the cache has listed the
//! store, so it answers serializable reads); `/readyz` serializable_read,
//! linearizable_read (the cache applied the store's current revision,
//! learned with one linearizable probe, which is what a linearizable read
//! through the gateway waits for) and not_draining (no SIGTERM drain in
//! progress). etcd runs checks in map order, which varies; these run in
//! the order listed.
//!
//! It must never answer 200 for a check that did not run, and never
//! hang: every check is bounded by [`CHECK_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::future::BoxFuture;
use lookout_consensus::Store;
use lookout_proto::pb::RangeRequest;

use crate::shared::Shared;

/// Longest any check may take before it fails with a timeout (a probe
/// usually times out at a second or a few; this keeps a hung upstream
/// from hanging the probe).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One check: Ok, or the reason it failed.
pub(crate) type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The checks of one endpoint (`livez` or `readyz`), in order.
#[derive(Clone)]
pub(crate) struct Checks {
    kind: &'static str,
    checks: Vec<(&'static str, Check)>,
}

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.checks.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Checks")
            .field("kind", &self.kind)
            .field("checks", &names)
            .finish()
    }
}

impl Checks {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            checks: Vec::new(),
        }
    }

    pub(crate) fn add<F, Fut>(mut self, name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((
            name,
            Arc::new(move || Box::pin(f()) as BoxFuture<'static, _>),
        ));
        self
    }

    /// Runs `names` in order: (all passed, etcd's per-check lines).
    async fn run(&self, names: &[&'static str]) -> (bool, String) {
        let mut ok = true;
        let mut text = String::new();
        for (name, check) in self.checks.iter().filter(|(n, _)| names.contains(n)) {
            let r = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {CHECK_TIMEOUT:?}")),
            };
            match r {
                Ok(()) => text.push_str(&format!("[+]{name} ok\n")),
                Err(e) => {
                    ok = false;
                    text.push_str(&format!("[-]{name} failed: {e}\n"));
                }
            }
        }
        (ok, text)
    }

    /// `/KIND` and `/KIND/NAME` for every check.
    pub(crate) fn routes(self) -> Router {
        let this = Arc::new(self);
        let root = format!("/{}", this.kind);
        let mut r = Router::new().route(
            &root,
            any({
                let this = this.clone();
                move |req: Request| {
                    let this = this.clone();
                    async move {
                        let excluded = query_values(req.uri().query(), "exclude");
                        let names: Vec<&'static str> = this
                            .checks
                            .iter()
                            .map(|(n, _)| *n)
                            .filter(|n| !excluded.iter().any(|e| e == n))
                            .collect();
                        answer(&this, req.method().clone(), req.uri().query(), &names).await
                    }
                }
            }),
        );
        for (name, _) in &this.checks {
            let name: &'static str = name;
            let this = this.clone();
            r =
                r.route(
                    &format!("{root}/{name}"),
                    any(move |req: Request| {
                        let this = this.clone();
                        async move {
                            answer(&this, req.method().clone(), req.uri().query(), &[name]).await
                        }
                    }),
                );
        }
        r
    }
}

/// etcd's handler around a set of checks.
fn answer(
    checks: &Checks,
    method: Method,
    query: Option<&str>,
    names: &[&'static str],
) -> impl std::future::Future<Output = Response> + Send + 'static {
    let checks = checks.clone();
    let verbose = has_key(query, "verbose");
    let names = names.to_vec();
    async move { answer_now(&checks, method, verbose, &names).await }
}

async fn answer_now(
    checks: &Checks,
    method: Method,
    verbose: bool,
    names: &[&'static str],
) -> Response {
    let text = |status: StatusCode, body: String| {
        let mut r = (status, body).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    };
    if method != Method::GET {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let (ok, lines) = checks.run(names).await;
    if !ok {
        // Go's http.Error writes the message and a newline.
        tracing::warn!(kind = checks.kind, reason = %lines.trim_end(), "health check failed");
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("{lines}\n"));
    }
    let body = if verbose {
        format!("{lines}ok\n")
    } else {
        "ok\n".to_string()
    };
    text(StatusCode::OK, body)
}

/// Every non-empty value of `key` in a query string (percent-decoded).
fn query_values(query: Option<&str>, key: &str) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (decode(k) == key && !v.is_empty()).then(|| decode(v))
        })
        .collect()
}

/// Whether `key` appears at all (`?verbose`, `?verbose=`, `?verbose=1`).
fn has_key(query: Option<&str>, key: &str) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .any(|kv| decode(kv.split_once('=').map_or(kv, |(k, _)| k)) == key)
}

/// Minimal query decoding: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === the store's checks (etcd's) ===

/// etcd's read check: a one-key keys-only range, serializable or not.
async fn read_check(store: Store, serializable: bool) -> Result<(), String> {
    let req = RangeRequest {
        key: vec![0].into(),
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    store
        .range(req)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// etcd's CORRUPT alarm number.
const ALARM_CORRUPT: u64 = 2;

/// `/livez` and `/readyz` of `lookout store`, with etcd's check names.
pub(crate) fn store_checks(store: &Store) -> Router {
    let s = store.clone();
    let livez = Checks::new("livez").add("serializable_read", move || read_check(s.clone(), true));
    let (a, b, c, d) = (store.clone(), store.clone(), store.clone(), store.clone());
    let readyz = Checks::new("readyz")
        .add("data_corruption", move || {
            let corrupt = a
                .snapshot()
                .alarms
                .values()
                .any(|bits| bits & (1 << ALARM_CORRUPT) != 0);
            async move {
                if corrupt {
                    Err("alarm activated: CORRUPT".to_string())
                } else {
                    Ok(())
                }
            }
        })
        .add("serializable_read", move || read_check(b.clone(), true))
        .add("linearizable_read", move || read_check(c.clone(), false))
        .add("non_learner", move || {
            let me = d.member_id();
            let learner = d
                .raft()
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .learner_ids()
                .any(|l| l == me);
            async move {
                if learner {
                    Err("not supported for learner".to_string())
                } else {
                    Ok(())
                }
            }
        });
    livez.routes().merge(readyz.routes())
}

// === the gateway's checks ===

/// The cache has listed the store (it answers serializable reads).
fn cache_listed(s: &Shared) -> Result<(), String> {
    if s.cache.is_ready() {
        Ok(())
    } else {
        Err("cache not synced with the store yet".to_string())
    }
}

/// The cache applied the store's current revision (one linearizable
/// probe, shared with concurrent reads, then a bounded wait).
async fn caught_up(s: Arc<Shared>) -> Result<(), String> {
    cache_listed(&s)?;
    let bound = Duration::from_secs(2);
    let rev = match tokio::time::timeout(bound, s.read_index.current_revision(s.cache.upstream()))
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("upstream: {}", e.message())),
        Err(_) => return Err("upstream revision probe timed out".to_string()),
    };
    s.cache
        .wait_for_revision(rev, bound)
        .await
        .map(|_| ())
        .map_err(|e| format!("cache behind the store revision {rev}: {e}"))
}

/// `/livez` and `/readyz` of a gateway (see the module doc for the names).
pub(crate) fn gateway_checks(shared: &Arc<Shared>) -> Router {
    let s = shared.clone();
    let livez = Checks::new("livez").add("serializable_read", move || {
        let r = cache_listed(&s);
        async move { r }
    });
    let (a, b, c) = (shared.clone(), shared.clone(), shared.clone());
    let readyz = Checks::new("readyz")
        .add("serializable_read", move || {
            let r = cache_listed(&a);
            async move { r }
        })
        .add("linearizable_read", move || caught_up(b.clone()))
        .add("not_draining", move || {
            let r = if c.is_shutting_down() {
                Err("shutting down".to_string())
            } else {
                Ok(())
            };
            async move { r }
        });
    livez.routes().merge(readyz.routes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn checks(second_fails: bool) -> Router {
        Checks::new("readyz")
            .add("first", || async { Ok(()) })
            .add("second", move || async move {
                if second_fails {
                    Err("etcdserver: no leader".to_string())
                } else {
                    Ok(())
                }
            })
            .routes()
    }

    async fn call(r: &Router, method: &str, uri: &str) -> (u16, String, Response) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = r.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        (
            status,
            text,
            Response::from_parts(parts, axum::body::Body::empty()),
        )
    }

    // Expected texts are etcd 3.5.21's, from health.go: "ok\n"; verbose
    // "[+]name ok\n" lines before it; failures through http.Error (the
    // reason plus a newline) with every check's line.
    #[tokio::test]
    async fn answers_in_etcds_format() {
        let ok = checks(false);
        let (c, t, r) = call(&ok, "GET", "/readyz").await;
        assert_eq!((c, t.as_str()), (200, "ok\n"));
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let (c, t, _) = call(&ok, "GET", "/readyz?verbose").await;
        assert_eq!((c, t.as_str()), (200, "[+]first ok\n[+]second ok\nok\n"));
        let (c, t, _) = call(&ok, "GET", "/readyz/second?verbose=true").await;
        assert_eq!((c, t.as_str()), (200, "[+]second ok\nok\n"));

        let bad = checks(true);
        let (c, t, _) = call(&bad, "GET", "/readyz").await;
        assert_eq!(
            (c, t.as_str()),
            (
                503,
                "[+]first ok\n[-]second failed: etcdserver: no leader\n\n"
            )
        );
        let (c, t, _) = call(&bad, "GET", "/readyz?exclude=second&verbose").await;
        assert_eq!((c, t.as_str()), (200, "[+]first ok\nok\n"));
        // Excluding a check that does not exist is ignored, as in etcd.
        let (c, _, _) = call(&bad, "GET", "/readyz?exclude=nope&exclude=second").await;
        assert_eq!(c, 200);
        let (c, t, _) = call(&bad, "GET", "/readyz/first").await;
        assert_eq!((c, t.as_str()), (200, "ok\n"));
        let (c, t, _) = call(&bad, "GET", "/readyz/second").await;
        assert_eq!(
            (c, t.as_str()),
            (503, "[-]second failed: etcdserver: no leader\n\n")
        );
        let (c, t, r) = call(&bad, "POST", "/readyz").await;
        assert_eq!((c, t.as_str()), (405, "Method Not Allowed\n"));
        assert_eq!(r.headers()[header::ALLOW], "GET");
        let (c, _, _) = call(&bad, "HEAD", "/readyz/first").await;
        assert_eq!(c, 405);
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            query_values(Some("exclude=a&exclude=&exclude=b%5Fc&x=1"), "exclude"),
            vec!["a", "b_c"]
        );
        assert!(has_key(Some("verbose"), "verbose"));
        assert!(has_key(Some("a=1&verbose="), "verbose"));
        assert!(!has_key(Some("verbosex=1"), "verbose"));
        assert_eq!(decode("a%2"), "a%2");
    }
}
