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
use lookout_proto::mvccpb::KeyValue;

use crate::keys::KeyRange;
use crate::mapkey::{KvMap, MapKey};

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
    /// RFC 6901 pointer into the value parsed as JSON, as its unescaped
    /// reference tokens.
    Json(Arc<[String]>),
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
            let tokens: Vec<String> = p
                .split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect();
            (Extract::Json(tokens.into()), None)
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
            Extract::Json(tokens) => json_pointer_scalar(&kv.value, tokens),
            Extract::Key(re) => {
                let c = re.captures(&kv.key)?;
                Some(Bytes::copy_from_slice(c.get(1)?.as_bytes()))
            }
        }
    }
}

/// The scalar at `tokens` in the JSON document `doc` (a string as its text,
/// other scalars as their JSON text), walking the document once without
/// building it: the applier runs this for the old and the new value of
/// every event, and a `serde_json::Value` allocated every string and map
/// of the document (6.5x the applier's cost, measured).
fn json_pointer_scalar(doc: &[u8], tokens: &[String]) -> Option<Bytes> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(doc);
    let found = Walk { tokens }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    found
}

/// Follows the pointer's tokens through a document, skipping everything
/// else with `IgnoredAny`.
struct Walk<'a> {
    tokens: &'a [String],
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Bytes>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = Option<Bytes>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .tokens
            .is_empty()
            .then(|| Bytes::copy_from_slice(v.as_bytes())))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self
            .tokens
            .is_empty()
            .then(|| Bytes::from_static(if v { b"true" } else { b"false" })))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.tokens.is_empty().then(|| Bytes::from(v.to_string())))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.tokens.is_empty().then(|| Bytes::from(v.to_string())))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // The text serde_json writes for the number, as `Value` did.
        Ok(self.tokens.is_empty().then(|| {
            Bytes::from(
                serde_json::Number::from_f64(v).map_or_else(|| "null".into(), |n| n.to_string()),
            )
        }))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.tokens.is_empty().then(|| Bytes::from_static(b"null")))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            match self.tokens.split_first() {
                // Later duplicates win, as in `serde_json::Value`.
                Some((first, rest)) if *first == key => {
                    found = map.next_value_seed(Walk { tokens: rest })?;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // RFC 6901 array indexes: digits, no leading zero (serde_json's rule).
        let index = self.tokens.first().and_then(|t| {
            let ok = !t.is_empty()
                && t.bytes().all(|b| b.is_ascii_digit())
                && (t.len() == 1 || !t.starts_with('0'));
            ok.then(|| t.parse::<usize>().ok()).flatten()
        });
        let mut found = None;
        let mut i = 0;
        loop {
            if Some(i) == index {
                match seq.next_element_seed(Walk {
                    tokens: &self.tokens[1..],
                })? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
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
    by_value: imbl::HashMap<Bytes, KvMap>,
}

impl IndexState {
    pub(crate) fn remove(&mut self, value: &Bytes, key: &Bytes) {
        if let Some(m) = self.by_value.get_mut(value) {
            m.remove(&key[..]);
            if m.is_empty() {
                self.by_value.remove(value);
            }
        }
    }

    pub(crate) fn insert(&mut self, value: Bytes, kv: &Arc<KeyValue>) {
        self.by_value
            .entry(value)
            .or_default()
            .insert(MapKey::from(&kv.key), kv.clone());
    }

    /// The entries with `value`, by key.
    pub(crate) fn entries(&self, value: &[u8]) -> Option<&KvMap> {
        self.by_value.get(value)
    }

    /// Number of distinct values (for tests and metrics).
    pub(crate) fn values_len(&self) -> usize {
        self.by_value.len()
    }
}

/// Builds every index's state from a listed map.
pub(crate) fn build_states(set: &IndexSet, data: &KvMap) -> Vec<IndexState> {
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

    /// The walk agrees with `serde_json::Value::pointer` on every shape.
    #[test]
    fn walk_matches_value_pointer() {
        let docs = [
            r#"{"a":{"b":[1,{"c":"x"},3.5,true,null]},"a/b":{"~":"t"},"z":"q","a":{"b":[9]}}"#,
            r#"{"n":-7,"u":18446744073709551615,"f":1e300,"e":"\u00e9\"","s":[]}"#,
            r#"[0,[1,[2]]]"#,
            r#""top""#,
            "17",
            "{} x",
            "not json",
        ];
        let ptrs = [
            "", "/a", "/a/b", "/a/b/0", "/a/b/1/c", "/a/b/2", "/a/b/3", "/a/b/4", "/a/b/01",
            "/a/b/9", "/a~1b/~0", "/z", "/n", "/u", "/f", "/e", "/s", "/0", "/1/1/0", "/1/-",
            "/x/y",
        ];
        for doc in docs {
            for ptr in ptrs {
                let d = IndexDef::parse(&format!("i=json:{ptr}")).unwrap();
                let want = serde_json::from_slice::<serde_json::Value>(doc.as_bytes())
                    .ok()
                    .and_then(|v| match v.pointer(ptr)? {
                        serde_json::Value::String(s) => Some(Bytes::from(s.clone())),
                        serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
                        other => Some(Bytes::from(other.to_string())),
                    });
                assert_eq!(d.extract(&kv("/k", doc)), want, "{doc} {ptr}");
            }
        }
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
