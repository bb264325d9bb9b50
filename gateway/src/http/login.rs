//! Who a `/v1` request is: `Authorization: Bearer <token>` (a token from
//! `Authenticate`, or an `--auth-config` token), `Authorization: Basic
//! <user:password>` (logged in with `Authenticate` on the client's behalf),
//! or a bare `Authorization: <token>` as etcd's `/v3` takes it. The TLS
//! client certificate counts as on gRPC.
//!
//! ```text
//!   Basic user:password ─ digest ─> cached token? ─ no ─> Authenticate ─> cache
//!        └─ a call refused "invalid auth token" with a cached one: forget it,
//!           log in again, call once more (a simple token dies after its TTL
//!           unused, and with a password change)
//! ```
//!
//! A login costs a bcrypt hash at the store (tens of milliseconds of a
//! core), so one is kept per user and password, by digest, for as long as
//! the store takes its token; the password itself is never kept.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::{Extensions, HeaderMap, header};
use base64::Engine;
use lookout_proto::pb::{AuthenticateRequest, auth_server::Auth};
use sha2::{Digest, Sha256};
use tonic::metadata::AsciiMetadataValue;

use super::error::HttpError;
use super::{EtcdApi, HttpState};
use crate::api::{ApiResult, CallMeta};

/// Longest a login is reused without a call proving it still works.
const KEEP_LOGIN: Duration = Duration::from_secs(600);
/// Logins kept at most (then all are forgotten: they are logged in again).
const MAX_LOGINS: usize = 10_000;

/// Tokens of `Basic` logins, by digest of user and password.
#[derive(Debug, Default)]
pub(crate) struct Logins {
    // A parking_lot mutex: map operations only, never across an await.
    by_digest: parking_lot::Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

/// The credentials of a `/v1` request.
enum Given {
    None,
    Token(String),
    Basic { user: String, password: String },
}

fn given(headers: &HeaderMap) -> Result<Given, HttpError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(Given::None);
    };
    let v = v
        .to_str()
        .map_err(|_| HttpError::BadRequest("Authorization must be ASCII".into()))?
        .trim();
    if let Some(t) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        return Ok(Given::Token(t.trim().to_string()));
    }
    if let Some(b) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| {
                HttpError::BadRequest("Authorization: Basic wants base64 of user:password".into())
            })?;
        let (user, password) = raw.split_once(':').ok_or_else(|| {
            HttpError::BadRequest("Authorization: Basic wants base64 of user:password".into())
        })?;
        return Ok(Given::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    Ok(Given::Token(v.to_string()))
}

fn digest(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

fn meta_with(ext: &Extensions, token: Option<&str>) -> Result<CallMeta, HttpError> {
    let mut m = CallMeta {
        metadata: Default::default(),
        extensions: ext.clone(),
    };
    if let Some(t) = token {
        let v = AsciiMetadataValue::try_from(t)
            .map_err(|_| HttpError::BadRequest("the token must be ASCII".into()))?;
        m.metadata.insert("token", v);
    }
    Ok(m)
}

impl Logins {
    /// The token of `user:password`: the one kept, or a new login.
    async fn token<A: EtcdApi>(
        &self,
        api: &A,
        user: &str,
        password: &str,
        fresh: bool,
    ) -> Result<String, HttpError> {
        let d = digest(user, password);
        if !fresh
            && let Some((t, at)) = self.by_digest.lock().get(&d)
            && at.elapsed() < KEEP_LOGIN
        {
            return Ok(t.clone());
        }
        let r = Auth::authenticate(
            api.auth(),
            tonic::Request::new(AuthenticateRequest {
                name: user.to_string(),
                password: password.to_string(),
            }),
        )
        .await?
        .into_inner();
        let mut m = self.by_digest.lock();
        if m.len() >= MAX_LOGINS {
            m.clear();
        }
        m.insert(d, (r.token.clone(), Instant::now()));
        Ok(r.token)
    }

    fn forget(&self, user: &str, password: &str) {
        self.by_digest.lock().remove(&digest(user, password));
    }
}

/// Runs `call` as the sender of a `/v1` request; with a `Basic` login
/// whose kept token the store no longer takes, logs in again and runs it
/// once more.
///
/// # Errors
/// A malformed `Authorization`, a refused login, or `call`'s status.
pub(crate) async fn as_sender<A, T, F, Fut>(
    s: &HttpState<A>,
    headers: &HeaderMap,
    ext: &Extensions,
    call: F,
) -> Result<T, HttpError>
where
    A: EtcdApi,
    F: Fn(CallMeta) -> Fut,
    Fut: Future<Output = ApiResult<T>>,
{
    match given(headers)? {
        Given::None => Ok(call(meta_with(ext, None)?).await?),
        Given::Token(t) => Ok(call(meta_with(ext, Some(&t))?).await?),
        Given::Basic { user, password } => {
            let t = s.logins.token(&s.api, &user, &password, false).await?;
            match call(meta_with(ext, Some(&t))?).await {
                Err(st) if st.code() == tonic::Code::Unauthenticated => {
                    s.logins.forget(&user, &password);
                    let t = s.logins.token(&s.api, &user, &password, true).await?;
                    Ok(call(meta_with(ext, Some(&t))?).await?)
                }
                r => Ok(r?),
            }
        }
    }
}

/// The sender of a `/v1` watch (a `Basic` login is made or reused; a
/// stale one shows as a refused create, which the client retries).
///
/// # Errors
/// A malformed `Authorization` or a refused login.
pub(crate) async fn watch_sender<A: EtcdApi>(
    s: &HttpState<A>,
    headers: &HeaderMap,
    ext: &Extensions,
    fresh: bool,
) -> Result<CallMeta, HttpError> {
    match given(headers)? {
        Given::None => meta_with(ext, None),
        Given::Token(t) => meta_with(ext, Some(&t)),
        Given::Basic { user, password } => {
            let t = s.logins.token(&s.api, &user, &password, fresh).await?;
            meta_with(ext, Some(&t))
        }
    }
}

/// Whether a `/v1` request logs in with `Basic`.
pub(crate) fn is_basic(headers: &HeaderMap) -> bool {
    matches!(given(headers), Ok(Given::Basic { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_forms() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert!(matches!(given(&h("Bearer abc")), Ok(Given::Token(t)) if t == "abc"));
        assert!(matches!(given(&h("abc.12")), Ok(Given::Token(t)) if t == "abc.12"));
        let b = base64::engine::general_purpose::STANDARD.encode("alice:pw:with:colons");
        assert!(matches!(
            given(&h(&format!("Basic {b}"))),
            Ok(Given::Basic { user, password }) if user == "alice" && password == "pw:with:colons"
        ));
        assert!(given(&h("Basic !!")).is_err());
        assert!(matches!(given(&HeaderMap::new()), Ok(Given::None)));
        assert_ne!(digest("a", "bc"), digest("ab", "c"));
    }
}
