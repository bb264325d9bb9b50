//! etcd 3.4's txn compares (`etcdserver/apply.go`: `applyCompare`,
//! `compareKV`), for the store's txns and the gateway's cached read-only
//! ones alike.
//!
//! A compare over a range holds only if it holds for every key in it; over
//! no key it is evaluated against an empty pair, except a VALUE compare,
//! which then fails (a missing value and an empty one look the same on
//! the wire). A target union of the wrong kind compares against zero (or
//! the empty value), an unknown target compares equal, and an unknown
//! result holds.

use std::cmp::Ordering;

use lookout_proto::mvccpb::KeyValue;
use lookout_proto::pb::Compare;
use lookout_proto::pb::compare::{CompareResult, CompareTarget, TargetUnion};

/// etcd's `applyCompare`: `c` over `kvs`, the live pairs of its key range
/// (`c.key` + `c.range_end`) at the txn's read revision.
pub fn compare<'a>(c: &Compare, kvs: impl IntoIterator<Item = &'a KeyValue>) -> bool {
    let mut any = false;
    for kv in kvs {
        any = true;
        if !compare_kv(c, kv) {
            return false;
        }
    }
    if any {
        return true;
    }
    if c.target == CompareTarget::Value as i32 {
        return false;
    }
    compare_kv(c, &KeyValue::default())
}

/// etcd's `compareKV`: `c` against one pair.
pub fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int =
        |pick: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(pick).unwrap_or(0);
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want = match &c.target_union {
                Some(TargetUnion::Value(v)) => v.as_ref(),
                _ => &[][..],
            };
            kv.value.as_ref().cmp(want)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int(|t| match t {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int(|t| match t {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int(|t| match t {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn kv(value: &str, version: i64) -> KeyValue {
        KeyValue {
            key: Bytes::from_static(b"k"),
            value: Bytes::copy_from_slice(value.as_bytes()),
            version,
            create_revision: 2,
            mod_revision: 5,
            lease: 0,
        }
    }

    fn cmp(target: CompareTarget, result: CompareResult, u: Option<TargetUnion>) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: Bytes::from_static(b"k"),
            target_union: u,
            range_end: Bytes::new(),
        }
    }

    #[test]
    fn compares_like_etcd() {
        use CompareResult::*;
        use CompareTarget::*;
        let k = kv("b", 3);
        let v = |s: &'static str| Some(TargetUnion::Value(Bytes::from_static(s.as_bytes())));
        assert!(compare_kv(&cmp(Value, Equal, v("b")), &k));
        assert!(compare_kv(&cmp(Value, Greater, v("a")), &k));
        assert!(compare_kv(&cmp(Value, Less, v("c")), &k));
        assert!(compare_kv(
            &cmp(Version, Equal, Some(TargetUnion::Version(3))),
            &k
        ));
        assert!(compare_kv(
            &cmp(Mod, Greater, Some(TargetUnion::ModRevision(4))),
            &k
        ));
        assert!(compare_kv(
            &cmp(Create, NotEqual, Some(TargetUnion::CreateRevision(1))),
            &k
        ));
        // Wrong union kind: compared against zero.
        assert!(compare_kv(
            &cmp(Version, Greater, Some(TargetUnion::ModRevision(100))),
            &k
        ));
        assert!(compare_kv(&cmp(Lease, Equal, None), &k));
        // Unknown result: true; unknown target: equal.
        let mut c = cmp(Version, Equal, Some(TargetUnion::Version(99)));
        c.result = 42;
        assert!(compare_kv(&c, &k));
        let mut c = cmp(Version, NotEqual, Some(TargetUnion::Version(99)));
        c.target = 9;
        assert!(!compare_kv(&c, &k));
    }

    #[test]
    fn ranges_and_missing_keys() {
        use CompareResult::*;
        use CompareTarget::*;
        let (a, b) = (kv("x", 1), kv("y", 4));
        let ver = |n| Some(TargetUnion::Version(n));
        assert!(compare(&cmp(Version, Greater, ver(0)), [&a, &b]));
        assert!(!compare(&cmp(Version, Greater, ver(1)), [&a, &b]));
        // No key: zeros, except VALUE, which fails whatever it asks.
        assert!(compare(&cmp(Version, Equal, ver(0)), []));
        assert!(compare(&cmp(Create, Equal, None), []));
        assert!(!compare(
            &cmp(
                Value,
                NotEqual,
                Some(TargetUnion::Value(Bytes::from_static(b"x")))
            ),
            []
        ));
    }
}
