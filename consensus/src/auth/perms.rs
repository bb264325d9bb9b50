//! Key-range permissions as etcd 3.4 checks them (auth/range_perm_cache.go
//! over pkg/adt): a user's read and write permissions are each the union
//! of the key ranges its roles grant, and a request is allowed when the
//! union covers the whole range it names.
//!
//! ```text
//!  roles' Permission{key, range_end, type} ──merge──> read: [a,c) [d,+inf)
//!                                                    write: [a,b)
//!  point query k      : some range contains k
//!  range query [k, e) : the union covers [k, e) without a gap
//! ```
//!
//! Key spelling (etcd's): an empty `range_end` is the single key, `"\0"`
//! is "every key from `key` on", anything else is `[key, range_end)`.

use bytes::Bytes;
use lookout_proto::authpb::{Permission, permission::Type as PermType};

/// One end of a range: a key, or past every key (etcd's empty
/// `BytesAffineComparable`, which sorts after everything).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Key(Bytes),
    Infinity,
}

/// A half-open key range `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bytes,
    pub end: End,
}

impl KeyRange {
    /// The range a permission grants. A single key `k` is `[k, k\0)`.
    /// A permission whose key is empty grants nothing: etcd 3.4 turns it
    /// into a range starting past every key (later etcd refuses it, and so
    /// does our grant; old data may still hold one).
    pub fn of_permission(key: &[u8], range_end: &[u8]) -> Option<Self> {
        if key.is_empty() {
            return None;
        }
        let end = if range_end.is_empty() {
            let mut k = key.to_vec();
            k.push(0);
            End::Key(k.into())
        } else if range_end == [0] {
            End::Infinity
        } else {
            End::Key(Bytes::copy_from_slice(range_end))
        };
        Some(Self {
            start: Bytes::copy_from_slice(key),
            end,
        })
    }
}

/// etcd's rule for a range a role may be granted (later etcd 3.4 and 3.5,
/// `isValidPermissionRange`): a non-empty key, then a single key, a range
/// with `key < range_end`, or from the key on (`"\0"`).
pub fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

/// A union of key ranges, kept sorted and merged (no two touch or
/// overlap), so a check is one binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<KeyRange>,
}

impl RangeSet {
    /// The union of `ranges`.
    pub fn from_ranges(mut ranges: Vec<KeyRange>) -> Self {
        ranges.sort_by(|a, b| a.start.cmp(&b.start));
        let mut merged: Vec<KeyRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            if let Some(last) = merged.last_mut() {
                // Touching ranges merge too: [a,b) + [b,c) covers [a,c).
                if End::Key(r.start.clone()) <= last.end {
                    if r.end > last.end {
                        last.end = r.end;
                    }
                    continue;
                }
            }
            merged.push(r);
        }
        Self { ranges: merged }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The merged range holding `key`, if any.
    fn holding(&self, key: &[u8]) -> Option<&KeyRange> {
        // Last range starting at or before `key`.
        let i = self.ranges.partition_point(|r| r.start.as_ref() <= key);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        match &r.end {
            End::Infinity => Some(r),
            End::Key(e) if key < e.as_ref() => Some(r),
            End::Key(_) => None,
        }
    }

    /// Whether a request on `[key, range_end)` (etcd's spelling) is
    /// covered: a single key must lie in some range, a range must lie
    /// inside the union without a gap.
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        let Some(r) = self.holding(key) else {
            return false;
        };
        if range_end.is_empty() {
            return true;
        }
        if range_end == [0] {
            return r.end == End::Infinity;
        }
        match &r.end {
            End::Infinity => true,
            End::Key(e) => range_end <= e.as_ref(),
        }
    }
}

/// What one user may read and write (the union over its roles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPerms {
    pub read: RangeSet,
    pub write: RangeSet,
}

impl UserPerms {
    /// Merges every permission of `perms` (the user's roles' permissions).
    pub fn merge<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> Self {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for p in perms {
            let Some(r) = KeyRange::of_permission(&p.key, &p.range_end) else {
                continue;
            };
            match PermType::try_from(p.perm_type).unwrap_or(PermType::Read) {
                PermType::Read => read.push(r),
                PermType::Write => write.push(r),
                PermType::Readwrite => {
                    read.push(r.clone());
                    write.push(r);
                }
            }
        }
        Self {
            read: RangeSet::from_ranges(read),
            write: RangeSet::from_ranges(write),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
        }
    }

    #[test]
    fn points_ranges_prefixes_and_from_key() {
        let p = UserPerms::merge(&[
            perm(PermType::Read, "a", ""),
            perm(PermType::Readwrite, "/b/", "/b0"),
            perm(PermType::Write, "x", "\0"),
        ]);
        assert!(p.read.covers(b"a", b""));
        assert!(!p.read.covers(b"a", b"b"), "a point does not cover a range");
        assert!(!p.read.covers(b"aa", b""));
        assert!(p.read.covers(b"/b/1", b""));
        assert!(p.read.covers(b"/b/", b"/b0"));
        assert!(p.read.covers(b"/b/x", b"/b/y"));
        assert!(!p.read.covers(b"/b/", b"/c"));
        assert!(!p.read.covers(b"/b/", b"\0"), "from-key needs an open end");
        assert!(p.write.covers(b"/b/k", b""));
        assert!(p.write.covers(b"x", b"\0"));
        assert!(p.write.covers(b"zzz", b"\0"));
        assert!(!p.write.covers(b"w", b"\0"));
        assert!(!p.write.covers(b"a", b""));
    }

    #[test]
    fn touching_and_overlapping_ranges_merge() {
        let p = UserPerms::merge(&[
            perm(PermType::Read, "c", "e"),
            perm(PermType::Read, "a", "c"),
            perm(PermType::Read, "d", "f"),
            perm(PermType::Read, "h", "i"),
        ]);
        assert!(p.read.covers(b"a", b"f"));
        assert!(p.read.covers(b"b", b"e"));
        assert!(!p.read.covers(b"a", b"g"));
        assert!(!p.read.covers(b"e", b"i"), "a gap between f and h");
        assert!(p.read.covers(b"h", b""));
    }

    #[test]
    fn empty_keys_grant_nothing_and_are_refused() {
        let p = UserPerms::merge(&[perm(PermType::Readwrite, "", "\0")]);
        assert!(p.read.is_empty());
        assert!(!valid_permission_range(b"", b""));
        assert!(!valid_permission_range(b"b", b"a"));
        assert!(!valid_permission_range(b"b", b"b"));
        assert!(valid_permission_range(b"\0", b"\0"));
        assert!(valid_permission_range(b"a", b""));
        assert!(valid_permission_range(b"a", b"b"));
    }
}
