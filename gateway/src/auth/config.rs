//! `--auth-config FILE`: roles declared on the gateway and bound to
//! client certificate CNs or bearer tokens, as one more auth state on the
//! store's engine (`lookout_consensus::auth`): the same key-range
//! permissions, the same root role, the same checks and errors. The
//! identities it names are the gateway's own; the store never hears of
//! them (calls forwarded for them travel with the gateway's credentials,
//! after the gateway checked them here).
//!
//! ```yaml
//! roles:
//!   - name: app
//!     permissions:
//!       - {type: readwrite, prefix: /app/}
//!       - {type: read, key: /config}                    # one key
//!       - {type: read, key: /logs/a, range_end: /logs/m} # [key, range_end)
//!       - {type: write, from_key: /inbox/}               # every key from /inbox/ on
//! clients:
//!   - cn: alice            # a client certificate's common name
//!     roles: [app]
//!   - token: s3cret        # or a bearer token (`authorization: Bearer s3cret`, `token: s3cret`)
//!     roles: [app]
//!   - cn: ops
//!     admin: true          # the root role: every key, every admin call
//!   # The first format's shorthand still works: prefixes (read and write,
//!   # or read only) become a role of their own.
//!   - cn: bob
//!     prefixes: ["/bob/"]
//!     read_only: true
//! ```
//!
//! YAML, or TOML when the name ends in `.toml`. Unknown keys, a client
//! with neither `cn` nor `token`, an unknown role, a role named `root`
//! (it is built in) and a permission on an empty key or an empty range are
//! refused at start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use lookout_consensus::auth::{AuthInfo, AuthState, ROOT, valid_permission_range};
use lookout_proto::authpb::{Permission, Role, User, permission::Type as PermType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    roles: Vec<RoleEntry>,
    #[serde(default)]
    clients: Vec<ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    name: String,
    #[serde(default)]
    permissions: Vec<PermEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PermEntry {
    /// `read`, `write` or `readwrite`.
    r#type: String,
    key: Option<String>,
    range_end: Option<String>,
    prefix: Option<String>,
    from_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    cn: Option<String>,
    token: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    admin: bool,
}

/// The loaded `--auth-config`: an auth state (always enabled) and who
/// each certificate name and token is in it.
#[derive(Debug)]
pub(crate) struct LocalAuth {
    pub(crate) state: Arc<AuthState>,
    by_cn: HashMap<String, String>,
    /// SHA-256 of each token -> its user: a lookup compares digests, never
    /// token text.
    by_token: HashMap<[u8; 32], String>,
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The user name of client entry `i` (names never come from the file, so
/// no entry can take another's).
fn client_user(i: usize) -> String {
    format!("client #{i}")
}

impl LocalAuth {
    /// Loads and checks the file.
    ///
    /// # Errors
    /// Unreadable, unparsable, or refused (see the module doc).
    pub(crate) fn load(path: &Path) -> Result<Self, AuthzError> {
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
        Self::build(file).map_err(|e| match e {
            Build::NoIdentity(index) => AuthzError::NoIdentity { path: p, index },
            Build::Invalid(msg) => AuthzError::Invalid { path: p, msg },
        })
    }

    fn build(file: File) -> Result<Self, Build> {
        let mut st = AuthState::default();
        st.enabled = true;
        st.roles.insert(
            ROOT.to_string(),
            Arc::new(Role {
                name: Bytes::from_static(ROOT.as_bytes()),
                key_permission: Vec::new(),
            }),
        );
        for r in file.roles {
            if r.name == ROOT {
                return Err(Build::Invalid(
                    "role \"root\" is built in (give a client admin: true or roles: [root])".into(),
                ));
            }
            if r.name.is_empty() || st.roles.contains_key(&r.name) {
                return Err(Build::Invalid(format!(
                    "role {:?} is empty or declared twice",
                    r.name
                )));
            }
            let perms = r
                .permissions
                .iter()
                .map(|e| {
                    permission(e).map_err(|m| Build::Invalid(format!("role {:?}: {m}", r.name)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            st.roles.insert(
                r.name.clone(),
                Arc::new(Role {
                    name: Bytes::from(r.name.into_bytes()),
                    key_permission: perms,
                }),
            );
        }
        let mut by_cn = HashMap::new();
        let mut by_token = HashMap::new();
        for (i, c) in file.clients.into_iter().enumerate() {
            if c.cn.is_none() && c.token.is_none() {
                return Err(Build::NoIdentity(i));
            }
            let user = client_user(i);
            let mut roles = Vec::new();
            for r in &c.roles {
                if !st.roles.contains_key(r) {
                    return Err(Build::Invalid(format!("client #{i}: unknown role {r:?}")));
                }
                roles.push(r.clone());
            }
            if c.admin {
                roles.push(ROOT.to_string());
            }
            if !c.prefixes.is_empty() {
                // The first format: the prefixes are a role of their own.
                let t = if c.read_only {
                    PermType::Read
                } else {
                    PermType::Readwrite
                };
                let perms = c.prefixes.iter().map(|p| prefix_permission(t, p)).collect();
                st.roles.insert(
                    user.clone(),
                    Arc::new(Role {
                        name: Bytes::from(user.clone().into_bytes()),
                        key_permission: perms,
                    }),
                );
                roles.push(user.clone());
            }
            st.users.insert(
                user.clone(),
                Arc::new(User {
                    name: Bytes::from(user.clone().into_bytes()),
                    password: Bytes::new(),
                    roles,
                    options: None,
                }),
            );
            if let Some(cn) = c.cn {
                by_cn.insert(cn, user.clone());
            }
            if let Some(t) = c.token {
                by_token.insert(digest(&t), user);
            }
        }
        st.rebuild_perms();
        Ok(Self {
            state: Arc::new(st),
            by_cn,
            by_token,
        })
    }

    /// The identity a token names here, if it is one of the file's.
    pub(crate) fn token_user(&self, token: &str) -> Option<AuthInfo> {
        self.by_token.get(&digest(token)).map(|u| self.info(u))
    }

    /// The identity a certificate's CN names: its binding, or a user
    /// unknown to this state (refused as etcd refuses an unknown user).
    pub(crate) fn cn_user(&self, cn: &str) -> (bool, AuthInfo) {
        match self.by_cn.get(cn) {
            Some(u) => (true, self.info(u)),
            None => (false, self.info(&format!("cn {cn}"))),
        }
    }

    fn info(&self, user: &str) -> AuthInfo {
        AuthInfo {
            user: user.to_string(),
            revision: self.state.revision,
        }
    }
}

enum Build {
    NoIdentity(usize),
    Invalid(String),
}

fn perm_type(s: &str) -> Result<PermType, String> {
    match s.to_ascii_lowercase().as_str() {
        "read" => Ok(PermType::Read),
        "write" => Ok(PermType::Write),
        "readwrite" => Ok(PermType::Readwrite),
        other => Err(format!(
            "permission type {other:?} (read, write or readwrite)"
        )),
    }
}

/// Every key under `prefix` (an empty prefix: every key).
fn prefix_permission(t: PermType, prefix: &str) -> Permission {
    let (key, range_end) = if prefix.is_empty() {
        (Bytes::from_static(b"\0"), Bytes::from_static(b"\0"))
    } else {
        let key = Bytes::copy_from_slice(prefix.as_bytes());
        let end = lookout_cache::prefix_end(&key).unwrap_or_else(|| Bytes::from_static(b"\0"));
        (key, end)
    };
    Permission {
        perm_type: t as i32,
        key,
        range_end,
    }
}

fn permission(e: &PermEntry) -> Result<Permission, String> {
    let t = perm_type(&e.r#type)?;
    let given = [e.key.is_some(), e.prefix.is_some(), e.from_key.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        return Err("a permission names exactly one of key, prefix, from_key".into());
    }
    if e.range_end.is_some() && e.key.is_none() {
        return Err("range_end goes with key".into());
    }
    let p = if let Some(prefix) = &e.prefix {
        prefix_permission(t, prefix)
    } else if let Some(k) = &e.from_key {
        Permission {
            perm_type: t as i32,
            key: Bytes::copy_from_slice(k.as_bytes()),
            range_end: Bytes::from_static(b"\0"),
        }
    } else {
        Permission {
            perm_type: t as i32,
            key: Bytes::copy_from_slice(e.key.as_deref().unwrap_or("").as_bytes()),
            range_end: Bytes::copy_from_slice(e.range_end.as_deref().unwrap_or("").as_bytes()),
        }
    };
    if !valid_permission_range(&p.key, &p.range_end) {
        // etcd's answer to such a grant.
        return Err(format!(
            "etcdserver: invalid auth management (a permission on an empty key or an empty range: {:?}..{:?})",
            String::from_utf8_lossy(&p.key),
            String::from_utf8_lossy(&p.range_end)
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookout_consensus::Error;
    use lookout_consensus::auth::{check_admin, check_range};

    fn load(name: &str, text: &str) -> Result<LocalAuth, AuthzError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        LocalAuth::load(&p)
    }

    fn can_read(a: &LocalAuth, who: &AuthInfo, key: &str, end: &str) -> Result<(), Error> {
        check_range(&a.state, Some(who), key.as_bytes(), end.as_bytes())
    }

    #[test]
    fn the_first_format_still_means_prefixes() {
        let a = load(
            "a.yaml",
            "clients:\n  - cn: alice\n    prefixes: [\"/alice/\"]\n  - token: t1\n    admin: true\n  - token: all\n    prefixes: [\"\"]\n",
        )
        .unwrap();
        let (bound, alice) = a.cn_user("alice");
        assert!(bound);
        assert!(can_read(&a, &alice, "/alice/x", "").is_ok());
        assert!(can_read(&a, &alice, "/alice/", "/alice0").is_ok());
        assert_eq!(
            can_read(&a, &alice, "/alice/", "/b"),
            Err(Error::PermissionDenied),
            "a range reaching out is refused whole"
        );
        let root = a.token_user("t1").unwrap();
        assert!(check_admin(&a.state, Some(&root)).is_ok());
        assert_eq!(
            check_admin(&a.state, Some(&alice)),
            Err(Error::PermissionDenied)
        );
        let all = a.token_user("all").unwrap();
        assert!(can_read(&a, &all, "\0", "\0").is_ok());
        assert!(a.token_user("t2").is_none());
        let (bound, carol) = a.cn_user("carol");
        assert!(!bound);
        assert_eq!(
            can_read(&a, &carol, "/alice/x", ""),
            Err(Error::PermissionDenied)
        );
        let t = load(
            "a.toml",
            "[[clients]]\ncn = \"bob\"\nprefixes = [\"/b/\"]\nread_only = true\n",
        )
        .unwrap();
        let (_, bob) = t.cn_user("bob");
        assert!(can_read(&t, &bob, "/b/1", "").is_ok());
        assert!(matches!(
            load("a.toml", "[[clients]]\nprefixes = [\"/b/\"]\n"),
            Err(AuthzError::NoIdentity { .. })
        ));
    }

    #[test]
    fn roles_bind_to_names_and_tokens() {
        let a = load(
            "r.yaml",
            "roles:\n  - name: app\n    permissions:\n      - {type: readwrite, prefix: /app/}\n      - {type: read, key: /one}\n      - {type: write, from_key: /inbox/}\n      - {type: read, key: /a, range_end: /c}\nclients:\n  - cn: alice\n    roles: [app]\n  - token: ops\n    roles: [root]\n",
        )
        .unwrap();
        let (_, alice) = a.cn_user("alice");
        assert!(can_read(&a, &alice, "/one", "").is_ok());
        assert!(can_read(&a, &alice, "/b", "").is_ok());
        assert_eq!(
            can_read(&a, &alice, "/inbox/x", ""),
            Err(Error::PermissionDenied)
        );
        assert!(check_admin(&a.state, a.token_user("ops").as_ref()).is_ok());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let bad = [
            ("clients:\n  - cn: a\n    roles: [nope]\n", "unknown role"),
            ("roles:\n  - name: root\n", "built in"),
            (
                "roles:\n  - name: r\n    permissions:\n      - {type: read, key: \"\"}\n",
                "invalid auth management",
            ),
            (
                "roles:\n  - name: r\n    permissions:\n      - {type: read, key: b, range_end: a}\n",
                "invalid auth management",
            ),
            (
                "roles:\n  - name: r\n    permissions:\n      - {type: read, key: a, prefix: b}\n",
                "exactly one",
            ),
            (
                "roles:\n  - name: r\n    permissions:\n      - {type: all, key: a}\n",
                "permission type",
            ),
            ("clients:\n  - cn: a\n    colour: red\n", "unknown field"),
        ];
        for (text, want) in bad {
            let e = load("bad.yaml", text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
