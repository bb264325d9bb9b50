//! Client tokens on a gateway: who a token names, without a store round
//! trip per request.
//!
//! ```text
//!  token ─ digest ─> cache hit, still valid ─> user (a touch in the background now and then)
//!            │ JWT and the gateway has the key: verified here (once per token, then cached)
//!            └ miss / due ─> lookout store: Tokens.Resolve (as the gateway) ─> user, TTL
//!                            etcd: a token this gateway saw issued (Authenticate
//!                            forwarded here), or a JWT: one call carrying the token
//!                            says whether etcd still takes it
//! ```
//!
//! A simple token lives at the store for its TTL after its last use there,
//! and dies with a password change, its user's deletion or `auth
//! disable`. The gateway keeps an answer for the token's TTL after the
//! store last saw it, touches it (asks again, which counts as a use)
//! at most every quarter TTL while clients use it, and asks again before
//! the next use after any change to the auth state: so a token the store
//! dropped is refused here within about a second, and a token in use
//! through gateways only stays alive at the store. JWTs carry their own
//! user, revision and expiry.
//!
//! Tokens are looked up by their SHA-256 digest, never by comparing token
//! text; a refused token is remembered for a second so a client retrying
//! a dead one does not turn into a request per retry at the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use lookout_cache::{CallAs, EtcdUpstream};
use lookout_consensus::auth::JwtConfig;
use lookout_proto::gateway::{ResolveRequest, tokens_client::TokensClient};
use lookout_proto::pb::{RangeRequest, kv_client::KvClient};
use tonic::metadata::AsciiMetadataValue;
use tonic::{Code, Status};

use super::config::digest;

/// How long a refused token is refused without asking again.
const REFUSED_FOR: Duration = Duration::from_secs(1);
/// Entries kept at most; past this the expired ones go, and if that is
/// not enough, all of them (they are asked for again).
const MAX_ENTRIES: usize = 200_000;

/// What a token resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub user: String,
    /// A JWT's revision claim; `None` for a simple token, which holds at
    /// the current auth revision.
    pub revision: Option<u64>,
}

/// Why a token was not resolved.
#[derive(Debug)]
pub(crate) enum TokenError {
    /// The store does not take it (etcd's "invalid auth token").
    Invalid,
    /// The store could not be asked.
    Unavailable(Status),
}

#[derive(Debug, Clone)]
struct Entry {
    resolved: Resolved,
    /// Until when this gateway takes the token without asking again.
    valid_until: Instant,
    /// When the store last saw the token used (a simple token's TTL
    /// slides from then).
    touched: Instant,
    /// A simple token's lifetime after a use; `None` for a JWT.
    ttl: Option<Duration>,
}

/// Whether the upstream has lookout's `Tokens.Resolve`.
const RESOLVER_UNKNOWN: u8 = 0;
const RESOLVER_YES: u8 = 1;
const RESOLVER_NO: u8 = 2;

/// The gateway's token cache (see the module doc).
#[derive(Debug)]
pub(crate) struct Tokens {
    upstream: Arc<EtcdUpstream>,
    /// `--auth-token jwt,pub-key=...`: JWTs verified here.
    jwt: Option<JwtConfig>,
    /// A simple token's TTL at the store as far as this gateway knows:
    /// `--auth-token-ttl`, then whatever `Resolve` says.
    ttl: parking_lot::Mutex<Duration>,
    // parking_lot locks: map operations only, never held across an await.
    entries: parking_lot::RwLock<HashMap<[u8; 32], Entry>>,
    refused: parking_lot::Mutex<HashMap<[u8; 32], Instant>>,
    /// Background touches in flight (one per token).
    touching: parking_lot::Mutex<HashSet<[u8; 32]>>,
    resolver: AtomicU8,
    /// Questions sent to the store (for /metrics).
    pub(crate) asked: std::sync::atomic::AtomicU64,
}

fn is_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// A JWT's claims read without checking its signature (for a token the
/// store itself just handed out, or one the store then vouches for).
fn unverified_claims(token: &str) -> Option<(Resolved, Option<std::time::SystemTime>)> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    let user = claims.get("username")?.as_str()?.to_string();
    let rev = claims.get("revision")?;
    let revision = rev.as_u64().or_else(|| rev.as_f64().map(|f| f as u64))?;
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_f64)
        .filter(|e| e.is_finite() && *e >= 0.0)
        .map(|e| std::time::UNIX_EPOCH + Duration::from_secs_f64(e.min(1e12)));
    Some((
        Resolved {
            user,
            revision: Some(revision),
        },
        exp,
    ))
}

/// `Instant` of a wall-clock time (now when it is past, far ahead when
/// there is none).
fn instant_of(t: Option<std::time::SystemTime>) -> Instant {
    let now = Instant::now();
    match t {
        Some(t) => {
            now + t
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        }
        None => now + Duration::from_secs(365 * 24 * 3600),
    }
}

/// How often a token in use is touched at the store: a quarter of its
/// TTL, between 200 ms and a minute.
fn touch_every(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(60))
}

impl Tokens {
    pub(crate) fn new(upstream: Arc<EtcdUpstream>, jwt: Option<JwtConfig>, ttl: Duration) -> Self {
        Self {
            upstream,
            jwt,
            ttl: parking_lot::Mutex::new(ttl),
            entries: Default::default(),
            refused: Default::default(),
            touching: Default::default(),
            resolver: AtomicU8::new(RESOLVER_UNKNOWN),
            asked: Default::default(),
        }
    }

    /// Who `token` names.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for a token the store does not take (or
    /// this gateway cannot tie to a user), Unavailable when the store
    /// cannot be asked.
    pub(crate) async fn resolve(self: &Arc<Self>, token: &str) -> Result<Resolved, TokenError> {
        let d = digest(token);
        let now = Instant::now();
        let hit = self.entries.read().get(&d).cloned();
        if let Some(e) = &hit
            && now < e.valid_until
        {
            if let Some(ttl) = e.ttl
                && now.duration_since(e.touched) >= touch_every(ttl)
            {
                self.touch_later(d, token);
            }
            return Ok(e.resolved.clone());
        }
        if let Some(j) = &self.jwt {
            // Verified here: the signature, the expiry, both claims.
            let Some(c) = j.claims(token) else {
                return Err(TokenError::Invalid);
            };
            let r = Resolved {
                user: c.user,
                revision: Some(c.revision),
            };
            self.insert(
                d,
                Entry {
                    resolved: r.clone(),
                    valid_until: instant_of(c.expires),
                    touched: now,
                    ttl: None,
                },
            );
            return Ok(r);
        }
        if self
            .refused
            .lock()
            .get(&d)
            .is_some_and(|until| now < *until)
        {
            return Err(TokenError::Invalid);
        }
        match self.ask(token, hit.as_ref()).await {
            Ok(e) => {
                let r = e.resolved.clone();
                self.insert(d, e);
                Ok(r)
            }
            Err(TokenError::Invalid) => {
                self.entries.write().remove(&d);
                self.refused.lock().insert(d, now + REFUSED_FOR);
                Err(TokenError::Invalid)
            }
            Err(e) => Err(e),
        }
    }

    /// Asks the store about `token` (`known`: what this gateway knew of it
    /// before it fell due).
    async fn ask(&self, token: &str, known: Option<&Entry>) -> Result<Entry, TokenError> {
        self.asked.fetch_add(1, Relaxed);
        if self.resolver.load(Relaxed) != RESOLVER_NO {
            let req = ResolveRequest {
                token: token.to_string(),
            };
            let r = self
                .upstream
                .call_as(&CallAs::Gateway, |ch| {
                    let req = req.clone();
                    async move { TokensClient::new(ch).resolve(req).await }
                })
                .await;
            match r {
                Ok(r) => {
                    self.resolver.store(RESOLVER_YES, Relaxed);
                    let now = Instant::now();
                    let ttl = (r.ttl_ms > 0).then(|| Duration::from_millis(r.ttl_ms as u64));
                    let jwt = is_jwt(token);
                    if let (false, Some(t)) = (jwt, ttl) {
                        *self.ttl.lock() = t;
                    }
                    return Ok(Entry {
                        resolved: Resolved {
                            user: r.user,
                            revision: jwt.then_some(r.revision),
                        },
                        valid_until: ttl.map_or_else(|| instant_of(None), |t| now + t),
                        touched: now,
                        // A JWT's expiry is fixed: nothing to touch.
                        ttl: ttl.filter(|_| !jwt),
                    });
                }
                Err(s) if s.code() == Code::Unimplemented => {
                    self.resolver.store(RESOLVER_NO, Relaxed);
                }
                Err(s) if s.code() == Code::Unauthenticated => return Err(TokenError::Invalid),
                Err(s) => return Err(TokenError::Unavailable(s)),
            }
        }
        // etcd: it can say whether it takes a token, not whose it is.
        let (resolved, valid_until, ttl) = match known {
            Some(e) => {
                let ttl = e.ttl.unwrap_or_else(|| *self.ttl.lock());
                (e.resolved.clone(), None, Some(ttl))
            }
            None if is_jwt(token) => {
                let (r, exp) = unverified_claims(token).ok_or(TokenError::Invalid)?;
                (r, Some(instant_of(exp)), None)
            }
            // A simple token issued through another gateway (or by etcd
            // directly): this gateway cannot tell whose it is. The client
            // logs in again here, as clientv3 and etcdctl do by themselves.
            None => return Err(TokenError::Invalid),
        };
        self.etcd_takes(token).await?;
        let now = Instant::now();
        Ok(Entry {
            resolved,
            valid_until: valid_until.unwrap_or_else(|| now + ttl.unwrap_or_default()),
            touched: now,
            ttl,
        })
    }

    /// One serializable, count-only Range carrying `token`: etcd answers
    /// "invalid auth token" before it looks at permissions, so anything
    /// else means it takes the token (and the use slides its TTL).
    async fn etcd_takes(&self, token: &str) -> Result<(), TokenError> {
        let t = AsciiMetadataValue::try_from(token).map_err(|_| TokenError::Invalid)?;
        let probe = RangeRequest {
            key: Bytes::from_static(&[0]),
            count_only: true,
            serializable: true,
            limit: 1,
            ..Default::default()
        };
        let r = self
            .upstream
            .call_as(&CallAs::Client(Some(t)), |ch| {
                let probe = probe.clone();
                async move { KvClient::new(ch).range(probe).await }
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::Unauthenticated => Err(TokenError::Invalid),
            Err(s) if matches!(s.code(), Code::PermissionDenied | Code::InvalidArgument) => Ok(()),
            Err(s) => Err(TokenError::Unavailable(s)),
        }
    }

    /// Asks about `token` again in the background (a use the store sees,
    /// so its TTL slides), at most once at a time per token.
    fn touch_later(self: &Arc<Self>, d: [u8; 32], token: &str) {
        if !self.touching.lock().insert(d) {
            return;
        }
        let me = self.clone();
        let token = token.to_string();
        tokio::spawn(async move {
            let known = me.entries.read().get(&d).cloned();
            match me.ask(&token, known.as_ref()).await {
                Ok(e) => me.insert(d, e),
                Err(TokenError::Invalid) => {
                    me.entries.write().remove(&d);
                }
                Err(TokenError::Unavailable(_)) => {}
            }
            me.touching.lock().remove(&d);
        });
    }

    fn insert(&self, d: [u8; 32], e: Entry) {
        let mut m = self.entries.write();
        if m.len() >= MAX_ENTRIES {
            let now = Instant::now();
            m.retain(|_, e| e.valid_until > now);
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
            self.refused.lock().retain(|_, until| *until > now);
        }
        m.insert(d, e);
    }

    /// A token the store just issued to `user` through this gateway
    /// (Authenticate forwarded here): known without asking.
    pub(crate) fn learn(&self, token: &str, user: &str) {
        let now = Instant::now();
        let e = if is_jwt(token) {
            let Some((r, exp)) = unverified_claims(token) else {
                return;
            };
            Entry {
                resolved: r,
                valid_until: instant_of(exp),
                touched: now,
                ttl: None,
            }
        } else {
            let ttl = *self.ttl.lock();
            Entry {
                resolved: Resolved {
                    user: user.to_string(),
                    revision: None,
                },
                valid_until: now + ttl,
                touched: now,
                ttl: Some(ttl),
            }
        };
        let d = digest(token);
        self.refused.lock().remove(&d);
        self.insert(d, e);
    }

    /// The auth state changed: a simple token may have died with it (a
    /// password change, its user deleted, auth disabled), so each is asked
    /// about again before its next use. JWTs carry their revision and are
    /// judged by it.
    pub(crate) fn auth_changed(&self) {
        let now = Instant::now();
        for e in self.entries.write().values_mut() {
            if e.ttl.is_some() {
                e.valid_until = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_claims_and_shapes() {
        let claims = B64.encode(r#"{"exp":4102444800,"revision":7,"username":"alice"}"#);
        let t = format!("e30.{claims}.c2ln");
        assert!(is_jwt(&t));
        assert!(!is_jwt("abcdefghijklmnop.17"));
        let (r, exp) = unverified_claims(&t).unwrap();
        assert_eq!(
            r,
            Resolved {
                user: "alice".into(),
                revision: Some(7)
            }
        );
        assert!(exp.is_some());
        assert!(unverified_claims("a.b.c").is_none());
        assert_eq!(
            touch_every(Duration::from_secs(300)),
            Duration::from_secs(60)
        );
        assert_eq!(
            touch_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
    }

    #[tokio::test]
    async fn learned_tokens_answer_until_the_auth_state_moves() {
        let up = Arc::new(EtcdUpstream::new(lookout_cache::EtcdUpstreamConfig::new([
            "127.0.0.1:1",
        ])));
        let t = Arc::new(Tokens::new(up, None, Duration::from_secs(60)));
        t.learn("abcdefghijklmnop.5", "alice");
        let r = t.resolve("abcdefghijklmnop.5").await.unwrap();
        assert_eq!(r.user, "alice");
        assert_eq!(r.revision, None);
        // After a change the token must be asked about again: the store at
        // 127.0.0.1:1 cannot be reached.
        t.auth_changed();
        assert!(matches!(
            t.resolve("abcdefghijklmnop.5").await,
            Err(TokenError::Unavailable(_))
        ));
    }
}
