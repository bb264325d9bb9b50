//! [`Slots`]: a stream's watchers in dense slots, and [`IdHasher`], the
//! hasher for the integer-keyed maps on the delivery path.
//!
//! ```text
//!   by_id: watch id ──> slot      (requests: create, cancel, splice steps)
//!   slots: [w0][w1][  ][w3]...    (fan-out: a group's member slots, in order)
//! ```
//!
//! The fan-out visits every watcher of a group once per batch; with a
//! hash map keyed by watch id each visit was a probe into a scattered
//! table (a cache miss per watcher, the top cost in profiles at 5k
//! watchers). Groups now list slot numbers, so the visit walks memory
//! that was allocated together.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes integer keys with one multiply (Fibonacci hashing). Keys are
/// watch ids, group ids and slots: small, trusted, never attacker-chosen
/// in a way that matters (a client picking colliding watch ids only slows
/// its own stream).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }
}

/// A `HashMap` with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Watchers of one stream: values in slots, looked up by id or by slot.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    slots: Vec<Option<(i64, T)>>,
    free: Vec<u32>,
    by_id: IdMap<i64, u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            by_id: IdMap::default(),
        }
    }
}

impl<T> Slots<T> {
    /// Watchers held.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn contains_key(&self, id: &i64) -> bool {
        self.by_id.contains_key(id)
    }

    /// Inserts under a new id (the caller checked it is free); returns the slot.
    pub(crate) fn insert(&mut self, id: i64, v: T) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some((id, v));
                s
            }
            None => {
                self.slots.push(Some((id, v)));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    pub(crate) fn get_mut(&mut self, id: &i64) -> Option<&mut T> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot as usize].as_mut().map(|(_, v)| v)
    }

    /// The watcher in `slot` and its id.
    pub(crate) fn slot_mut(&mut self, slot: u32) -> Option<(i64, &mut T)> {
        self.slots
            .get_mut(slot as usize)?
            .as_mut()
            .map(|(id, v)| (*id, v))
    }

    /// Removes by id; returns the freed slot with the value.
    pub(crate) fn remove(&mut self, id: &i64) -> Option<(u32, T)> {
        let slot = self.by_id.remove(id)?;
        let (_, v) = self.slots[slot as usize].take()?;
        self.free.push(slot);
        Some((slot, v))
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (i64, T)> + '_ {
        self.by_id.clear();
        self.free.clear();
        self.slots.drain(..).flatten()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&i64, &T)> {
        self.slots.iter().flatten().map(|(id, v)| (id, v))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&i64, &mut T)> {
        self.slots.iter_mut().flatten().map(|(id, v)| (&*id, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_ids_stay_exact() {
        let mut s = Slots::default();
        let a = s.insert(10, "a");
        let b = s.insert(11, "b");
        assert_ne!(a, b);
        assert_eq!(s.remove(&10), Some((a, "a")));
        assert!(!s.contains_key(&10));
        assert_eq!(s.remove(&10), None);
        // The freed slot is reused under a new id.
        assert_eq!(s.insert(12, "c"), a);
        assert_eq!(s.slot_mut(a), Some((12, &mut "c")));
        assert_eq!(s.get_mut(&11), Some(&mut "b"));
        let mut all: Vec<i64> = s.iter().map(|(id, _)| *id).collect();
        all.sort_unstable();
        assert_eq!(all, vec![11, 12]);
        assert_eq!(s.drain().count(), 2);
        assert!(s.values().next().is_none());
    }
}
