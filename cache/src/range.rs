//! `Range` evaluated against a [`Snapshot`], option for option as etcd 3.4
//! does it (`etcdserver/apply.go` and `mvcc/kvstore_txn.go`):
//!
//! - `count` is the number of keys in the range before the min/max revision
//!   filters prune anything, and regardless of `limit`;
//! - `limit` applies after filtering and sorting; `more` says it cut;
//! - a non-`KEY` sort target with `sort_order = NONE` sorts ascending;
//! - `keys_only` clears values, `count_only` returns no kvs.
//!
//! Sorting uses Go's own `sort.Sort` algorithm ([`crate::gosort`]), so ties
//! under a non-key sort target come out in etcd's order, not just a sorted one.

use std::ops::Bound;

use bytes::Bytes;
use lookout_proto::mvccpb::KeyValue;
use lookout_proto::pb::{
    RangeRequest, RangeResponse, ResponseHeader,
    range_request::{SortOrder, SortTarget},
};

use crate::error::CacheError;
use crate::keys::KeyRange;
use crate::snapshot::Snapshot;

/// Checks a request the way etcd's gRPC layer does before it reaches the
/// store.
///
/// # Errors
/// [`CacheError::EmptyKey`] for an empty key, [`CacheError::InvalidSortOption`]
/// for an unknown sort target.
pub fn validate_range(req: &RangeRequest) -> Result<(), CacheError> {
    if req.key.is_empty() {
        return Err(CacheError::EmptyKey);
    }
    // etcd 3.4 accepts an unknown sort order (and then sorts nothing); an
    // unknown sort target makes it dereference a nil sorter and crash, so
    // refuse it with the error etcd 3.5 gives.
    if SortTarget::try_from(req.sort_target).is_err() {
        return Err(CacheError::InvalidSortOption);
    }
    Ok(())
}

/// Evaluates `req` against `snap`. The response header carries only
/// `revision` (the snapshot's); the caller fills cluster and member ids.
///
/// # Errors
/// Everything [`validate_range`] rejects, and
/// [`CacheError::RevisionNotCached`] when `req.revision` names a revision
/// other than the snapshot's (the caller waits for a future one or forwards
/// an older one upstream).
pub fn evaluate_range(snap: &Snapshot, req: &RangeRequest) -> Result<RangeResponse, CacheError> {
    validate_range(req)?;
    let range = KeyRange::from_request(&req.key, &req.range_end);
    // Resolved first: a bad filter is InvalidArgument whatever the revision.
    let filter = snap.index_set().resolve(&range, &req.index, &req.value)?;
    if req.revision > 0 && req.revision != snap.revision() {
        return Err(CacheError::RevisionNotCached {
            requested: req.revision,
            cached: snap.revision(),
        });
    }
    let header = Some(ResponseHeader {
        revision: snap.revision(),
        ..Default::default()
    });
    if range.is_empty() {
        return Ok(RangeResponse {
            header,
            ..Default::default()
        });
    }
    let bounds = (
        Bound::Included(range.start().as_ref()),
        match range.end() {
            Some(e) => Bound::Excluded(e.as_ref()),
            None => Bound::Unbounded,
        },
    );
    // With a filter the entries come from the index's map for the value:
    // the same ordered map shape, holding only the matches.
    let empty = imbl::OrdMap::new();
    let source = match &filter {
        None => snap.data(),
        Some(f) => snap.index_entries(f.index(), f.value()).unwrap_or(&empty),
    };
    evaluate_over(req, header, || {
        source.range::<_, [u8]>(bounds).map(|(_, v)| &**v)
    })
}

/// Evaluates `req`'s options over the entries `iter` yields (key order).
pub(crate) fn evaluate_over<'a, I>(
    req: &RangeRequest,
    header: Option<ResponseHeader>,
    iter: impl Fn() -> I,
) -> Result<RangeResponse, CacheError>
where
    I: Iterator<Item = &'a KeyValue>,
{
    if req.count_only {
        return Ok(RangeResponse {
            header,
            kvs: Vec::new(),
            more: false,
            count: iter().count() as i64,
        });
    }

    // An unknown order still fetches everything before the limit (etcd
    // tests `sort_order != NONE`) but sorts nothing: keys stay in key order.
    let unknown_order = SortOrder::try_from(req.sort_order).is_err();
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let fetch_all = order != SortOrder::None || unknown_order || filtered;

    let (mut kvs, count): (Vec<&KeyValue>, usize) = if req.limit > 0 && !fetch_all {
        // Key order is the map's order: take one more than the limit to know
        // whether there are more, and count the rest without collecting.
        let mut it = iter();
        let kvs: Vec<&KeyValue> = it.by_ref().take(req.limit as usize + 1).collect();
        let count = kvs.len() + it.count();
        (kvs, count)
    } else {
        let kvs: Vec<&KeyValue> = iter().collect();
        let n = kvs.len();
        (kvs, n)
    };

    if filtered {
        kvs.retain(|kv| {
            !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
        });
    }

    let order = if target != SortTarget::Key && order == SortOrder::None && !unknown_order {
        SortOrder::Ascend
    } else {
        order
    };
    if order != SortOrder::None {
        sort_kvs(&mut kvs, target, order == SortOrder::Descend);
    }

    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    let kvs = kvs
        .into_iter()
        .map(|kv| {
            let mut kv = kv.clone();
            if req.keys_only {
                kv.value = Bytes::new();
            }
            kv
        })
        .collect();
    Ok(RangeResponse {
        header,
        kvs,
        more,
        count: count as i64,
    })
}

fn sort_kvs(kvs: &mut [&KeyValue], target: SortTarget, descend: bool) {
    use std::cmp::Ordering;
    let cmp = |a: &&KeyValue, b: &&KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    // etcd sorts with Go's unstable sort.Sort (descending through
    // sort.Reverse, i.e. Less(i, j) = Less(j, i)); equal elements land
    // where that algorithm puts them, so use the same algorithm.
    if descend {
        crate::gosort::sort(kvs, |a, b| cmp(b, a) == Ordering::Less);
    } else {
        crate::gosort::sort(kvs, |a, b| cmp(a, b) == Ordering::Less);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imbl::OrdMap;

    fn snap() -> Snapshot {
        let mut m = OrdMap::new();
        // key, create, mod, version, value
        for (k, c, md, ver, v) in [
            ("a", 2, 9, 3, "zz"),
            ("b", 3, 3, 1, "aa"),
            ("c", 4, 8, 2, "mm"),
            ("c/1", 5, 5, 1, "mm"),
            ("d", 6, 6, 1, "bb"),
        ] {
            let kv = KeyValue {
                key: Bytes::copy_from_slice(k.as_bytes()),
                create_revision: c,
                mod_revision: md,
                version: ver,
                value: Bytes::copy_from_slice(v.as_bytes()),
                lease: 0,
            };
            m.insert(crate::MapKey::from(&kv.key), std::sync::Arc::new(kv));
        }
        Snapshot::new(9, m)
    }

    fn req(key: &str, end: &[u8]) -> RangeRequest {
        RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end),
            ..Default::default()
        }
    }

    fn keys(r: &RangeResponse) -> Vec<String> {
        r.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    #[test]
    fn single_prefix_and_from_key() {
        let s = snap();
        let r = evaluate_range(&s, &req("c", b"")).unwrap();
        assert_eq!((keys(&r), r.count, r.more), (vec!["c".into()], 1, false));
        let r = evaluate_range(&s, &req("c", b"d")).unwrap();
        assert_eq!(keys(&r), ["c", "c/1"]);
        let r = evaluate_range(&s, &req("c", b"\0")).unwrap();
        assert_eq!(keys(&r), ["c", "c/1", "d"]);
        let r = evaluate_range(&s, &req("\0", b"\0")).unwrap();
        assert_eq!(r.count, 5);
        let r = evaluate_range(&s, &req("zz", b"a")).unwrap();
        assert_eq!((r.count, r.kvs.len()), (0, 0));
        assert_eq!(r.header.unwrap().revision, 9);
    }

    #[test]
    fn limit_count_more() {
        let s = snap();
        let mut q = req("a", b"\0");
        q.limit = 2;
        let r = evaluate_range(&s, &q).unwrap();
        assert_eq!(
            (keys(&r), r.count, r.more),
            (vec!["a".into(), "b".into()], 5, true)
        );
        q.limit = 5;
        let r = evaluate_range(&s, &q).unwrap();
        assert!(!r.more);
        q.count_only = true;
        let r = evaluate_range(&s, &q).unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 5, false));
    }

    #[test]
    fn sorting_like_etcd() {
        let s = snap();
        let mut q = req("a", b"\0");
        q.sort_target = SortTarget::Mod as i32; // NONE + non-key target => ascend
        assert_eq!(
            keys(&evaluate_range(&s, &q).unwrap()),
            ["b", "c/1", "d", "c", "a"]
        );
        q.sort_order = SortOrder::Descend as i32;
        q.limit = 2;
        let r = evaluate_range(&s, &q).unwrap();
        assert_eq!(
            (keys(&r), r.more, r.count),
            (vec!["a".into(), "c".into()], true, 5)
        );
        q.limit = 0;
        q.sort_target = SortTarget::Value as i32;
        // "mm" ties keep key order in both directions.
        assert_eq!(
            keys(&evaluate_range(&s, &q).unwrap()),
            ["a", "c", "c/1", "d", "b"]
        );
        q.sort_target = SortTarget::Key as i32;
        assert_eq!(
            keys(&evaluate_range(&s, &q).unwrap()),
            ["d", "c/1", "c", "b", "a"]
        );
        q.sort_order = SortOrder::None as i32;
        assert_eq!(
            keys(&evaluate_range(&s, &q).unwrap()),
            ["a", "b", "c", "c/1", "d"]
        );
        q.sort_target = SortTarget::Version as i32;
        q.sort_order = SortOrder::Ascend as i32;
        assert_eq!(
            keys(&evaluate_range(&s, &q).unwrap()),
            ["b", "c/1", "d", "c", "a"]
        );
        q.sort_target = SortTarget::Create as i32;
        q.sort_order = SortOrder::Descend as i32;
        assert_eq!(
            keys(&evaluate_range(&s, &q).unwrap()),
            ["d", "c/1", "c", "b", "a"]
        );
    }

    #[test]
    fn revision_filters_do_not_change_count() {
        let s = snap();
        let mut q = req("a", b"\0");
        q.min_mod_revision = 5;
        q.max_mod_revision = 8;
        let r = evaluate_range(&s, &q).unwrap();
        assert_eq!(
            (keys(&r), r.count),
            (vec!["c".into(), "c/1".into(), "d".into()], 5)
        );
        let mut q = req("a", b"\0");
        q.min_create_revision = 3;
        q.max_create_revision = 5;
        q.limit = 1;
        let r = evaluate_range(&s, &q).unwrap();
        assert_eq!((keys(&r), r.more), (vec!["b".into()], true));
    }

    #[test]
    fn keys_only_and_errors() {
        let s = snap();
        let mut q = req("a", b"");
        q.keys_only = true;
        let r = evaluate_range(&s, &q).unwrap();
        assert!(r.kvs[0].value.is_empty() && r.kvs[0].mod_revision == 9);
        assert!(matches!(
            evaluate_range(&s, &req("", b"")),
            Err(CacheError::EmptyKey)
        ));
        let mut q = req("a", b"");
        q.revision = 3;
        assert!(matches!(
            evaluate_range(&s, &q),
            Err(CacheError::RevisionNotCached {
                requested: 3,
                cached: 9
            })
        ));
        q.revision = 9;
        assert!(evaluate_range(&s, &q).is_ok());
        q.sort_target = 9;
        assert!(matches!(
            evaluate_range(&s, &q),
            Err(CacheError::InvalidSortOption)
        ));
        // An unknown order is accepted and sorts nothing, as in etcd 3.4.
        let mut q = req("a", b"e");
        q.sort_order = 7;
        q.sort_target = SortTarget::Value as i32;
        q.limit = 2;
        let r = evaluate_range(&s, &q).unwrap();
        let keys: Vec<&[u8]> = r.kvs.iter().map(|kv| &kv.key[..]).collect();
        assert_eq!(keys, [&b"a"[..], b"b"]);
        assert!(r.more);
    }
}
