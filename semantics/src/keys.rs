//! Key ranges as etcd spells them (`key` + `range_end`).
//!
//! etcd has three spellings: an empty `range_end` names the single key
//! `key`; a `range_end` of `"\0"` names every key from `key` on; any other
//! `range_end` names `[key, range_end)`, which holds nothing when
//! `range_end <= key`. A `key` of `"\0"` with `range_end` `"\0"` is every
//! key (etcdctl's `--from-key ""` and `get "" --prefix`).
//!
//! Two forms, for two kinds of caller: [`key_bounds`] and [`in_range`]
//! borrow the request's own bytes and allocate nothing (the store's hot
//! paths: every Range, every watch event), and [`KeyRange`] is the owned,
//! normalised half-open interval the cache indexes and compares watch
//! ranges with.

use std::ops::Bound;

use bytes::Bytes;

/// A key span as a pair of bounds over borrowed keys, ready for a
/// `BTreeMap::range`-style lookup.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// `[key, range_end)` as etcd reads it, over the request's own bytes.
/// `None` when the range holds no key (`range_end <= key`).
pub fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if range_end == [0] {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if range_end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(range_end)))
    }
}

/// Whether `k` is in the range `key` + `range_end` names (etcd's
/// conventions, see the module doc).
pub fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == [0] {
        k >= key
    } else {
        k >= key && k < range_end
    }
}

/// The first key after every key with this prefix (etcd's `GetPrefixRangeEnd`):
/// the prefix with its last byte below `0xff` incremented and what follows
/// dropped. `None` when there is no such key (the prefix is empty or all
/// `0xff`): the range is then unbounded, which etcd spells `"\0"`.
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

/// `range_end` for every key starting with `prefix`, in etcd's spelling:
/// [`prefix_end`], or `"\0"` when that is unbounded (etcdctl's `--prefix`).
pub fn prefix_range_end(prefix: &[u8]) -> Bytes {
    prefix_end(prefix).unwrap_or_else(|| Bytes::from_static(&[0]))
}

/// A half-open key interval `[start, end)`; `end == None` means unbounded.
///
/// etcd's three spellings map onto it: an empty `range_end` is the single key
/// `[key, key\0)`, a `range_end` of `"\0"` is everything from `key` on, and any
/// other `range_end` is taken as is (empty when `range_end <= key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRange {
    start: Bytes,
    end: Option<Bytes>,
}

impl KeyRange {
    /// Every key (`key = "\0"`, `range_end = "\0"` in etcd's terms).
    pub fn all() -> Self {
        Self {
            start: Bytes::new(),
            end: None,
        }
    }

    /// The range an etcd request names with `key` and `range_end`.
    pub fn from_request(key: &Bytes, range_end: &Bytes) -> Self {
        if range_end.is_empty() {
            let mut end = Vec::with_capacity(key.len() + 1);
            end.extend_from_slice(key);
            end.push(0);
            Self {
                start: key.clone(),
                end: Some(Bytes::from(end)),
            }
        } else if range_end.as_ref() == [0] {
            Self {
                start: key.clone(),
                end: None,
            }
        } else {
            Self {
                start: key.clone(),
                end: Some(range_end.clone()),
            }
        }
    }

    /// All keys starting with `prefix` (etcdctl's `--prefix`).
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let start: Bytes = prefix.into();
        let end = prefix_end(&start);
        Self { start, end }
    }

    /// `[start, end)` directly; `end == None` is unbounded.
    pub fn new(start: impl Into<Bytes>, end: Option<Bytes>) -> Self {
        Self {
            start: start.into(),
            end,
        }
    }

    pub fn start(&self) -> &Bytes {
        &self.start
    }

    pub fn end(&self) -> Option<&Bytes> {
        self.end.as_ref()
    }

    /// The interval as map bounds. Check [`KeyRange::is_empty`] first:
    /// ordered maps may panic on a range whose start is past its end.
    pub fn bounds(&self) -> KeyBounds<'_> {
        (
            Bound::Included(self.start.as_ref()),
            match &self.end {
                Some(e) => Bound::Excluded(e.as_ref()),
                None => Bound::Unbounded,
            },
        )
    }

    /// True when the range holds no key at all (`range_end <= key`).
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, Some(e) if e.as_ref() <= self.start.as_ref())
    }

    /// True when the range holds exactly one key (`[k, k\0)`).
    pub fn single_key(&self) -> Option<&Bytes> {
        match &self.end {
            Some(e)
                if e.len() == self.start.len() + 1
                    && e.last() == Some(&0)
                    && e[..self.start.len()] == self.start[..] =>
            {
                Some(&self.start)
            }
            _ => None,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_ref()
            && match &self.end {
                Some(e) => key < e.as_ref(),
                None => true,
            }
    }

    /// True when every key of `other` lies in `self`.
    pub fn covers(&self, other: &KeyRange) -> bool {
        if other.is_empty() {
            return true;
        }
        if other.start < self.start {
            return false;
        }
        match (&self.end, &other.end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b <= a,
        }
    }

    /// True when some key lies in both ranges.
    pub fn intersects(&self, other: &KeyRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        let below = |a: &KeyRange, b: &KeyRange| match &a.end {
            Some(e) => e.as_ref() <= b.start.as_ref(),
            None => false,
        };
        !below(self, other) && !below(other, self)
    }

    /// The smallest single range holding all of `ranges` (the cache's
    /// upstream watch covers this hull and drops what falls between them).
    pub fn hull(ranges: &[KeyRange]) -> KeyRange {
        let mut it = ranges.iter().filter(|r| !r.is_empty());
        let Some(first) = it.next() else {
            return KeyRange::all();
        };
        let mut h = first.clone();
        for r in it {
            if r.start < h.start {
                h.start = r.start.clone();
            }
            h.end = match (&h.end, &r.end) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(if a >= b { a.clone() } else { b.clone() }),
            };
        }
        h
    }

    /// The `(key, range_end)` pair etcd expects for this range.
    pub fn to_request(&self) -> (Bytes, Bytes) {
        if let Some(k) = self.single_key() {
            return (k.clone(), Bytes::new());
        }
        let key = if self.start.is_empty() {
            Bytes::from_static(&[0])
        } else {
            self.start.clone()
        };
        match &self.end {
            None => (key, Bytes::from_static(&[0])),
            Some(e) => (key, e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn etcd_spellings() {
        let single = KeyRange::from_request(&b("a"), &Bytes::new());
        assert!(single.contains(b"a"));
        assert!(!single.contains(b"a\0"));
        assert!(!single.contains(b"ab"));
        assert_eq!(single.single_key(), Some(&b("a")));
        let from = KeyRange::from_request(&b("b"), &Bytes::from_static(&[0]));
        assert!(from.contains(b"zzz") && from.contains(b"b") && !from.contains(b"a"));
        let all = KeyRange::from_request(&Bytes::from_static(&[0]), &Bytes::from_static(&[0]));
        assert!(all.contains(b"\0") && all.contains(b"\xff\xff"));
        let empty = KeyRange::from_request(&b("b"), &b("a"));
        assert!(empty.is_empty() && !empty.contains(b"b"));
        let p = KeyRange::prefix(b("a/"));
        assert!(
            p.contains(b"a/") && p.contains(b"a/zz") && !p.contains(b"a0") && !p.contains(b"a")
        );
        assert_eq!(prefix_end(b"a\xff"), Some(b("b")));
        assert_eq!(prefix_end(b"a/"), Some(b("a0")));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_range_end(b"\xff"), Bytes::from_static(&[0]));
        assert_eq!(prefix_range_end(b"k"), b("l"));
    }

    /// The borrowed helpers and the owned form agree on every spelling.
    #[test]
    fn borrowed_and_owned_forms_agree() {
        let keys: Vec<&[u8]> = vec![
            b"", b"\0", b"a", b"a\0", b"a/", b"a/x", b"a0", b"b", b"\xff",
        ];
        let spellings: Vec<(&[u8], &[u8])> = vec![
            (b"a", b""),
            (b"a", b"\0"),
            (b"\0", b"\0"),
            (b"a/", b"a0"),
            (b"b", b"a"),
            (b"a", b"a"),
            (b"a", b"a\0"),
        ];
        for (key, end) in spellings {
            let owned =
                KeyRange::from_request(&Bytes::copy_from_slice(key), &Bytes::copy_from_slice(end));
            assert_eq!(
                key_bounds(key, end).is_none(),
                owned.is_empty(),
                "{key:?} {end:?}"
            );
            for k in &keys {
                use std::ops::RangeBounds;
                let by_bounds =
                    key_bounds(key, end).is_some_and(|b| RangeBounds::<[u8]>::contains(&b, *k));
                assert_eq!(
                    in_range(k, key, end),
                    owned.contains(k),
                    "{k:?} in {key:?}..{end:?}"
                );
                assert_eq!(
                    by_bounds,
                    owned.contains(k),
                    "{k:?} bounds {key:?}..{end:?}"
                );
            }
        }
    }

    #[test]
    fn hull_and_covers() {
        let h = KeyRange::hull(&[KeyRange::prefix(b("b/")), KeyRange::prefix(b("a/"))]);
        assert_eq!(h, KeyRange::new(b("a/"), Some(b("b0"))));
        assert!(h.covers(&KeyRange::prefix(b("a/x"))));
        assert!(!h.covers(&KeyRange::prefix(b("c"))));
        assert!(KeyRange::all().covers(&h));
        assert_eq!(
            KeyRange::all().to_request(),
            (Bytes::from_static(&[0]), Bytes::from_static(&[0]))
        );
        let s = KeyRange::from_request(&b("k"), &Bytes::new());
        assert_eq!(s.to_request(), (b("k"), Bytes::new()));
    }

    #[test]
    fn intersections() {
        let p = KeyRange::prefix(b("in/"));
        assert!(p.intersects(&KeyRange::from_request(&b("in/x"), &Bytes::new())));
        assert!(!p.intersects(&KeyRange::from_request(&b("out/x"), &Bytes::new())));
        assert!(!p.intersects(&KeyRange::from_request(&b("in0"), &Bytes::new())));
        assert!(!p.intersects(&KeyRange::from_request(&b("a"), &b("in/"))));
        assert!(p.intersects(&KeyRange::from_request(&b("a"), &b("in/\0"))));
        assert!(p.intersects(&KeyRange::from_request(&b("a"), &Bytes::from_static(&[0]))));
        assert!(KeyRange::all().intersects(&p));
        assert!(!p.intersects(&KeyRange::from_request(&b("z"), &b("a"))));
    }
}
