//! `Range` evaluated against a [`Snapshot`]: the snapshot decides which
//! pairs the range holds (the cache holds one revision), and
//! [`lookout_semantics::evaluate`] applies every option exactly as the store
//! does and etcd 3.4 does (count before filters, limit after sorting, ties
//! in Go's `sort.Sort` order). Pairs are borrowed from the snapshot; the
//! only copy is the response's.

use std::convert::Infallible;

use lookout_proto::mvccpb::KeyValue;
use lookout_proto::pb::{RangeRequest, RangeResponse, ResponseHeader};
use lookout_semantics::SemanticsError;

use crate::error::CacheError;
use crate::keys::KeyRange;
use crate::snapshot::Snapshot;

impl From<SemanticsError> for CacheError {
    fn from(e: SemanticsError) -> Self {
        match e {
            SemanticsError::EmptyKey => CacheError::EmptyKey,
            SemanticsError::InvalidSortOption => CacheError::InvalidSortOption,
        }
    }
}

/// Checks a request the way etcd's gRPC layer does before it reaches the
/// store.
///
/// # Errors
/// [`CacheError::EmptyKey`] for an empty key, [`CacheError::InvalidSortOption`]
/// for an unknown sort target.
pub fn validate_range(req: &RangeRequest) -> Result<(), CacheError> {
    Ok(lookout_semantics::validate_range(req)?)
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
    // With a filter the entries come from the index's map for the value:
    // the same ordered map shape, holding only the matches.
    let empty = imbl::OrdMap::new();
    let source = match &filter {
        None => snap.data(),
        Some(f) => snap.index_entries(f.index(), f.value()).unwrap_or(&empty),
    };
    Ok(evaluate_over(
        req,
        header,
        source.range::<_, [u8]>(range.bounds()).map(|(_, v)| &**v),
    ))
}

/// Evaluates `req`'s options over `entries`, the pairs in the range at one
/// revision, in key order.
pub(crate) fn evaluate_over<'a>(
    req: &RangeRequest,
    header: Option<ResponseHeader>,
    entries: impl Iterator<Item = &'a KeyValue>,
) -> RangeResponse {
    let sel = match lookout_semantics::evaluate(req, entries, Ok::<_, Infallible>) {
        Ok(sel) => sel,
        Err(never) => match never {},
    };
    RangeResponse {
        header,
        count: sel.count,
        more: sel.more,
        kvs: sel.into_kvs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use imbl::OrdMap;
    use lookout_proto::pb::range_request::{SortOrder, SortTarget};

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
