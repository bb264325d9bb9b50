//! Which watch groups does a key belong to? A stabbing index over the
//! groups' key intervals, so an event costs O(log segments + matches).
//!
//! Single keys go to a hash map. Every other interval's endpoints cut the
//! keyspace into elementary segments; each segment lists the groups covering
//! all of it. A lookup finds the segment holding the key (one B-tree
//! search) and returns its list:
//!
//! ```text
//!   groups:   [a, c)  [b, ∞)  [a, b)
//!   segments: a:{1,3}  b:{1,2}  c:{2}
//!   key "bb" -> segment b -> {1, 2}
//! ```
//!
//! A boundary is reference-counted by the intervals that start or end at it;
//! when the last one goes, its segment merges into the previous one (their
//! lists are then equal by construction).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bytes::Bytes;

use crate::keys::KeyRange;

pub(crate) type GroupId = u64;

#[derive(Debug, Default)]
pub(crate) struct GroupIndex {
    /// Segment start -> groups covering `[start, next start)`.
    segments: BTreeMap<Bytes, Vec<GroupId>>,
    /// Boundary -> intervals that start or end there.
    boundary_refs: HashMap<Bytes, usize>,
    /// Single-key groups: the common exact-key watch costs one hash lookup.
    exact: HashMap<Bytes, Vec<GroupId>>,
}

const NONE: &[GroupId] = &[];

impl GroupIndex {
    pub(crate) fn insert(&mut self, range: &KeyRange, id: GroupId) {
        if range.is_empty() {
            return;
        }
        if let Some(k) = range.single_key() {
            self.exact.entry(k.clone()).or_default().push(id);
            return;
        }
        self.add_boundary(range.start());
        if let Some(e) = range.end() {
            self.add_boundary(e);
        }
        for (_, groups) in self.segments.range_mut::<[u8], _>(bounds(range)) {
            groups.push(id);
        }
    }

    pub(crate) fn remove(&mut self, range: &KeyRange, id: GroupId) {
        if range.is_empty() {
            return;
        }
        if let Some(k) = range.single_key() {
            if let Some(v) = self.exact.get_mut(k.as_ref()) {
                v.retain(|g| *g != id);
                if v.is_empty() {
                    self.exact.remove(k.as_ref());
                }
            }
            return;
        }
        for (_, groups) in self.segments.range_mut::<[u8], _>(bounds(range)) {
            groups.retain(|g| *g != id);
        }
        self.drop_boundary(range.start());
        if let Some(e) = range.end() {
            self.drop_boundary(e);
        }
    }

    /// Groups whose interval holds `key` (single-key groups first).
    pub(crate) fn stab<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = GroupId> + 'a {
        let exact = self.exact.get(key).map_or(NONE, Vec::as_slice);
        let seg = self
            .segments
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map_or(NONE, |(_, g)| g.as_slice());
        exact.iter().chain(seg.iter()).copied()
    }

    /// True when no group is left in it.
    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.segments.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn add_boundary(&mut self, at: &Bytes) {
        *self.boundary_refs.entry(at.clone()).or_insert(0) += 1;
        if !self.segments.contains_key(at.as_ref()) {
            // The new segment starts with the groups covering its left
            // neighbour: every one of them still covers the split-off part.
            let inherited = self
                .segments
                .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(at.as_ref())))
                .next_back()
                .map(|(_, g)| g.clone())
                .unwrap_or_default();
            self.segments.insert(at.clone(), inherited);
        }
    }

    fn drop_boundary(&mut self, at: &Bytes) {
        let Some(n) = self.boundary_refs.get_mut(at.as_ref()) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.boundary_refs.remove(at.as_ref());
            self.segments.remove(at.as_ref());
        }
    }
}

fn bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (
        Bound::Included(range.start().as_ref()),
        match range.end() {
            Some(e) => Bound::Excluded(e.as_ref()),
            None => Bound::Unbounded,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn hits(ix: &GroupIndex, key: &str) -> Vec<GroupId> {
        let mut v: Vec<_> = ix.stab(key.as_bytes()).collect();
        v.sort();
        v
    }

    #[test]
    fn prefix_exact_range_and_from_key() {
        let mut ix = GroupIndex::default();
        let prefix = KeyRange::prefix(b("/pods/"));
        let exact = KeyRange::from_request(&b("/pods/a"), &Bytes::new());
        let range = KeyRange::new(b("/pods/b"), Some(b("/pods/d")));
        let from = KeyRange::from_request(&b("/pods/c"), &Bytes::from_static(&[0]));
        let all = KeyRange::all();
        for (i, r) in [&prefix, &exact, &range, &from, &all]
            .into_iter()
            .enumerate()
        {
            ix.insert(r, i as GroupId);
        }
        assert_eq!(hits(&ix, "/pods/a"), [0, 1, 4]);
        assert_eq!(hits(&ix, "/pods/a0"), [0, 4]);
        assert_eq!(hits(&ix, "/pods/b"), [0, 2, 4]);
        assert_eq!(hits(&ix, "/pods/c"), [0, 2, 3, 4]);
        assert_eq!(hits(&ix, "/pods/d"), [0, 3, 4]);
        assert_eq!(hits(&ix, "/pods0"), [3, 4]);
        assert_eq!(hits(&ix, "/a"), [4]);
        assert_eq!(hits(&ix, ""), [4]);

        ix.remove(&range, 2);
        assert_eq!(hits(&ix, "/pods/c"), [0, 3, 4]);
        ix.remove(&exact, 1);
        assert_eq!(hits(&ix, "/pods/a"), [0, 4]);
        ix.remove(&prefix, 0);
        ix.remove(&from, 3);
        assert_eq!(hits(&ix, "/pods/c"), [4]);
        ix.remove(&all, 4);
        assert_eq!(hits(&ix, "/pods/c"), Vec::<GroupId>::new());
        assert_eq!(
            ix.segment_count(),
            0,
            "boundaries are released with their groups"
        );
    }

    #[test]
    fn shared_boundaries_and_nesting() {
        let mut ix = GroupIndex::default();
        let outer = KeyRange::prefix(b("a"));
        let inner = KeyRange::prefix(b("ab"));
        let sibling = KeyRange::new(b("b"), Some(b("c"))); // starts where `outer` ends
        ix.insert(&outer, 1);
        ix.insert(&inner, 2);
        ix.insert(&sibling, 3);
        assert_eq!(hits(&ix, "aa"), [1]);
        assert_eq!(hits(&ix, "abz"), [1, 2]);
        assert_eq!(hits(&ix, "ac"), [1]);
        assert_eq!(hits(&ix, "b"), [3]);
        ix.remove(&outer, 1);
        assert_eq!(hits(&ix, "abz"), [2]);
        assert_eq!(hits(&ix, "b"), [3]);
        assert_eq!(hits(&ix, "aa"), Vec::<GroupId>::new());
        ix.insert(&outer, 4);
        assert_eq!(hits(&ix, "abz"), [2, 4]);
    }

    /// Random intervals against a brute-force scan.
    #[test]
    fn matches_brute_force() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let key = |r: u64| Bytes::from(format!("k{:02}", r));
        let mut ix = GroupIndex::default();
        let mut live: Vec<(GroupId, KeyRange)> = Vec::new();
        for id in 0..400u64 {
            if !live.is_empty() && rnd(3) == 0 {
                let (gid, r) = live.swap_remove(rnd(live.len() as u64) as usize);
                ix.remove(&r, gid);
            }
            let r = match rnd(4) {
                0 => KeyRange::from_request(&key(rnd(40)), &Bytes::new()),
                1 => KeyRange::prefix(key(rnd(40))),
                2 => KeyRange::from_request(&key(rnd(40)), &Bytes::from_static(&[0])),
                _ => KeyRange::new(key(rnd(40)), Some(key(rnd(40)))),
            };
            ix.insert(&r, id);
            live.push((id, r));
            for probe in 0..42 {
                let k = key(probe);
                let mut want: Vec<GroupId> = live
                    .iter()
                    .filter(|(_, r)| r.contains(&k))
                    .map(|(g, _)| *g)
                    .collect();
                want.sort();
                let mut got: Vec<GroupId> = ix.stab(&k).collect();
                got.sort();
                assert_eq!(got, want, "key {probe}");
            }
        }
    }
}
