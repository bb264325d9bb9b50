//! The key type of the cache's ordered maps: short keys stored inside the
//! map's nodes, long ones behind a shared buffer.
//!
//! Why not `Bytes`: a `Bytes` key is a pointer into whatever buffer the
//! upstream response was decoded from, so every comparison of a B-tree
//! search (about six per node, three nodes deep for 100k keys) touched a
//! different, cold cache line. Profiles of a gateway applying 1,000 writes/s
//! to 100k keys spent a third of their time in those comparisons. Inline,
//! the probes of one search read the node's own contiguous memory, and a
//! node's copy is a plain memcpy instead of one reference-count increment
//! per key. Keys longer than [`INLINE`] keep a shared buffer, as before.
//!
//! Ordering, equality and hashing are those of the key's bytes, and the
//! maps are searched with `&[u8]` (`Borrow<[u8]>`), so callers never build
//! a `MapKey` to look something up.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use imbl::OrdMap;
use lookout_proto::mvccpb::KeyValue;

/// The cache's ordered maps: key -> entry. Here, with the key, rather than
/// in `snapshot`: the secondary indexes hold such maps too, and the
/// snapshot holds the indexes.
pub type KvMap = OrdMap<MapKey, std::sync::Arc<KeyValue>>;

/// Longest key stored inline: with the length and the variant tag a key
/// is 40 bytes (a `Bytes` is 32). Measured (`index_memory` bench, 100k
/// entries): 54 bytes inline cost 50 B more per cached entry and 150 B more
/// per indexed entry (imbl's nodes have a fixed capacity, so small index
/// maps pay for empty slots) for no measurable gain on short keys; at 38
/// the cache grows by ~15 B per entry. Cilium's identity, IP and node keys
/// fit; longer Kubernetes and Calico keys take the shared path.
pub const INLINE: usize = 38;

/// A key of the cache's ordered maps (see the module docs).
#[derive(Clone)]
pub struct MapKey(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Shared(Bytes),
}

impl MapKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Shared(b) => b,
        }
    }

    /// The key as `Bytes` (a copy for inline keys).
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            Repr::Shared(b) => b.clone(),
        }
    }
}

impl From<&[u8]> for MapKey {
    fn from(k: &[u8]) -> Self {
        if k.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..k.len()].copy_from_slice(k);
            MapKey(Repr::Inline {
                len: k.len() as u8,
                buf,
            })
        } else {
            MapKey(Repr::Shared(Bytes::copy_from_slice(k)))
        }
    }
}

impl From<&Bytes> for MapKey {
    fn from(k: &Bytes) -> Self {
        if k.len() <= INLINE {
            MapKey::from(k.as_ref())
        } else {
            MapKey(Repr::Shared(k.clone()))
        }
    }
}

impl std::ops::Deref for MapKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for MapKey {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for MapKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for MapKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for MapKey {}

impl PartialOrd for MapKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MapKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

/// Hashes as the bytes do, as `Borrow<[u8]>` requires.
impl Hash for MapKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for MapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", Bytes::copy_from_slice(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_equality_are_the_bytes_whatever_the_storage() {
        let long = vec![b'a'; INLINE + 1];
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"ab".to_vec(),
            vec![b'a'; INLINE],
            long.clone(),
            [long.clone(), b"b".to_vec()].concat(),
            vec![0xff; 3],
        ];
        for a in &keys {
            let ka = MapKey::from(&Bytes::from(a.clone()));
            assert_eq!(ka.as_bytes(), &a[..]);
            assert_eq!(ka.to_bytes(), Bytes::from(a.clone()));
            for b in &keys {
                let kb = MapKey::from(&b[..]);
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b);
            }
        }
        assert_eq!(std::mem::size_of::<MapKey>(), 40);
    }

    #[test]
    fn a_map_is_searched_with_plain_slices() {
        let mut m = imbl::OrdMap::new();
        for k in [
            "/b",
            "/a",
            "/c/long/key/that/does/not/fit/in/fifty/four/bytes/at/all",
        ] {
            m.insert(MapKey::from(k.as_bytes()), k.len());
        }
        assert_eq!(m.get(&b"/a"[..]), Some(&2));
        let got: Vec<&[u8]> = m
            .range::<_, [u8]>((
                std::ops::Bound::Included(&b"/b"[..]),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k.as_bytes())
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], b"/b");
    }
}
