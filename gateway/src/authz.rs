//! Per-client authorization (`--auth-config FILE`): a client certificate's
//! common name, or a bearer token, maps to the key prefixes the client may
//! read and write, as an etcd role limited to prefixes would.
//!
//! ```text
//!  request ─> AuthzLayer: who? (TLS client cert CN | `authorization: Bearer t` | `token: t`)
//!               │  Principal into the request's extensions
//!               ├─ Maintenance/Cluster admin calls, Compact: admin only
//!               ├─ HTTP key API (/v3/kv, /v3/watch, /v1): full-keyspace clients only
//!               v
//!  AuthzKv ─ Range/Put/DeleteRange/Txn: every key range inside the prefixes ─> KvService
//!  Watch   ─ each create checked when it arrives (WatchGuard): refused ones get
//!            etcd's created+canceled "etcdserver: permission denied"; allowed ones
//!            join the shared watch groups, which only ever see allowed creates
//! ```
//!
//! etcd's semantics, matched: a request whose range reaches beyond the
//! allowed prefixes is refused whole (never trimmed); a client with no
//! identity gets `etcdserver: user name is empty` (InvalidArgument) on KV
//! calls and permission denied on watches; an unknown identity gets
//! permission denied. A watch refusal does not end the stream (etcd 3.5;
//! 3.4 stopped reading the stream after it).
//!
//! The file (YAML or TOML, chosen by extension; YAML otherwise):
//!
//! ```yaml
//! clients:
//!   - cn: alice            # client certificate common name
//!     prefixes: ["/alice/"]
//!   - token: s3cret        # or a bearer token
//!     prefixes: ["/shared/", "/bob/"]
//!     read_only: true
//!   - cn: root
//!     admin: true          # every key, Compact, Maintenance, member changes
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use bytes::Bytes;
use lookout_cache::KeyRange;
use lookout_proto::pb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    WatchCreateRequest, kv_server::Kv, request_op,
};
use serde::Deserialize;
use tonic::Status;

/// etcd's message for an operation outside the caller's permissions.
pub const PERMISSION_DENIED: &str = "etcdserver: permission denied";
/// etcd's message when auth is on and the request names nobody.
pub const USER_EMPTY: &str = "etcdserver: user name is empty";

/// Why an auth config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parse {path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{path}: client #{index} has neither cn nor token")]
    NoIdentity { path: String, index: usize },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    clients: Vec<ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    cn: Option<String>,
    token: Option<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    admin: bool,
}

/// What one client may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Key ranges (one per prefix) the client may touch.
    pub ranges: Vec<KeyRange>,
    pub read_only: bool,
    /// Every key, plus Compact, Maintenance and membership calls.
    pub admin: bool,
}

impl Permissions {
    /// Whether `[key, range_end)` (etcd's spelling: empty end = one key,
    /// `"\0"` = from key) lies inside one allowed range.
    pub fn allows(&self, key: &[u8], range_end: &[u8]) -> bool {
        if self.admin {
            return true;
        }
        let want = KeyRange::from_request(
            &Bytes::copy_from_slice(key),
            &Bytes::copy_from_slice(range_end),
        );
        self.ranges.iter().any(|r| r.covers(&want))
    }

    /// Whether every key is reachable (the HTTP key API's condition).
    pub fn whole_keyspace(&self) -> bool {
        self.admin || (!self.read_only && self.allows(&[0], &[0]))
    }
}

/// Who sent a request, as the gateway could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No client certificate and no token.
    Nobody,
    /// An identity the config does not list.
    Unknown(String),
    Known {
        name: String,
        perms: Arc<Permissions>,
    },
}

/// The loaded `--auth-config`.
#[derive(Debug, Default)]
pub struct Authz {
    by_cn: HashMap<String, Arc<Permissions>>,
    by_token: HashMap<String, Arc<Permissions>>,
}

impl Authz {
    /// Loads and checks the file.
    ///
    /// # Errors
    /// Unreadable, unparsable, or an entry without identity.
    pub fn load(path: &Path) -> Result<Self, AuthzError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthzError::Read {
            path: p.clone(),
            source,
        })?;
        let file: File = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| AuthzError::Parse {
                path: p.clone(),
                msg: e.to_string(),
            })?
        } else {
            serde_yaml::from_str(&text).map_err(|e| AuthzError::Parse {
                path: p.clone(),
                msg: e.to_string(),
            })?
        };
        let mut a = Self::default();
        for (index, c) in file.clients.into_iter().enumerate() {
            let perms = Arc::new(Permissions {
                ranges: c
                    .prefixes
                    .iter()
                    .map(|p| KeyRange::prefix(Bytes::copy_from_slice(p.as_bytes())))
                    .collect(),
                read_only: c.read_only,
                admin: c.admin,
            });
            if c.cn.is_none() && c.token.is_none() {
                return Err(AuthzError::NoIdentity {
                    path: p.clone(),
                    index,
                });
            }
            if let Some(cn) = c.cn {
                a.by_cn.insert(cn, perms.clone());
            }
            if let Some(t) = c.token {
                a.by_token.insert(t, perms);
            }
        }
        Ok(a)
    }

    /// The principal of a request: its bearer token if it sent one, else
    /// its verified client certificate's CN.
    pub fn principal(&self, headers: &http::HeaderMap, ext: &http::Extensions) -> Principal {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| headers.get("token").and_then(|v| v.to_str().ok()));
        if let Some(t) = token {
            return match self.by_token.get(t.trim()) {
                Some(p) => Principal::Known {
                    name: "token".into(),
                    perms: p.clone(),
                },
                None => Principal::Unknown("token".into()),
            };
        }
        let cn = ext
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|c| c.first().and_then(|c| lookout_consensus::tls::common_name(c)));
        match cn {
            Some(cn) => match self.by_cn.get(&cn) {
                Some(p) => Principal::Known {
                    name: cn,
                    perms: p.clone(),
                },
                None => Principal::Unknown(cn),
            },
            None => Principal::Nobody,
        }
    }
}

/// Checks one key range for a KV call (etcd's order: identity first).
///
/// # Errors
/// etcd's statuses: user name empty, permission denied.
pub fn check(p: &Principal, key: &[u8], range_end: &[u8], write: bool) -> Result<(), Status> {
    match p {
        Principal::Nobody => Err(Status::invalid_argument(USER_EMPTY)),
        Principal::Unknown(_) => Err(Status::permission_denied(PERMISSION_DENIED)),
        Principal::Known { perms, .. } => {
            if (write && perms.read_only && !perms.admin) || !perms.allows(key, range_end) {
                Err(Status::permission_denied(PERMISSION_DENIED))
            } else {
                Ok(())
            }
        }
    }
}

fn is_admin(p: &Principal) -> Result<(), Status> {
    match p {
        Principal::Nobody => Err(Status::invalid_argument(USER_EMPTY)),
        Principal::Known { perms, .. } if perms.admin => Ok(()),
        _ => Err(Status::permission_denied(PERMISSION_DENIED)),
    }
}

fn check_ops(p: &Principal, ops: &[RequestOp]) -> Result<(), Status> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check(p, &r.key, &r.range_end, false)?,
            Some(request_op::Request::RequestPut(r)) => check(p, &r.key, &[], true)?,
            Some(request_op::Request::RequestDeleteRange(r)) => {
                check(p, &r.key, &r.range_end, true)?;
            }
            Some(request_op::Request::RequestTxn(t)) => check_txn(p, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Every compare is a read, every op of both branches is checked (etcd's
/// checkTxnReqsPermission), whichever branch would run.
fn check_txn(p: &Principal, t: &TxnRequest) -> Result<(), Status> {
    for c in &t.compare {
        check(p, &c.key, &c.range_end, false)?;
    }
    check_ops(p, &t.success)?;
    check_ops(p, &t.failure)
}

fn principal_of<T>(r: &tonic::Request<T>) -> Principal {
    r.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Nobody)
}

// === KV ===

/// The KV service with every call checked first.
#[derive(Debug, Clone)]
pub(crate) struct AuthzKv<K> {
    pub(crate) inner: K,
}

#[tonic::async_trait]
impl<K: Kv> Kv for AuthzKv<K> {
    async fn range(
        &self,
        r: tonic::Request<RangeRequest>,
    ) -> Result<tonic::Response<RangeResponse>, Status> {
        check(
            &principal_of(&r),
            &r.get_ref().key,
            &r.get_ref().range_end,
            false,
        )?;
        self.inner.range(r).await
    }

    async fn put(
        &self,
        r: tonic::Request<PutRequest>,
    ) -> Result<tonic::Response<PutResponse>, Status> {
        check(&principal_of(&r), &r.get_ref().key, &[], true)?;
        self.inner.put(r).await
    }

    async fn delete_range(
        &self,
        r: tonic::Request<DeleteRangeRequest>,
    ) -> Result<tonic::Response<DeleteRangeResponse>, Status> {
        check(
            &principal_of(&r),
            &r.get_ref().key,
            &r.get_ref().range_end,
            true,
        )?;
        self.inner.delete_range(r).await
    }

    async fn txn(
        &self,
        r: tonic::Request<TxnRequest>,
    ) -> Result<tonic::Response<TxnResponse>, Status> {
        check_txn(&principal_of(&r), r.get_ref())?;
        self.inner.txn(r).await
    }

    async fn compact(
        &self,
        r: tonic::Request<CompactionRequest>,
    ) -> Result<tonic::Response<CompactionResponse>, Status> {
        is_admin(&principal_of(&r))?;
        self.inner.compact(r).await
    }
}

// === Watch ===

/// Whether `principal` may watch the range `c` asks for (its key already
/// normalized: empty is `"\0"`).
pub(crate) fn watch_allowed(principal: &Principal, c: &WatchCreateRequest) -> bool {
    match principal {
        Principal::Known { perms, .. } => perms.allows(&c.key, &c.range_end),
        _ => false,
    }
}

// === the layer ===

/// gRPC paths only an admin may call (etcd's admin-only Maintenance
/// calls and membership changes).
const ADMIN_PATHS: &[&str] = &[
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberPromote",
];

/// Paths that reach keys without the per-call checks above: the HTTP
/// APIs, and Lock and Election (their keys are `name/...`, written through
/// the gateway's own KV service).
fn is_http_key_api(path: &str) -> bool {
    [
        "/v1/",
        "/v3/",
        "/v3beta/",
        "/v3alpha/",
        "/v3lockpb.",
        "/v3electionpb.",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

/// Puts the [`Principal`] into every request and refuses what can be
/// refused by path alone.
#[derive(Debug, Clone)]
pub(crate) struct AuthzLayer(pub(crate) Arc<Authz>);

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = AuthzService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthzService {
            inner,
            authz: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AuthzService<S> {
    inner: S,
    authz: Arc<Authz>,
}

impl<S> tower::Service<Request> for AuthzService<S>
where
    S: tower::Service<Request, Response = axum::response::Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let principal = self.authz.principal(req.headers(), req.extensions());
        let path = req.uri().path().to_string();
        let refused = if ADMIN_PATHS.contains(&path.as_str()) {
            is_admin(&principal).err()
        } else if is_http_key_api(&path) {
            match &principal {
                Principal::Known { perms, .. } if perms.whole_keyspace() => None,
                _ => Some(Status::permission_denied(PERMISSION_DENIED)),
            }
        } else {
            None
        };
        if let Some(status) = refused {
            tracing::info!(%path, ?principal, "request refused: {}", status.message());
            let grpc = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            let resp = if grpc {
                status.into_http::<axum::body::Body>()
            } else {
                let body = serde_json::json!({
                    "error": status.message(),
                    "code": status.code() as i32,
                    "message": status.message(),
                });
                let mut r = axum::response::Response::new(axum::body::Body::from(body.to_string()));
                *r.status_mut() = http::StatusCode::FORBIDDEN;
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            };
            return Box::pin(async move { Ok(resp) });
        }
        req.extensions_mut().insert(principal);
        // Call the instance poll_ready was called on; keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(prefixes: &[&str]) -> Permissions {
        Permissions {
            ranges: prefixes
                .iter()
                .map(|p| KeyRange::prefix(Bytes::copy_from_slice(p.as_bytes())))
                .collect(),
            read_only: false,
            admin: false,
        }
    }

    #[test]
    fn ranges_must_fit_inside_a_prefix() {
        let p = perms(&["/a/"]);
        assert!(p.allows(b"/a/x", b""));
        assert!(p.allows(b"/a/", b"/a0"));
        assert!(p.allows(b"/a/b", b"/a/c"));
        assert!(!p.allows(b"/a/", b"/b"));
        assert!(!p.allows(b"/a/", b"\0"));
        assert!(!p.allows(b"/b", b""));
        assert!(!p.whole_keyspace());
        assert!(perms(&[""]).whole_keyspace());
        assert!(perms(&[""]).allows(b"x", b"\0"));
    }

    #[test]
    fn identities_map_to_etcd_errors() {
        let nobody = check(&Principal::Nobody, b"k", b"", false).unwrap_err();
        assert_eq!(nobody.code(), tonic::Code::InvalidArgument);
        assert_eq!(nobody.message(), USER_EMPTY);
        let stranger = check(&Principal::Unknown("x".into()), b"k", b"", false).unwrap_err();
        assert_eq!(stranger.code(), tonic::Code::PermissionDenied);
        let ro = Principal::Known {
            name: "r".into(),
            perms: Arc::new(Permissions {
                read_only: true,
                ..perms(&["/a/"])
            }),
        };
        assert!(check(&ro, b"/a/1", b"", false).is_ok());
        assert_eq!(
            check(&ro, b"/a/1", b"", true).unwrap_err().message(),
            PERMISSION_DENIED
        );
    }

    #[test]
    fn config_file_parses_yaml_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let y = dir.path().join("a.yaml");
        std::fs::write(
            &y,
            "clients:\n  - cn: alice\n    prefixes: [\"/alice/\"]\n  - token: t1\n    admin: true\n",
        )
        .unwrap();
        let a = Authz::load(&y).unwrap();
        assert!(a.by_cn["alice"].allows(b"/alice/x", b""));
        assert!(a.by_token["t1"].admin);
        let t = dir.path().join("a.toml");
        std::fs::write(&t, "[[clients]]\ncn = \"bob\"\nprefixes = [\"/b/\"]\n").unwrap();
        assert!(Authz::load(&t).unwrap().by_cn["bob"].allows(b"/b/1", b""));
        std::fs::write(&t, "[[clients]]\nprefixes = [\"/b/\"]\n").unwrap();
        assert!(matches!(
            Authz::load(&t),
            Err(AuthzError::NoIdentity { .. })
        ));
    }
}
