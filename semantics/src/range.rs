//! etcd 3.4's Range, option for option (`etcdserver/apply.go` `Range` and
//! `mvcc/kvstore_txn.go` `rangeKeys`), over any source of pairs:
//!
//! - `count` is the number of keys in the range at the read revision,
//!   before the min/max revision filters prune anything and whatever the
//!   `limit`;
//! - pairs are read only when needed: none for `count_only`, one more than
//!   `limit` when the result is neither sorted nor filtered (to learn
//!   `more`), all of them otherwise;
//! - `limit` applies after filtering and sorting; `more` says it cut;
//! - a non-`KEY` sort target with `sort_order = NONE` sorts ascending; an
//!   unknown `sort_order` reads everything but sorts nothing (etcd 3.4);
//! - ties under a non-key target come out in the order Go's `sort.Sort`
//!   leaves them ([`crate::gosort`]), descending through `sort.Reverse`;
//! - `keys_only` clears values, `count_only` returns no pairs.
//!
//! The caller decides which keys the range holds at which revision (the
//! key span and `revision` of the request are its business) and hands
//! them over in key order as cheap handles, with a `load` that turns a
//! handle into its pair. So the store's historic reads (a redb lookup
//! that can fail) happen lazily and only for the pairs the answer needs,
//! while the cache's and the store's current reads borrow their pairs and
//! copy nothing until the caller builds its response from the
//! [`Selection`].

use lookout_proto::mvccpb::KeyValue;
use lookout_proto::pb::RangeRequest;
use lookout_proto::pb::range_request::{SortOrder, SortTarget};

use crate::error::SemanticsError;
use crate::gosort;

/// Checks a request the way etcd's gRPC layer does before it reaches the
/// store.
///
/// # Errors
/// [`SemanticsError::EmptyKey`] for an empty key,
/// [`SemanticsError::InvalidSortOption`] for an unknown sort target: etcd
/// 3.4 dereferences a nil sorter on one (and crashes), so it is refused
/// with the answer etcd 3.5 gives.
pub fn validate_range(req: &RangeRequest) -> Result<(), SemanticsError> {
    if req.key.is_empty() {
        return Err(SemanticsError::EmptyKey);
    }
    // An unknown sort *order* is accepted, as etcd 3.4 does (it then sorts
    // nothing).
    if SortTarget::try_from(req.sort_target).is_err() {
        return Err(SemanticsError::InvalidSortOption);
    }
    Ok(())
}

/// A pair as the evaluation sees it: sorting and filtering read it through
/// [`RangeEntry::kv`], the caller's response takes it by
/// [`RangeEntry::into_kv`] (or reads whatever else the entry carries, such
/// as the store's stored encoding).
pub trait RangeEntry {
    fn kv(&self) -> &KeyValue;

    /// The pair for a response: a move for an owned pair, one clone for a
    /// borrowed one.
    fn into_kv(self) -> KeyValue;
}

impl RangeEntry for KeyValue {
    fn kv(&self) -> &KeyValue {
        self
    }

    fn into_kv(self) -> KeyValue {
        self
    }
}

impl RangeEntry for &KeyValue {
    fn kv(&self) -> &KeyValue {
        self
    }

    fn into_kv(self) -> KeyValue {
        self.clone()
    }
}

/// What a Range answers, before the caller adds a header: the chosen
/// entries in answer order, `count` and `more`.
#[derive(Debug)]
pub struct Selection<E> {
    /// In the order the response lists them; empty for `count_only`.
    pub entries: Vec<E>,
    /// Keys in the range at the read revision (etcd's `count`).
    pub count: i64,
    /// Whether `limit` left entries out.
    pub more: bool,
    /// The request's `keys_only`: [`Selection::into_kvs`] clears values.
    pub keys_only: bool,
}

impl<E: RangeEntry> Selection<E> {
    /// The response's pairs (values cleared for `keys_only`).
    pub fn into_kvs(self) -> Vec<KeyValue> {
        let keys_only = self.keys_only;
        self.entries
            .into_iter()
            .map(|e| {
                let mut kv = e.into_kv();
                if keys_only {
                    kv.value = bytes::Bytes::new();
                }
                kv
            })
            .collect()
    }
}

/// Evaluates `req`'s options over `entries`: one handle per key present in
/// the range at the read revision, in key order. `load` reads a handle's
/// pair; it is called only for the pairs the answer needs (see the module
/// doc), in key order, and its first error ends the evaluation.
///
/// # Errors
/// The first error `load` returns.
pub fn evaluate<H, E, X>(
    req: &RangeRequest,
    entries: impl IntoIterator<Item = H>,
    mut load: impl FnMut(H) -> Result<E, X>,
) -> Result<Selection<E>, X>
where
    E: RangeEntry,
{
    let mut it = entries.into_iter();
    if req.count_only {
        return Ok(Selection {
            entries: Vec::new(),
            count: it.count() as i64,
            more: false,
            keys_only: req.keys_only,
        });
    }
    let order = SortOrder::try_from(req.sort_order);
    let unknown_order = order.is_err();
    let order = order.unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // As etcd: read every pair when the result will be sorted or filtered
    // (etcd tests `sort_order != NONE`, so an unknown order counts),
    // otherwise one more than the limit, to learn `more`.
    let fetch = if order != SortOrder::None || unknown_order || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        req.limit as usize + 1
    };
    // Sized up front when the source knows its length (a slice, a map):
    // growing a 10k-entry vector step by step costs a few percent.
    let mut kept = Vec::with_capacity(it.size_hint().0.min(fetch));
    for h in it.by_ref().take(fetch) {
        kept.push(load(h)?);
    }
    // The rest are counted, never read.
    let count = kept.len() + it.count();

    if filtered {
        kept.retain(|e| {
            let kv = e.kv();
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
    sort(&mut kept, target, order);

    let mut more = false;
    if req.limit > 0 && kept.len() > req.limit as usize {
        kept.truncate(req.limit as usize);
        more = true;
    }
    Ok(Selection {
        entries: kept,
        count: count as i64,
        more,
        keys_only: req.keys_only,
    })
}

/// etcd's sort: `sort.Sort(sorter)` ascending, `sort.Sort(sort.Reverse(sorter))`
/// descending. Keys are unique, so under the KEY target every correct sort
/// of key-ordered input gives the same answer and the work is skipped
/// (ascending) or a reversal (descending); every other target has ties,
/// which land where Go's algorithm puts them.
fn sort<E: RangeEntry>(kept: &mut [E], target: SortTarget, order: SortOrder) {
    let less = move |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key < b.key,
        SortTarget::Version => a.version < b.version,
        SortTarget::Create => a.create_revision < b.create_revision,
        SortTarget::Mod => a.mod_revision < b.mod_revision,
        SortTarget::Value => a.value < b.value,
    };
    match (order, target) {
        (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key) => {}
        (SortOrder::Descend, SortTarget::Key) => kept.reverse(),
        (SortOrder::Ascend, _) => gosort::sort(kept, |a, b| less(a.kv(), b.kv())),
        // sort.Reverse: Less(i, j) is the sorter's Less(j, i).
        (SortOrder::Descend, _) => gosort::sort(kept, |a, b| less(b.kv(), a.kv())),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;

    use super::*;

    /// key, create, mod, version, value
    fn pairs() -> Vec<KeyValue> {
        [
            ("a", 2, 9, 3, "zz"),
            ("b", 3, 3, 1, "aa"),
            ("c", 4, 8, 2, "mm"),
            ("c/1", 5, 5, 1, "mm"),
            ("d", 6, 6, 1, "bb"),
        ]
        .into_iter()
        .map(|(k, c, md, ver, v)| KeyValue {
            key: Bytes::copy_from_slice(k.as_bytes()),
            create_revision: c,
            mod_revision: md,
            version: ver,
            value: Bytes::copy_from_slice(v.as_bytes()),
            lease: 0,
        })
        .collect()
    }

    fn run(req: &RangeRequest) -> (Vec<String>, i64, bool) {
        let data = pairs();
        let sel = evaluate(req, &data, Ok::<_, Infallible>).unwrap();
        let keys = sel
            .entries
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        (keys, sel.count, sel.more)
    }

    fn keys(req: &RangeRequest) -> Vec<String> {
        run(req).0
    }

    fn all() -> RangeRequest {
        RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        }
    }

    #[test]
    fn limit_count_more() {
        let mut q = all();
        q.limit = 2;
        assert_eq!(run(&q), (vec!["a".into(), "b".into()], 5, true));
        q.limit = 5;
        assert!(!run(&q).2);
        q.count_only = true;
        assert_eq!(run(&q), (vec![], 5, false));
    }

    #[test]
    fn sorting_like_etcd() {
        let mut q = all();
        q.sort_target = SortTarget::Mod as i32; // NONE + non-key target => ascend
        assert_eq!(keys(&q), ["b", "c/1", "d", "c", "a"]);
        q.sort_order = SortOrder::Descend as i32;
        q.limit = 2;
        assert_eq!(run(&q), (vec!["a".into(), "c".into()], 5, true));
        q.limit = 0;
        q.sort_target = SortTarget::Value as i32;
        // "mm" ties keep key order in both directions (insertion sort).
        assert_eq!(keys(&q), ["a", "c", "c/1", "d", "b"]);
        q.sort_target = SortTarget::Key as i32;
        assert_eq!(keys(&q), ["d", "c/1", "c", "b", "a"]);
        q.sort_order = SortOrder::None as i32;
        assert_eq!(keys(&q), ["a", "b", "c", "c/1", "d"]);
        q.sort_target = SortTarget::Version as i32;
        q.sort_order = SortOrder::Ascend as i32;
        assert_eq!(keys(&q), ["b", "c/1", "d", "c", "a"]);
        q.sort_target = SortTarget::Create as i32;
        q.sort_order = SortOrder::Descend as i32;
        assert_eq!(keys(&q), ["d", "c/1", "c", "b", "a"]);
    }

    #[test]
    fn revision_filters_do_not_change_count() {
        let mut q = all();
        q.min_mod_revision = 5;
        q.max_mod_revision = 8;
        assert_eq!(
            run(&q),
            (vec!["c".into(), "c/1".into(), "d".into()], 5, false)
        );
        let mut q = all();
        q.min_create_revision = 3;
        q.max_create_revision = 5;
        q.limit = 1;
        assert_eq!(run(&q), (vec!["b".into()], 5, true));
    }

    #[test]
    fn keys_only_and_unknown_options() {
        let data = pairs();
        let mut q = all();
        q.keys_only = true;
        q.limit = 1;
        let kvs = evaluate(&q, &data, Ok::<_, Infallible>).unwrap().into_kvs();
        assert_eq!(kvs.len(), 1);
        assert!(kvs[0].value.is_empty() && kvs[0].mod_revision == 9);
        // An unknown order reads everything and sorts nothing (etcd 3.4).
        let mut q = all();
        q.sort_order = 7;
        q.sort_target = SortTarget::Value as i32;
        q.limit = 2;
        assert_eq!(run(&q), (vec!["a".into(), "b".into()], 5, true));
        assert_eq!(
            validate_range(&RangeRequest {
                sort_target: 9,
                ..all()
            }),
            Err(SemanticsError::InvalidSortOption)
        );
        assert_eq!(
            validate_range(&RangeRequest::default()),
            Err(SemanticsError::EmptyKey)
        );
        assert_eq!(
            validate_range(&RangeRequest {
                sort_order: 7,
                ..all()
            }),
            Ok(())
        );
    }

    /// Pairs are read only when the answer needs them, and a failed read
    /// ends the evaluation.
    #[test]
    fn loads_lazily_and_stops_at_the_first_error() {
        let data = pairs();
        let mut loaded = Vec::new();
        let mut q = all();
        q.limit = 2;
        let sel = evaluate(&q, 0..data.len(), |i| {
            loaded.push(i);
            Ok::<_, Infallible>(&data[i])
        })
        .unwrap();
        assert_eq!(
            (sel.count, sel.more, loaded.clone()),
            (5, true, vec![0, 1, 2])
        );
        loaded.clear();
        q.count_only = true;
        let sel = evaluate(&q, 0..data.len(), |i| {
            loaded.push(i);
            Ok::<_, Infallible>(&data[i])
        })
        .unwrap();
        assert_eq!((sel.count, loaded.len()), (5, 0));
        let q = RangeRequest {
            sort_target: SortTarget::Value as i32,
            ..all()
        };
        let r = evaluate(&q, 0..data.len(), |i| {
            if i == 3 { Err("gone") } else { Ok(&data[i]) }
        });
        assert_eq!(r.unwrap_err(), "gone");
    }
}
