//! The readable `/v1` JSON: keys and values as UTF-8 text, base64 only when
//! the bytes are not valid UTF-8 (then flagged with `key_encoding` /
//! `value_encoding: "base64"`), revisions as JSON numbers, lease IDs as
//! decimal strings (they use all 63 bits, more than a JSON number keeps
//! in most parsers), zero fields left out.
//!
//! ```text
//!   {"type":"PUT","key":"app/a","value":"1","mod_revision":13,"create_revision":13,"version":1}
//!   {"type":"DELETE","key":"app/a","mod_revision":14}
//! ```
//!
//! Also the URL side: percent-decoding of keys in paths and of query
//! parameters, byte for byte (keys need not be UTF-8).

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use serde::Serialize;

/// Bytes as text when they are UTF-8, else standard base64 with a flag.
fn text(b: &[u8]) -> (Cow<'_, str>, Option<&'static str>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Cow::Borrowed(s), None),
        Err(_) => (
            Cow::Owned(base64::engine::general_purpose::STANDARD.encode(b)),
            Some("base64"),
        ),
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A lease ID as a decimal string, left out when 0.
#[derive(Debug, Clone, Copy)]
struct Lease(i64);

impl Serialize for Lease {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn no_lease(l: &Lease) -> bool {
    l.0 == 0
}

/// One key-value pair in the readable form.
#[derive(Debug, Serialize)]
pub struct TextKv<'a> {
    pub key: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "is_zero")]
    pub create_revision: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub mod_revision: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub version: i64,
    #[serde(skip_serializing_if = "no_lease")]
    lease: Lease,
}

impl<'a> TextKv<'a> {
    /// `with_value: false` leaves the value out (keys_only, deletes).
    pub fn new(kv: &'a KeyValue, with_value: bool) -> Self {
        let (key, key_encoding) = text(&kv.key);
        let (value, value_encoding) = if with_value {
            let (v, e) = text(&kv.value);
            (Some(v), e)
        } else {
            (None, None)
        };
        Self {
            key,
            key_encoding,
            value,
            value_encoding,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: Lease(kv.lease),
        }
    }
}

/// A watch event line: `type` first, then the pair's fields.
#[derive(Debug, Serialize)]
struct EventLine<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    kv: TextKv<'a>,
}

/// The `/v1/watch` line for `ev` (no newline). Deletes carry the key and
/// the revision of the delete only, as etcd's delete events do.
pub fn event_line(ev: &Event) -> Bytes {
    let empty = KeyValue::default();
    let kv = ev.kv.as_ref().unwrap_or(&empty);
    let delete = ev.r#type == EventType::Delete as i32;
    let line = EventLine {
        r#type: if delete { "DELETE" } else { "PUT" },
        kv: TextKv::new(kv, !delete),
    };
    Bytes::from(serde_json::to_vec(&line).expect("plain structs serialize"))
}

// === URLs ===

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` to bytes (`%2F` -> `/`, `%00` -> 0); `plus_is_space`
/// for query strings. A `%` not followed by two hex digits stays as it is.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The query string as decoded `(name, value)` pairs, in order.
pub fn query_pairs(q: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&percent_decode(k, true)).into_owned(),
                percent_decode(v, true),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &[u8], value: &[u8]) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            value: Bytes::copy_from_slice(value),
            lease: 0,
        }
    }

    #[test]
    fn text_stays_text_and_binary_is_flagged() {
        let put = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(b"app/\xe2\x9c\x93", b"\xff\x00")),
            prev_kv: None,
        };
        assert_eq!(
            event_line(&put),
            r#"{"type":"PUT","key":"app/✓","value":"/wA=","value_encoding":"base64","create_revision":3,"mod_revision":7,"version":2}"#
        );
        let del = Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: Bytes::from_static(b"\xfe"),
                mod_revision: 9,
                ..Default::default()
            }),
            prev_kv: None,
        };
        assert_eq!(
            event_line(&del),
            r#"{"type":"DELETE","key":"/g==","key_encoding":"base64","mod_revision":9}"#
        );
        let mut leased = kv(b"k", b"");
        leased.lease = i64::MAX;
        assert_eq!(
            serde_json::to_string(&TextKv::new(&leased, true)).unwrap(),
            r#"{"key":"k","value":"","create_revision":3,"mod_revision":7,"version":2,"lease":"9223372036854775807"}"#
        );
    }

    #[test]
    fn urls_decode_to_bytes() {
        assert_eq!(percent_decode("a%2Fb%00%ff%zz%", false), b"a/b\x00\xff%zz%");
        assert_eq!(percent_decode("a+b", true), b"a b");
        assert_eq!(percent_decode("a+b", false), b"a+b");
        assert_eq!(
            query_pairs(Some("prefix=true&rev=5&&flag&k=%41")),
            vec![
                ("prefix".to_string(), b"true".to_vec()),
                ("rev".to_string(), b"5".to_vec()),
                ("flag".to_string(), Vec::new()),
                ("k".to_string(), b"A".to_vec()),
            ]
        );
    }
}
