//! The gateway's copy of the store's auth state (enabled flag, revision,
//! users, roles, permissions), kept within about a second of the store's
//! so reads and watches served from the cache are checked without a store
//! round trip.
//!
//! ```text
//!  every --auth-refresh-interval (and at once after an auth change made
//!  through this gateway, before that call is answered):
//!    lookout store, etcd 3.5+: AuthStatus ─ revision moved? ─> RoleList + RoleGet each,
//!                                                              UserList + UserGet each
//!    etcd 3.4 (no AuthStatus): a nameless serializable Range says whether auth is on
//!                              (etcd refuses it "user name is empty" then); if on,
//!                              RoleList + RoleGet each, UserList + UserGet each;
//!                              a change -> log in again: a JWT names the new revision
//!  ─> AuthState (lookout_consensus::auth, perms merged) swapped in whole
//! ```
//!
//! Every call is the gateway's own (its `--user` must hold the root role
//! to read users and roles). Until the first copy is in, requests that
//! need it wait (bounded); if the store cannot be read (no credentials,
//! not root, unreachable) before any copy was made, they are answered
//! Unavailable with the reason; after that the last copy stays in use.
//!
//! Cost: AuthStatus is one read index on a lookout store. On etcd 3.4 each
//! refresh while auth is on is 2 + users + roles requests through etcd's
//! raft (its auth reads are raft requests), so a big user base wants a
//! longer interval (or etcd 3.5+).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::StreamExt;
use lookout_cache::{CallAs, EtcdUpstream};
use lookout_consensus::auth::AuthState;
use lookout_proto::authpb::{Role, User};
use lookout_proto::pb::{
    AuthRoleGetRequest, AuthRoleListRequest, AuthStatusRequest, AuthUserGetRequest,
    AuthUserListRequest, RangeRequest, auth_client::AuthClient, kv_client::KvClient,
};
use tokio::sync::{Notify, watch};
use tonic::{Code, Status};

/// Role and user reads in flight at once during a refresh.
const FETCH_CONCURRENCY: usize = 16;

const STATUS_UNKNOWN: u8 = 0;
const STATUS_YES: u8 = 1;
const STATUS_NO: u8 = 2;

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Mirror {
    upstream: Arc<EtcdUpstream>,
    interval: Duration,
    state: ArcSwap<AuthState>,
    /// Whether a copy was ever made.
    loaded: watch::Sender<bool>,
    /// Why the last refresh failed (`None`: it worked). A blocking mutex: held
    /// to copy the value only.
    failure: parking_lot::Mutex<Option<String>>,
    /// Refreshes asked for so far, and the count the last finished
    /// refresh had seen when it started: a caller that asked waits until
    /// a refresh that started after its change has finished.
    wanted: AtomicU64,
    done: watch::Sender<u64>,
    kick: Notify,
    /// Whether the upstream has AuthStatus (etcd 3.4 has not).
    status_api: AtomicU8,
    /// Called after the state changed (the token cache asks again).
    on_change: OnChange,
    /// Refreshes made, and those that failed (for /metrics).
    pub(crate) refreshes: AtomicU64,
    pub(crate) failures: AtomicU64,
}

/// What runs after the copy changed.
pub(crate) struct OnChange(pub(crate) Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnChange")
    }
}

impl Mirror {
    pub(crate) fn new(
        upstream: Arc<EtcdUpstream>,
        interval: Duration,
        on_change: OnChange,
    ) -> Self {
        Self {
            upstream,
            interval,
            state: ArcSwap::from_pointee(AuthState::default()),
            loaded: watch::channel(false).0,
            failure: parking_lot::Mutex::new(None),
            wanted: AtomicU64::new(0),
            done: watch::channel(0).0,
            kick: Notify::new(),
            status_api: AtomicU8::new(STATUS_UNKNOWN),
            on_change,
            refreshes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The current copy.
    pub(crate) fn state(&self) -> Arc<AuthState> {
        self.state.load_full()
    }

    pub(crate) fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits (at most `bound`) for the first copy.
    ///
    /// # Errors
    /// Unavailable with the reason the store could not be read.
    pub(crate) async fn wait_loaded(&self, bound: Duration) -> Result<(), Status> {
        if self.is_loaded() {
            return Ok(());
        }
        let failed = self.failure.lock().is_some();
        if failed {
            // The last try failed, maybe only because the store was not
            // reachable yet: try again now (requests that arrive meanwhile
            // share that refresh) rather than refuse until the next tick.
            self.refresh_now(bound).await;
            if self.is_loaded() {
                return Ok(());
            }
            let why = self.failure.lock().clone();
            return Err(unreadable(why.as_deref().unwrap_or("timed out")));
        }
        let mut rx = self.loaded.subscribe();
        match tokio::time::timeout(bound, rx.wait_for(|l| *l)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let why = self
                    .failure
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "timed out".into());
                Err(unreadable(&why))
            }
        }
    }

    /// Refreshes now and waits (at most `bound`) until a refresh that
    /// started after this call has finished: an auth change made through
    /// this gateway holds in its next request.
    pub(crate) async fn refresh_now(&self, bound: Duration) {
        let want = self.wanted.fetch_add(1, Relaxed) + 1;
        self.kick.notify_one();
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(|d| *d >= want)).await;
    }

    /// Asks for a refresh soon, without waiting (a client logged in with a
    /// JWT newer than the copy).
    pub(crate) fn kick(&self) {
        self.wanted.fetch_add(1, Relaxed);
        self.kick.notify_one();
    }

    /// Refreshes every interval (or when kicked) until `stop` resolves.
    pub(crate) async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            self.refresh().await;
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.kick.notified() => {}
            }
        }
    }

    async fn refresh(&self) {
        let started = self.wanted.load(Relaxed);
        self.refreshes.fetch_add(1, Relaxed);
        match self.fetch().await {
            Ok(Some(st)) => {
                let old = self.state.load();
                let changed = old.enabled != st.enabled
                    || old.revision != st.revision
                    || old.users != st.users
                    || old.roles != st.roles;
                if changed {
                    tracing::info!(
                        enabled = st.enabled,
                        revision = st.revision,
                        users = st.users.len(),
                        roles = st.roles.len(),
                        "auth state from the store"
                    );
                    self.state.store(Arc::new(st));
                    (self.on_change.0)();
                }
                self.loaded_ok();
            }
            Ok(None) => self.loaded_ok(),
            Err(why) => {
                self.failures.fetch_add(1, Relaxed);
                let mut f = self.failure.lock();
                if f.as_deref() != Some(why.as_str()) {
                    tracing::warn!(error = %why, "cannot read the store's users and roles");
                }
                *f = Some(why);
            }
        }
        self.done.send_modify(|d| *d = (*d).max(started));
    }

    fn loaded_ok(&self) {
        *self.failure.lock() = None;
        self.loaded
            .send_if_modified(|l| !std::mem::replace(l, true));
    }

    /// The store's auth state now (`None`: the copy is current).
    async fn fetch(&self) -> Result<Option<AuthState>, String> {
        let cur = self.state();
        if self.status_api.load(Relaxed) != STATUS_NO {
            let r = self
                .upstream
                .call_as(&CallAs::Gateway, |ch| async move {
                    AuthClient::new(ch).auth_status(AuthStatusRequest {}).await
                })
                .await;
            match r {
                Ok(s) => {
                    self.status_api.store(STATUS_YES, Relaxed);
                    if !s.enabled {
                        return Ok(Some(disabled(s.auth_revision)));
                    }
                    if self.is_loaded() && cur.enabled && cur.revision == s.auth_revision {
                        return Ok(None);
                    }
                    let mut st = self.fetch_all().await?;
                    st.enabled = true;
                    st.revision = s.auth_revision;
                    return Ok(Some(st));
                }
                Err(s) if s.code() == Code::Unimplemented => {
                    self.status_api.store(STATUS_NO, Relaxed);
                }
                Err(s) => return Err(s.message().to_string()),
            }
        }
        // etcd 3.4.
        if !self.enabled_34().await? {
            return Ok(Some(disabled(cur.revision)));
        }
        let mut st = self.fetch_all().await?;
        st.enabled = true;
        st.revision = cur.revision;
        if self.is_loaded() && cur.enabled && cur.users == st.users && cur.roles == st.roles {
            return Ok(None);
        }
        // Something changed: etcd bumped its auth revision, which only a
        // JWT tells (a simple token holds at the current one anyway).
        st.revision = match self.upstream.relogin().await {
            Ok(Some(t)) => jwt_revision(&t).unwrap_or(cur.revision + 1),
            _ => cur.revision + 1,
        };
        Ok(Some(st))
    }

    /// Whether etcd 3.4 has auth on: it refuses a nameless read then.
    async fn enabled_34(&self) -> Result<bool, String> {
        let probe = RangeRequest {
            key: Bytes::from_static(&[0]),
            count_only: true,
            serializable: true,
            limit: 1,
            ..Default::default()
        };
        let r = self
            .upstream
            .call_as(&CallAs::Client(None), |ch| {
                let probe = probe.clone();
                async move { KvClient::new(ch).range(probe).await }
            })
            .await;
        match r {
            Ok(_) => Ok(false),
            Err(s) if s.message() == "etcdserver: user name is empty" => Ok(true),
            Err(s) => Err(s.message().to_string()),
        }
    }

    /// Every role and user, with their permissions and roles.
    async fn fetch_all(&self) -> Result<AuthState, String> {
        let up = &self.upstream;
        let gw = &CallAs::Gateway;
        let roles = up
            .call_as(gw, |ch| async move {
                AuthClient::new(ch).role_list(AuthRoleListRequest {}).await
            })
            .await
            .map_err(|s| s.message().to_string())?
            .roles;
        let roles = get_each(
            roles,
            "etcdserver: role name not found",
            |name| async move {
                let r = up
                    .call_as(gw, |ch| {
                        let role = name.clone();
                        async move {
                            AuthClient::new(ch)
                                .role_get(AuthRoleGetRequest { role })
                                .await
                        }
                    })
                    .await?;
                Ok(Role {
                    name: Bytes::from(name.into_bytes()),
                    key_permission: r.perm,
                })
            },
        )
        .await?;
        let users = up
            .call_as(gw, |ch| async move {
                AuthClient::new(ch).user_list(AuthUserListRequest {}).await
            })
            .await
            .map_err(|s| s.message().to_string())?
            .users;
        let users = get_each(
            users,
            "etcdserver: user name not found",
            |name| async move {
                let r = up
                    .call_as(gw, |ch| {
                        let name = name.clone();
                        async move {
                            AuthClient::new(ch)
                                .user_get(AuthUserGetRequest { name })
                                .await
                        }
                    })
                    .await?;
                Ok(User {
                    name: Bytes::from(name.into_bytes()),
                    password: Bytes::new(),
                    roles: r.roles,
                    options: None,
                })
            },
        )
        .await?;
        let mut st = AuthState::default();
        for r in roles {
            let name = String::from_utf8_lossy(&r.name).into_owned();
            st.roles.insert(name, Arc::new(r));
        }
        for u in users {
            let name = String::from_utf8_lossy(&u.name).into_owned();
            st.users.insert(name, Arc::new(u));
        }
        st.rebuild_perms();
        Ok(st)
    }
}

/// Gets every listed name with `get`, `FETCH_CONCURRENCY` at a time, in
/// list order. A name deleted since the list (`not_found`, etcd's text
/// for it) is left out: the next refresh agrees with the store.
async fn get_each<T, F, Fut>(names: Vec<String>, not_found: &str, get: F) -> Result<Vec<T>, String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let got: Vec<Option<T>> = futures::stream::iter(names)
        .map(|name| {
            let fetched = get(name);
            async move {
                match fetched.await {
                    Ok(t) => Ok(Some(t)),
                    Err(s) if s.message() == not_found => Ok(None),
                    Err(s) => Err(s.message().to_string()),
                }
            }
        })
        .buffered(FETCH_CONCURRENCY)
        .collect::<Vec<Result<_, String>>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(got.into_iter().flatten().collect())
}

/// The revision claim of a JWT (read, not verified: it came from the
/// store over the gateway's own connection).
pub(crate) fn jwt_revision(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let v: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?,
    )
    .ok()?;
    v.get("revision")?.as_u64()
}

/// Auth off at `revision`: nothing to check, so no users or roles kept.
fn disabled(revision: u64) -> AuthState {
    let mut st = AuthState::default();
    st.revision = revision;
    st
}

fn unreadable(why: &str) -> Status {
    crate::error::auth_state_unreadable(why)
}
