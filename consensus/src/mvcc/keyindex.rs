//! The in-memory key index, as etcd's `keyIndex`: for each key the list of
//! its generations (create .. tombstone), each a list of revisions, plus the
//! live value so current-revision reads never touch the disk.
//!
//! Revisions are held in `imbl::Vector` so that cloning an entry for a new
//! snapshot is O(1) even for a key written a million times.

use bytes::Bytes;
use lookout_proto::mvccpb::KeyValue;
use prost::Message;

use crate::mvcc::revision::Revision;

/// A key's current pair, kept both decoded and as its protobuf encoding.
/// The decoded fields are zero-copy slices of `encoded` (prost decodes
/// `bytes` fields from a `Bytes` by reference), so the value is held once;
/// `encoded` is what goes to redb and, unchanged, into range responses.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveKv {
    pub kv: KeyValue,
    pub encoded: Bytes,
}

impl LiveKv {
    pub fn new(kv: &KeyValue) -> Self {
        Self::from_encoded(Bytes::from(kv.encode_to_vec())).expect("a pair we just encoded decodes")
    }

    /// # Errors
    /// The bytes are not a protobuf `KeyValue`.
    pub fn from_encoded(encoded: Bytes) -> Result<Self, prost::DecodeError> {
        let kv = KeyValue::decode(encoded.clone())?;
        Ok(Self { kv, encoded })
    }
}

/// One life of a key: from its creation to its tombstone (if closed).
#[derive(Clone, Debug)]
pub struct Generation {
    /// Revision of the put that created the key in this generation.
    pub created: Revision,
    /// Every revision of this generation in order; when the generation is
    /// closed the last one is the tombstone.
    pub revs: imbl::Vector<Revision>,
    /// Whether the last revision is a tombstone.
    pub closed: bool,
}

/// Everything the store keeps in memory about one key.
#[derive(Clone, Debug, Default)]
pub struct KeyIndex {
    /// Oldest first; never holds an empty generation.
    pub generations: Vec<Generation>,
    /// The current pair, `None` when the key is deleted now.
    pub live: Option<LiveKv>,
}

impl KeyIndex {
    /// Records a put at `rev` whose resulting pair is `kv`.
    pub fn put(&mut self, rev: Revision, kv: LiveKv) {
        match self.generations.last_mut() {
            Some(g) if !g.closed => g.revs.push_back(rev),
            _ => {
                let mut revs = imbl::Vector::new();
                revs.push_back(rev);
                self.generations.push(Generation {
                    created: rev,
                    revs,
                    closed: false,
                });
            }
        }
        self.live = Some(kv);
    }

    /// Records a delete at `rev`. The caller only deletes live keys.
    pub fn tombstone(&mut self, rev: Revision) {
        if let Some(g) = self.generations.last_mut()
            && !g.closed
        {
            g.revs.push_back(rev);
            g.closed = true;
        }
        self.live = None;
    }

    /// The revision holding the key's value as of main revision `at`, or
    /// `None` when the key did not exist then (never created or deleted).
    pub fn revision_at(&self, at: i64) -> Option<Revision> {
        let g = self
            .generations
            .iter()
            .rev()
            .find(|g| g.created.main <= at)?;
        // Index of the last revision <= at.
        let idx = partition_point(&g.revs, |r| r.main <= at);
        if idx == 0 {
            return None;
        }
        if g.closed && idx == g.revs.len() {
            // The tombstone is at or before `at`: deleted then.
            return None;
        }
        Some(g.revs[idx - 1])
    }

    /// Compacts history at main revision `at` as etcd does: for each key
    /// only the revision visible at `at` survives among those <= `at`, and a
    /// generation that ended in a tombstone <= `at` disappears completely.
    /// Pushes every dropped revision to `removed`; returns true when nothing
    /// is left (the key can leave the index).
    pub fn compact(&mut self, at: i64, removed: &mut Vec<Revision>) -> bool {
        let mut keep = Vec::with_capacity(self.generations.len());
        for mut g in std::mem::take(&mut self.generations) {
            let last = *g.revs.back().expect("generations are never empty");
            if g.closed && last.main <= at {
                removed.extend(g.revs.iter().copied());
                continue;
            }
            let idx = partition_point(&g.revs, |r| r.main <= at);
            if idx > 1 {
                let tail = g.revs.split_off(idx - 1);
                removed.extend(g.revs.iter().copied());
                g.revs = tail;
            }
            keep.push(g);
        }
        self.generations = keep;
        self.generations.is_empty()
    }
}

/// `imbl::Vector` has no `partition_point`; a binary search over indices.
fn partition_point(v: &imbl::Vector<Revision>, pred: impl Fn(&Revision) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, v.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if pred(&v[mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(rev: i64) -> LiveKv {
        LiveKv::new(&KeyValue {
            key: "k".into(),
            mod_revision: rev,
            ..Default::default()
        })
    }

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn revision_at_follows_generations() {
        let mut ki = KeyIndex::default();
        ki.put(r(2), kv(2));
        ki.put(r(4), kv(4));
        ki.tombstone(r(6));
        ki.put(r(8), kv(8));
        assert_eq!(ki.revision_at(1), None);
        assert_eq!(ki.revision_at(2), Some(r(2)));
        assert_eq!(ki.revision_at(3), Some(r(2)));
        assert_eq!(ki.revision_at(5), Some(r(4)));
        assert_eq!(ki.revision_at(6), None);
        assert_eq!(ki.revision_at(7), None);
        assert_eq!(ki.revision_at(8), Some(r(8)));
        assert_eq!(ki.revision_at(100), Some(r(8)));
    }

    #[test]
    fn compact_keeps_visible_revision_and_drops_dead_generations() {
        let mut ki = KeyIndex::default();
        ki.put(r(2), kv(2));
        ki.put(r(4), kv(4));
        ki.tombstone(r(6));
        ki.put(r(8), kv(8));
        ki.put(r(10), kv(10));
        let mut removed = vec![];
        assert!(!ki.compact(9, &mut removed));
        assert_eq!(removed, vec![r(2), r(4), r(6)]);
        assert_eq!(ki.generations.len(), 1);
        assert_eq!(ki.revision_at(9), Some(r(8)));
        assert_eq!(ki.revision_at(10), Some(r(10)));

        let mut ki = KeyIndex::default();
        ki.put(r(2), kv(2));
        ki.tombstone(r(3));
        let mut removed = vec![];
        assert!(ki.compact(3, &mut removed));
        assert_eq!(removed, vec![r(2), r(3)]);
    }
}
