//! Who a client is and what it may do, on a gateway: etcd's auth, checked
//! with the store's own engine (`lookout_consensus::auth`) against a local
//! copy of the store's users and roles, so reads and watches served from
//! the cache cost no store round trip; and `--auth-config`, roles the
//! gateway declares itself and binds to certificate names or tokens, on
//! the same engine.
//!
//! ```text
//!  request ─ Creds (token | authorization metadata, TLS client CN) ─> who():
//!     token in --auth-config ──────────────> Local (the file's state)
//!     token ─ tokens.rs (JWT here, Resolve, learned) ─> Token (the store's user)
//!     CN in --auth-config ─────────────────> Local
//!     CN, --client-cert-auth ──────────────> Cert (the store's user)
//!     nothing ─────────────────────────────> Nobody
//!  reads, read-only txns, watch creates from the cache: checked here, whoever it is
//!  forwarded calls: Token -> sent with the client's token (the store judges it)
//!                   Cert, Local -> checked here, then sent as the gateway
//!                   Nobody -> checked here as nameless, sent nameless
//!  the copy: mirror.rs (refreshed every --auth-refresh-interval, and before an
//!            auth change made through this gateway is answered)
//! ```
//!
//! It must never forward a client's call with the gateway's own
//! credentials unless the same check the store would make passed here
//! first, never let the gateway's client certificate name a client (a
//! nameless call is marked so), never compare a token in variable time
//! (tokens are looked up by digest), and never serve a checked read before
//! it has a copy of the store's auth state.

mod config;
mod mirror;
mod service;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use lookout_cache::{CallAs, EtcdUpstream};
use lookout_consensus::Error;
use lookout_consensus::auth::{AuthInfo, AuthState, check_watch, watch_refusal};
use lookout_consensus::to_status;
use lookout_proto::pb::WatchCreateRequest;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;

pub use config::AuthzError;
pub(crate) use mirror::jwt_revision;
pub(crate) use service::AuthService;

use config::LocalAuth;
use mirror::{Mirror, OnChange};
use tokens::{TokenError, Tokens};

/// What a request says about its sender, before it is resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Creds {
    /// `token` metadata, else `authorization` (a leading `Bearer ` is
    /// dropped).
    pub(crate) token: Option<String>,
    /// The verified TLS client certificate's common name.
    pub(crate) cert_cn: Option<String>,
}

type TlsInfo = tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>;

impl Creds {
    /// From a request's headers (gRPC metadata are headers) and extensions.
    pub(crate) fn of(headers: &http::HeaderMap, ext: &http::Extensions) -> Self {
        let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        let token = get("token").or_else(|| get("authorization")).map(|t| {
            let t = t.trim();
            t.strip_prefix("Bearer ")
                .or_else(|| t.strip_prefix("bearer "))
                .unwrap_or(t)
                .trim()
                .to_string()
        });
        let cert_cn = ext
            .get::<TlsInfo>()
            .and_then(|i| i.peer_certs())
            .and_then(|c| {
                c.first()
                    .and_then(|c| lookout_consensus::tls::common_name(c))
            });
        Self { token, cert_cn }
    }

    /// From a tonic request.
    pub(crate) fn of_request<T>(r: &tonic::Request<T>) -> Self {
        Self::of(r.metadata().as_ref(), r.extensions())
    }
}

/// Who sent a request, as the gateway resolved it.
#[derive(Debug, Clone)]
pub(crate) enum Who {
    /// The request names nobody.
    Nobody,
    /// A store user, by a token the store issued: calls forwarded for it
    /// carry the token, so the store judges them itself.
    Token {
        info: AuthInfo,
        token: AsciiMetadataValue,
    },
    /// A store user, by its certificate's common name (the gateway's
    /// `--client-cert-auth`, as etcd's).
    Cert(AuthInfo),
    /// An identity of `--auth-config`, unknown to the store.
    Local(AuthInfo),
}

impl Who {
    pub(crate) fn info(&self) -> Option<&AuthInfo> {
        match self {
            Who::Nobody => None,
            Who::Token { info, .. } | Who::Cert(info) | Who::Local(info) => Some(info),
        }
    }

    /// Whether the calls forwarded for it carry its own token.
    pub(crate) fn store_judges(&self) -> bool {
        matches!(self, Who::Token { .. })
    }
}

/// How the gateway learns and checks identities.
#[derive(Debug, Clone)]
pub(crate) struct AuthSettings {
    /// `--auth-config`.
    pub(crate) config: Option<std::path::PathBuf>,
    /// `--auth-token`: with a JWT key, JWTs are verified on the gateway.
    pub(crate) jwt: Option<lookout_consensus::auth::JwtConfig>,
    /// `--auth-token-ttl`: a simple token's TTL at the store, until the
    /// store says otherwise.
    pub(crate) token_ttl: Duration,
    /// `--auth-refresh-interval`.
    pub(crate) refresh_interval: Duration,
    /// `--client-cert-auth`: a certificate's CN names a store user when no
    /// token is sent.
    pub(crate) cert_users: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            config: None,
            jwt: None,
            token_ttl: lookout_consensus::auth::DEFAULT_TTL,
            refresh_interval: Duration::from_millis(500),
            cert_users: false,
        }
    }
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct GatewayAuth {
    mirror: Arc<Mirror>,
    local: Option<LocalAuth>,
    tokens: Arc<Tokens>,
    cert_users: bool,
    /// Longest a request waits for the first copy of the store's state.
    wait: Duration,
}

impl GatewayAuth {
    /// # Errors
    /// `--auth-config` could not be loaded.
    pub(crate) fn new(
        s: &AuthSettings,
        upstream: Arc<EtcdUpstream>,
        wait: Duration,
    ) -> Result<Self, AuthzError> {
        let local = s.config.as_deref().map(LocalAuth::load).transpose()?;
        let tokens = Arc::new(Tokens::new(upstream.clone(), s.jwt.clone(), s.token_ttl));
        let t = tokens.clone();
        let mirror = Arc::new(Mirror::new(
            upstream,
            s.refresh_interval,
            OnChange(Box::new(move || t.auth_changed())),
        ));
        Ok(Self {
            mirror,
            local,
            tokens,
            cert_users: s.cert_users,
            wait,
        })
    }

    pub(crate) fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    pub(crate) fn tokens(&self) -> &Arc<Tokens> {
        &self.tokens
    }

    /// Who sent `c`.
    ///
    /// # Errors
    /// etcd's Unauthenticated "invalid auth token" for a token neither
    /// `--auth-config` nor the store takes; Unavailable when the store's
    /// auth state or a token could not be read.
    pub(crate) async fn who(&self, c: &Creds) -> Result<Who, Status> {
        self.mirror.wait_loaded(self.wait).await?;
        if let Some(t) = &c.token {
            if let Some(info) = self.local.as_ref().and_then(|l| l.token_user(t)) {
                return Ok(Who::Local(info));
            }
            // Checked even while the store's auth is off: etcd refuses a
            // token it does not know then too.
            let token = AsciiMetadataValue::try_from(t.as_str())
                .map_err(|_| to_status(Error::InvalidAuthToken))?;
            return match self.tokens.resolve(t).await {
                Ok(r) => Ok(Who::Token {
                    info: AuthInfo {
                        user: r.user,
                        revision: r.revision.unwrap_or_else(|| self.mirror.state().revision),
                    },
                    token,
                }),
                Err(TokenError::Invalid) => Err(to_status(Error::InvalidAuthToken)),
                Err(TokenError::Unavailable(s)) => Err(s),
            };
        }
        if let Some(cn) = &c.cert_cn {
            if let Some(l) = &self.local {
                let (bound, info) = l.cn_user(cn);
                // A name the file does not bind is the store's only while
                // the store has auth on; otherwise it is nobody's here.
                if bound || !self.cert_users || !self.mirror.state().enabled {
                    return Ok(Who::Local(info));
                }
            }
            if self.cert_users {
                return Ok(Who::Cert(AuthInfo {
                    user: cn.clone(),
                    revision: self.mirror.state().revision,
                }));
            }
        }
        Ok(Who::Nobody)
    }

    /// The auth state `who` is judged by.
    pub(crate) fn state(&self, who: &Who) -> Arc<AuthState> {
        match (who, &self.local) {
            (Who::Local(_) | Who::Nobody, Some(l)) => l.state.clone(),
            _ => self.mirror.state(),
        }
    }

    /// A check made here, whoever the caller is (reads served from the
    /// cache).
    ///
    /// # Errors
    /// The engine's answer as etcd's status.
    pub(crate) fn check(
        &self,
        who: &Who,
        f: impl FnOnce(&AuthState, Option<&AuthInfo>) -> lookout_consensus::Result<()>,
    ) -> Result<(), Status> {
        f(&self.state(who), who.info()).map_err(to_status)
    }

    /// How a call the store checks by identity travels: with the client's
    /// token when it has one (the store judges it, nothing is checked
    /// here), else only once `f` passed here.
    ///
    /// # Errors
    /// `f`'s refusal as etcd's status.
    pub(crate) fn forward(
        &self,
        who: &Who,
        f: impl FnOnce(&AuthState, Option<&AuthInfo>) -> lookout_consensus::Result<()>,
    ) -> Result<CallAs, Status> {
        self.forward_mapped(who, f, to_status)
    }

    /// [`GatewayAuth::forward`] with the refusal mapped by `map`
    /// (Maintenance's unmapped "auth: ..." answers).
    ///
    /// # Errors
    /// `f`'s refusal through `map`.
    pub(crate) fn forward_mapped(
        &self,
        who: &Who,
        f: impl FnOnce(&AuthState, Option<&AuthInfo>) -> lookout_consensus::Result<()>,
        map: impl FnOnce(Error) -> Status,
    ) -> Result<CallAs, Status> {
        match who {
            Who::Token { token, .. } => Ok(CallAs::Client(Some(token.clone()))),
            Who::Nobody => {
                f(&self.state(who), None).map_err(map)?;
                Ok(CallAs::Client(None))
            }
            Who::Cert(_) | Who::Local(_) => {
                f(&self.state(who), who.info()).map_err(map)?;
                Ok(CallAs::Gateway)
            }
        }
    }

    /// How a call nobody's identity matters to travels (etcd checks none
    /// for it): with the client's token, else nameless.
    pub(crate) fn pass(&self, who: &Who) -> CallAs {
        match who {
            Who::Token { token, .. } => CallAs::Client(Some(token.clone())),
            _ => CallAs::Client(None),
        }
    }

    /// With `--auth-config`, a request that names nobody is refused on
    /// every call (etcd leaves Alarm, Status, MemberList and compaction
    /// open to it; a gateway that declares its own clients does not).
    ///
    /// # Errors
    /// etcd's "user name is empty".
    pub(crate) fn named(&self, who: &Who) -> Result<(), Status> {
        if self.local.is_some() && matches!(who, Who::Nobody) {
            return Err(to_status(Error::UserEmpty));
        }
        Ok(())
    }

    /// Whether `--auth-config` is in use.
    pub(crate) fn has_local(&self) -> bool {
        self.local.is_some()
    }

    /// etcd's watch-create check: the sender resolved again (a token may
    /// have expired since the stream opened), then read permission on the
    /// range. `Err`: the cancel reason, as etcd 3.5 words it.
    pub(crate) async fn watch_allowed(
        &self,
        c: &Creds,
        w: &WatchCreateRequest,
    ) -> Result<(), String> {
        let who = match self.who(c).await {
            Ok(w) => w,
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                return Err(watch_refusal(&Error::InvalidAuthToken));
            }
            Err(s) => {
                return Err(format!(
                    "rpc error: code = {:?} desc = {}",
                    s.code(),
                    s.message()
                ));
            }
        };
        check_watch(&self.state(&who), who.info(), &w.key, &w.range_end)
            .map_err(|e| watch_refusal(&e))
    }
}
