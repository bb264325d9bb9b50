//! Secondary indexes: a value extracted from each entry (a JSON pointer into
//! its value, or a regex capture over its key), and for each index a map
//! from value to the entries that have it, kept inside every [`Snapshot`].
//!
//! ```text
//!   --index node@/calico/=json:/spec/nodeName
//!   applier: event ─> old value (prev kv) / new value (kv) per index ─> CachedEvent
//!                 └─> IndexState: value ─> OrdMap key ─> kv   (persistent, O(log n))
//!   filtered Range @R: snapshot R ─> by_value[v].range(keys) ─> cost ∝ matches
//! ```
//!
//! The index maps are persistent (imbl) like the snapshot's data: the
//! applier derives the next from the previous one in O(log n) per event and
//! both are swapped in together, so a filtered list at revision R sees
//! exactly the entries that match at R.
//!
//! Scope: an index only indexes keys inside its scope (`NAME@PREFIX=...`,
//! or for a `key:` regex anchored with `^`, its literal prefix; else every
//! key). A filtered request must name a range inside the scope, so "not in
//! the index" always means "does not match", never "not looked at".

use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use lookout_proto::mvccpb::KeyValue;

use crate::keys::KeyRange;

/// Why an `--index` declaration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexSpecError {
    #[error("index {0:?}: want NAME=json:/pointer or NAME=key:REGEX (optionally NAME@PREFIX=...)")]
    Syntax(String),
    #[error("index name {0:?}: use letters, digits, '_', '-' and '.'")]
    BadName(String),
    #[error("index {name:?}: JSON pointer {pointer:?} must be empty or start with '/' (RFC 6901)")]
    BadPointer { name: String, pointer: String },
    #[error("index {name:?}: {message}")]
    BadRegex { name: String, message: String },
    #[error("index {0:?} is declared twice")]
    Duplicate(String),
}

#[derive(Debug, Clone)]
enum Extract {
    /// RFC 6901 pointer into the value parsed as JSON.
    Json(String),
    /// The first capture group of a regex over the key.
    Key(regex::bytes::Regex),
}

/// One declared index (`--index NAME[@PREFIX]=EXPR`).
#[derive(Debug, Clone)]
pub struct IndexDef {
    name: String,
    /// The expression as written (for messages).
    expr: String,
    extract: Extract,
    /// Only keys in here are indexed; filtered requests must stay inside.
    scope: KeyRange,
}

impl IndexDef {
    /// Parses `NAME[@PREFIX]=json:/pointer` or `NAME[@PREFIX]=key:REGEX`
    /// (the regex has exactly one capture group).
    ///
    /// # Errors
    /// [`IndexSpecError`] naming what is wrong.
    pub fn parse(spec: &str) -> Result<Self, IndexSpecError> {
        let (head, expr) = spec
            .split_once('=')
            .ok_or_else(|| IndexSpecError::Syntax(spec.to_string()))?;
        let (name, prefix) = match head.split_once('@') {
            Some((n, p)) => (n, Some(p)),
            None => (head, None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(IndexSpecError::BadName(name.to_string()));
        }
        let (extract, implied) = if let Some(p) = expr.strip_prefix("json:") {
            if !(p.is_empty() || p.starts_with('/')) {
                return Err(IndexSpecError::BadPointer {
                    name: name.into(),
                    pointer: p.into(),
                });
            }
            (Extract::Json(p.to_string()), None)
        } else if let Some(r) = expr.strip_prefix("key:") {
            let re = regex::bytes::Regex::new(r).map_err(|e| IndexSpecError::BadRegex {
                name: name.into(),
                message: e.to_string(),
            })?;
            if re.captures_len() != 2 {
                return Err(IndexSpecError::BadRegex {
                    name: name.into(),
                    message: format!(
                        "the regex needs exactly one capture group, it has {}",
                        re.captures_len() - 1
                    ),
                });
            }
            (Extract::Key(re), anchored_literal_prefix(r))
        } else {
            return Err(IndexSpecError::Syntax(spec.to_string()));
        };
        let scope = match prefix.or(implied.as_deref()) {
            Some(p) if !p.is_empty() => KeyRange::prefix(Bytes::copy_from_slice(p.as_bytes())),
            _ => KeyRange::all(),
        };
        Ok(Self {
            name: name.to_string(),
            expr: expr.to_string(),
            extract,
            scope,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The expression as declared (`json:/spec/nodeName`).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The keys this index covers.
    pub fn scope(&self) -> &KeyRange {
        &self.scope
    }

    /// The entry's index value: `None` when the key is outside the scope,
    /// the value is not JSON or lacks the pointer (or points at an object
    /// or array), or the key regex does not match.
    pub fn extract(&self, kv: &KeyValue) -> Option<Bytes> {
        if !self.scope.contains(&kv.key) {
            return None;
        }
        match &self.extract {
            Extract::Json(ptr) => {
                let v: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
                match v.pointer(ptr)? {
                    serde_json::Value::String(s) => Some(Bytes::from(s.clone())),
                    serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
                    other => Some(Bytes::from(other.to_string())),
                }
            }
            Extract::Key(re) => {
                let c = re.captures(&kv.key)?;
                Some(Bytes::copy_from_slice(c.get(1)?.as_bytes()))
            }
        }
    }
}

/// The literal text a `^`-anchored regex must start with (`^/registry/pods/`
/// of `^/registry/pods/([^/]+)/`), conservatively short: it stops at the
/// first metacharacter and drops a character a quantifier applies to.
fn anchored_literal_prefix(re: &str) -> Option<String> {
    let rest = re.strip_prefix('^')?;
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        let lit = match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => e,
                _ => break,
            },
            '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' => break,
            c => c,
        };
        if matches!(chars.peek(), Some('?' | '*' | '{')) {
            break;
        }
        out.push(lit);
    }
    (!out.is_empty()).then_some(out)
}

/// A resolved filter: index number and value to match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexFilter {
    pub(crate) index: usize,
    pub(crate) value: Bytes,
}

impl IndexFilter {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn value(&self) -> &Bytes {
        &self.value
    }
}

/// The declared indexes of one cache (fixed for its life).
#[derive(Debug, Clone, Default)]
pub struct IndexSet {
    defs: Arc<[IndexDef]>,
}

impl IndexSet {
    /// # Errors
    /// [`IndexSpecError::Duplicate`] for a name declared twice.
    pub fn new(defs: Vec<IndexDef>) -> Result<Self, IndexSpecError> {
        for (i, d) in defs.iter().enumerate() {
            if defs[..i].iter().any(|o| o.name == d.name) {
                return Err(IndexSpecError::Duplicate(d.name.clone()));
            }
        }
        Ok(Self { defs: defs.into() })
    }

    pub fn defs(&self) -> &[IndexDef] {
        &self.defs
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// The known names, for error messages.
    pub fn names(&self) -> String {
        if self.defs.is_empty() {
            return "none are declared (--index NAME=EXPR)".into();
        }
        let names: Vec<&str> = self.defs.iter().map(|d| d.name.as_str()).collect();
        format!("known: {}", names.join(", "))
    }

    /// Checks a request's `index`/`value` against `range` and resolves it.
    /// `Ok(None)`: no filter asked for.
    ///
    /// # Errors
    /// [`crate::CacheError::ValueWithoutIndex`],
    /// [`crate::CacheError::UnknownIndex`], [`crate::CacheError::IndexScope`].
    pub fn resolve(
        &self,
        range: &KeyRange,
        index: &str,
        value: &Bytes,
    ) -> Result<Option<IndexFilter>, crate::CacheError> {
        if index.is_empty() {
            if !value.is_empty() {
                return Err(crate::CacheError::ValueWithoutIndex);
            }
            return Ok(None);
        }
        let Some(i) = self.defs.iter().position(|d| d.name == index) else {
            return Err(crate::CacheError::UnknownIndex {
                name: index.to_string(),
                known: self.names(),
            });
        };
        let def = &self.defs[i];
        if !def.scope.covers(range) {
            return Err(crate::CacheError::IndexScope {
                name: index.to_string(),
                scope: describe_scope(&def.scope),
            });
        }
        Ok(Some(IndexFilter {
            index: i,
            value: value.clone(),
        }))
    }

    /// Every index's value of `kv` (`None` entries: not indexed).
    pub(crate) fn values(&self, kv: Option<&KeyValue>) -> Vec<Option<Bytes>> {
        self.defs
            .iter()
            .map(|d| kv.and_then(|kv| d.extract(kv)))
            .collect()
    }
}

fn describe_scope(r: &KeyRange) -> String {
    let (k, e) = r.to_request();
    format!(
        "[{}, {})",
        String::from_utf8_lossy(&k),
        String::from_utf8_lossy(&e)
    )
}

/// One index's data at one revision: value -> (key -> entry). Persistent:
/// clones share structure, an update costs O(log n).
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexState {
    by_value: imbl::HashMap<Bytes, OrdMap<Bytes, Arc<KeyValue>>>,
}

impl IndexState {
    pub(crate) fn remove(&mut self, value: &Bytes, key: &Bytes) {
        if let Some(m) = self.by_value.get_mut(value) {
            m.remove(key);
            if m.is_empty() {
                self.by_value.remove(value);
            }
        }
    }

    pub(crate) fn insert(&mut self, value: Bytes, kv: &Arc<KeyValue>) {
        self.by_value
            .entry(value)
            .or_default()
            .insert(kv.key.clone(), kv.clone());
    }

    /// The entries with `value`, by key.
    pub(crate) fn entries(&self, value: &[u8]) -> Option<&OrdMap<Bytes, Arc<KeyValue>>> {
        self.by_value.get(value)
    }

    /// Number of distinct values (for tests and metrics).
    pub(crate) fn values_len(&self) -> usize {
        self.by_value.len()
    }
}

/// Builds every index's state from a listed map.
pub(crate) fn build_states(set: &IndexSet, data: &OrdMap<Bytes, Arc<KeyValue>>) -> Vec<IndexState> {
    let mut states = vec![IndexState::default(); set.defs().len()];
    if set.is_empty() {
        return states;
    }
    for kv in data.values() {
        for (d, st) in set.defs().iter().zip(states.iter_mut()) {
            if let Some(v) = d.extract(kv) {
                st.insert(v, kv);
            }
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ..Default::default()
        }
    }

    #[test]
    fn json_pointer_values() {
        let d = IndexDef::parse("node=json:/spec/nodeName").unwrap();
        assert_eq!(d.scope(), &KeyRange::all());
        let x = |v: &str| d.extract(&kv("/k", v));
        assert_eq!(x(r#"{"spec":{"nodeName":"n1"}}"#), Some(Bytes::from("n1")));
        assert_eq!(x(r#"{"spec":{"nodeName":3}}"#), Some(Bytes::from("3")));
        assert_eq!(
            x(r#"{"spec":{"nodeName":true}}"#),
            Some(Bytes::from("true"))
        );
        assert_eq!(x(r#"{"spec":{"nodeName":{"a":1}}}"#), None);
        assert_eq!(x(r#"{"spec":{}}"#), None);
        assert_eq!(x("not json"), None);
        let esc = IndexDef::parse("x=json:/a~1b/c~0d").unwrap();
        assert_eq!(
            esc.extract(&kv("/k", r#"{"a/b":{"c~d":"y"}}"#)),
            Some(Bytes::from("y"))
        );
        assert!(IndexDef::parse("x=json:spec").is_err());
    }

    #[test]
    fn key_regex_and_scopes() {
        let d = IndexDef::parse("ns=key:^/registry/pods/([^/]+)/").unwrap();
        assert_eq!(d.scope(), &KeyRange::prefix(Bytes::from("/registry/pods/")));
        assert_eq!(
            d.extract(&kv("/registry/pods/default/web-1", "")),
            Some(Bytes::from("default"))
        );
        assert_eq!(d.extract(&kv("/registry/pods/default", "")), None);
        assert_eq!(d.extract(&kv("/other/pods/default/x", "")), None);
        let scoped = IndexDef::parse("node@/calico/=json:/node").unwrap();
        assert_eq!(scoped.scope(), &KeyRange::prefix(Bytes::from("/calico/")));
        assert_eq!(scoped.extract(&kv("/cilium/a", r#"{"node":"n"}"#)), None);
        assert!(IndexDef::parse("a=key:^/x/[^/]+").is_err(), "no group");
        assert!(IndexDef::parse("a=key:(x)(y)").is_err(), "two groups");
        assert!(IndexDef::parse("a b=json:/x").is_err());
        assert!(IndexDef::parse("a=yaml:/x").is_err());
        assert_eq!(anchored_literal_prefix(r"^/a\.b/c?x"), Some("/a.b/".into()));
        assert_eq!(anchored_literal_prefix("/a/(x)"), None);
        assert_eq!(anchored_literal_prefix("^(x)"), None);
    }

    #[test]
    fn resolve_checks_names_scope_and_value() {
        let set = IndexSet::new(vec![
            IndexDef::parse("node@/calico/=json:/node").unwrap(),
            IndexDef::parse("ns=key:^/pods/([^/]+)/").unwrap(),
        ])
        .unwrap();
        let calico = KeyRange::prefix(Bytes::from("/calico/x/"));
        let f = set.resolve(&calico, "node", &Bytes::from("n1")).unwrap();
        assert_eq!(f.map(|f| f.index), Some(0));
        let e = set.resolve(&calico, "nod", &Bytes::from("n1")).unwrap_err();
        assert!(e.to_string().contains("known: node, ns"), "{e}");
        let e = set
            .resolve(&KeyRange::prefix(Bytes::from("/")), "ns", &Bytes::new())
            .unwrap_err();
        assert!(e.to_string().contains("/pods/"), "{e}");
        assert!(set.resolve(&calico, "", &Bytes::from("v")).is_err());
        assert!(set.resolve(&calico, "", &Bytes::new()).unwrap().is_none());
        assert!(
            IndexSet::new(vec![
                IndexDef::parse("a=json:/x").unwrap(),
                IndexDef::parse("a=json:/y").unwrap()
            ])
            .is_err()
        );
    }
}
