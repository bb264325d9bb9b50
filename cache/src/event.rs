//! One upstream event, encoded once and shared by the history ring and every
//! watcher that receives it.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::secondary::IndexSet;

/// `WatchResponse.events` is field 11, length-delimited: key byte `11<<3|2`.
pub(crate) const EVENTS_FIELD_KEY: u8 = (11 << 3) | 2;

/// Put or delete, as `mvccpb.Event.EventType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

impl EventKind {
    /// From `mvccpb.Event.type`: anything but DELETE is a PUT.
    pub(crate) fn from_i32(v: i32) -> Self {
        if v == EventType::Delete as i32 {
            Self::Delete
        } else {
            Self::Put
        }
    }

    fn as_i32(self) -> i32 {
        match self {
            Self::Put => EventType::Put as i32,
            Self::Delete => EventType::Delete as i32,
        }
    }
}

/// An upstream event with its wire form computed at most once.
///
/// The event holds the entry (shared with the cache's map) and the entry it
/// replaced; the wire form is built the first time a watcher needs it and
/// then shared, so an event no watcher receives (a gateway whose watchers
/// are all filtered elsewhere, or have none) costs no encoding and no copy
/// of its key and value.
///
/// The body holds the `mvccpb.Event` fields `type`, `kv` and then `prev_kv`.
/// Because protobuf messages are a concatenation of fields, the body cut
/// before `prev_kv` is the event without it; each variant only needs its own
/// `events` field header (tag + length), written on the fly. So both
/// variants a watch asks for exist without storing the key and value twice:
///
/// ```text
///   head_plain = [0x5a, len(type+kv)]          body = [type][kv][prev_kv]
///   head_prev  = [0x5a, len(type+kv+prev_kv)]         |<- plain ->|
/// ```
#[derive(Debug)]
pub struct CachedEvent {
    kind: EventKind,
    kv: Arc<KeyValue>,
    prev: Option<Arc<KeyValue>>,
    /// Length of the body without, and with, the `prev_kv` field: known up
    /// front (byte budgets need them), without encoding.
    plain_len: u32,
    full_len: u32,
    /// The wire form, built on first use.
    body: OnceLock<Bytes>,
    /// Other encodings front ends derive from the event (the HTTP layer's
    /// JSON), built on first use and then shared by every watcher. Boxed so
    /// an event nobody reads over HTTP pays one pointer.
    derived: OnceLock<Box<[OnceLock<Bytes>; DERIVED_SLOTS]>>,
    /// The secondary indexes' view of the event (only when indexes are
    /// declared): boxed so a cache without indexes pays one pointer.
    index: Option<Box<EventIndex>>,
}

/// What the secondary indexes say about one event, computed once by the
/// applier (or a splice task) and read by every filtered group.
#[derive(Debug)]
pub(crate) struct EventIndex {
    /// Per declared index: the entry's value before the event (from the
    /// previous entry) and after it (`None` after a delete).
    values: Box<[(Option<Bytes>, Option<Bytes>)]>,
    /// For a Put that moves the entry away from an index value: the DELETE
    /// that watchers filtered on the old value receive (key, this revision,
    /// `prev_kv` = the old entry), shared like any event.
    moved_out: Option<Arc<CachedEvent>>,
}

/// How many derived encodings an event can hold ([`CachedEvent::derived`]).
pub const DERIVED_SLOTS: usize = 3;

/// `mvccpb.Event.type` is field 1: a DELETE (1) is written as tag + value,
/// a PUT (0, proto3's default) not at all.
const DELETE_TYPE_FIELD: [u8; 2] = [1 << 3, 1];

impl CachedEvent {
    /// The event for `kv` (as the upstream sent it) with the previous value
    /// the cache knew for that key (`None` for a create, or when the cache
    /// has none). Copies `kv` and `prev` into shared entries; the applier,
    /// which has them shared already, uses [`CachedEvent::shared`].
    pub fn new(kind: EventKind, kv: &KeyValue, prev: Option<&KeyValue>) -> Self {
        Self::shared(
            kind,
            Arc::new(kv.clone()),
            prev.map(|p| Arc::new(p.clone())),
        )
    }

    /// [`CachedEvent::new`] on entries already shared (with the map).
    pub fn shared(kind: EventKind, kv: Arc<KeyValue>, prev: Option<Arc<KeyValue>>) -> Self {
        let type_len = match kind {
            EventKind::Put => 0,
            EventKind::Delete => DELETE_TYPE_FIELD.len(),
        };
        let plain_len = type_len + prost::encoding::message::encoded_len(2, &*kv);
        let full_len = plain_len
            + prev
                .as_deref()
                .map_or(0, |p| prost::encoding::message::encoded_len(3, p));
        Self {
            kind,
            kv,
            prev,
            plain_len: plain_len as u32,
            full_len: full_len as u32,
            body: OnceLock::new(),
            derived: OnceLock::new(),
            index: None,
        }
    }

    fn body(&self) -> &Bytes {
        self.body.get_or_init(|| {
            let mut b = BytesMut::with_capacity(self.full_len as usize);
            if self.kind == EventKind::Delete {
                b.put_slice(&DELETE_TYPE_FIELD);
            }
            prost::encoding::message::encode(2, &*self.kv, &mut b);
            if let Some(p) = &self.prev {
                prost::encoding::message::encode(3, &**p, &mut b);
            }
            debug_assert_eq!(b.len(), self.full_len as usize);
            b.freeze()
        })
    }

    /// [`CachedEvent::new`] plus every declared index's value before and
    /// after the event, and the DELETE filtered watchers get when the entry
    /// moves away from their value.
    pub fn indexed(
        kind: EventKind,
        kv: Arc<KeyValue>,
        prev: Option<Arc<KeyValue>>,
        set: &IndexSet,
    ) -> Self {
        if set.is_empty() {
            return Self::shared(kind, kv, prev);
        }
        let old = set.values(prev.as_deref());
        let new = match kind {
            EventKind::Put => set.values(Some(&kv)),
            EventKind::Delete => vec![None; old.len()],
        };
        let moves =
            kind == EventKind::Put && old.iter().zip(&new).any(|(o, n)| o.is_some() && o != n);
        let moved_out = moves.then(|| {
            let tombstone = KeyValue {
                key: kv.key.clone(),
                mod_revision: kv.mod_revision,
                ..Default::default()
            };
            Arc::new(Self::shared(
                EventKind::Delete,
                Arc::new(tombstone),
                prev.clone(),
            ))
        });
        let mut ev = Self::shared(kind, kv, prev);
        ev.index = Some(Box::new(EventIndex {
            values: old.into_iter().zip(new).collect(),
            moved_out,
        }));
        ev
    }

    /// [`CachedEvent::from_event`] with the indexes' view (splice watches,
    /// which ask the store for `prev_kv` so the old value is known).
    pub fn from_event_indexed(ev: &Event, set: &IndexSet) -> Self {
        let kv = ev.kv.clone().unwrap_or_default();
        Self::indexed(
            EventKind::from_i32(ev.r#type),
            Arc::new(kv),
            ev.prev_kv.clone().map(Arc::new),
            set,
        )
    }

    /// Index `i`'s value before and after this event (both `None` without
    /// indexes).
    pub(crate) fn index_values(&self, i: usize) -> (Option<&Bytes>, Option<&Bytes>) {
        match self.index.as_ref().and_then(|x| x.values.get(i)) {
            Some((o, n)) => (o.as_ref(), n.as_ref()),
            None => (None, None),
        }
    }

    /// Every index's (before, after) values, in declaration order.
    pub(crate) fn all_index_values(&self) -> &[(Option<Bytes>, Option<Bytes>)] {
        self.index.as_ref().map_or(&[], |x| &x.values)
    }

    /// The DELETE a watcher filtered on this entry's old value receives
    /// (see [`EventIndex::moved_out`]).
    pub(crate) fn moved_out(&self) -> Option<&Arc<CachedEvent>> {
        self.index.as_ref()?.moved_out.as_ref()
    }

    /// Builds from an `mvccpb.Event` as a watch delivers it, keeping its
    /// `prev_kv` (used for events an upstream splice watch delivers).
    pub fn from_event(ev: &Event) -> Self {
        Self::shared(
            EventKind::from_i32(ev.r#type),
            Arc::new(ev.kv.clone().unwrap_or_default()),
            ev.prev_kv.clone().map(Arc::new),
        )
    }

    /// The event's `mod_revision` (for a delete, the revision of the delete).
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    pub fn key(&self) -> &Bytes {
        &self.kv.key
    }

    /// The entry this event replaced or deleted, as the cache knew it.
    pub fn prev_kv(&self) -> Option<&KeyValue> {
        self.prev.as_deref()
    }

    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// Bytes this event adds to a `WatchResponse` (field header included).
    pub fn encoded_len(&self, prev_kv: bool) -> usize {
        let len = self.body_len(prev_kv);
        1 + encoded_len_varint(len as u64) + len
    }

    fn body_len(&self, prev_kv: bool) -> usize {
        if prev_kv {
            self.full_len as usize
        } else {
            self.plain_len as usize
        }
    }

    /// Writes the `events` field (tag, length, `mvccpb.Event`) as it appears
    /// inside a `WatchResponse`: the field header and the shared body, which
    /// the first caller encodes and every later one copies.
    pub fn write_to(&self, prev_kv: bool, buf: &mut impl BufMut) {
        let len = self.body_len(prev_kv);
        buf.put_u8(EVENTS_FIELD_KEY);
        encode_varint(len as u64, buf);
        buf.put_slice(&self.body()[..len]);
    }

    /// The encoded `events` field as one buffer (copies; for tests and
    /// callers that need contiguous bytes).
    pub fn encoded(&self, prev_kv: bool) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len(prev_kv));
        self.write_to(prev_kv, &mut b);
        b.freeze()
    }

    /// The event as a message (front ends that encode it another way,
    /// tests).
    pub fn to_event(&self, prev_kv: bool) -> Event {
        Event {
            r#type: self.kind.as_i32(),
            kv: Some((*self.kv).clone()),
            prev_kv: if prev_kv {
                self.prev.as_deref().cloned()
            } else {
                None
            },
        }
    }

    /// Another encoding of this event, built by `build` the first time
    /// `slot` is asked for and shared by every later caller: a front end
    /// that writes events in another format (JSON over HTTP) pays the
    /// encoding once per event, not once per watcher. `slot` names the
    /// format and must be below [`DERIVED_SLOTS`]; the bytes live as long
    /// as the event (they are not counted in [`CachedEvent::weight`]).
    ///
    /// # Panics
    /// If `slot >= DERIVED_SLOTS`.
    pub fn derived(&self, slot: usize, build: impl FnOnce(&Self) -> Bytes) -> Bytes {
        let slots = self.derived.get_or_init(Default::default);
        slots[slot].get_or_init(|| build(self)).clone()
    }

    /// Heap bytes this event holds, for the history ring's byte budget:
    /// the wire form is counted whether built yet or not, so the figure
    /// never changes while the event is in the ring.
    pub fn weight(&self) -> usize {
        let index = self.index.as_ref().map_or(0, |x| {
            std::mem::size_of::<EventIndex>()
                + x.values
                    .iter()
                    .map(|(o, n)| {
                        2 * std::mem::size_of::<Option<Bytes>>()
                            + o.as_ref().map_or(0, Bytes::len)
                            + n.as_ref().map_or(0, Bytes::len)
                    })
                    .sum::<usize>()
                + x.moved_out.as_ref().map_or(0, |m| m.weight())
        });
        self.full_len as usize + std::mem::size_of::<Self>() + index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, val: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: 2,
            mod_revision: rev,
            version: 3,
            value: Bytes::copy_from_slice(val.as_bytes()),
            lease: 0,
        }
    }

    #[test]
    fn both_variants_decode_to_the_event() {
        let prev = kv("k", "old", 4);
        let cur = kv("k", &"v".repeat(300), 5);
        let ev = CachedEvent::new(EventKind::Put, &cur, Some(&prev));
        let plain = ev.to_event(false);
        assert_eq!(plain.kv.as_ref(), Some(&cur));
        assert_eq!(plain.prev_kv, None);
        let full = ev.to_event(true);
        assert_eq!(full.prev_kv, Some(prev.clone()));
        // The field bytes equal what prost would write for `repeated events = 11`.
        for (with_prev, e) in [(false, plain), (true, full)] {
            let mut want = Vec::new();
            prost::encoding::message::encode(11, &e, &mut want);
            assert_eq!(ev.encoded(with_prev).as_ref(), &want[..]);
            assert_eq!(ev.encoded_len(with_prev), want.len());
        }
    }

    #[test]
    fn delete_keeps_type_and_create_has_no_prev() {
        let del = KeyValue {
            key: Bytes::from_static(b"k"),
            mod_revision: 9,
            ..Default::default()
        };
        let ev = CachedEvent::new(EventKind::Delete, &del, Some(&kv("k", "x", 3)));
        assert_eq!(ev.to_event(false).r#type, EventType::Delete as i32);
        assert_eq!(ev.revision(), 9);
        // The lazily built wire form is prost's, type field included.
        for with_prev in [false, true] {
            let mut want = Vec::new();
            prost::encoding::message::encode(11, &ev.to_event(with_prev), &mut want);
            assert_eq!(ev.encoded(with_prev).as_ref(), &want[..]);
            assert_eq!(ev.encoded_len(with_prev), want.len());
        }
        let create = CachedEvent::new(EventKind::Put, &kv("n", "x", 10), None);
        assert_eq!(create.encoded(true), create.encoded(false));
    }

    #[test]
    fn derived_encodings_are_built_once() {
        let ev = CachedEvent::new(EventKind::Put, &kv("k", "v", 5), None);
        let mut builds = 0;
        for _ in 0..3 {
            let b = ev.derived(1, |e| {
                builds += 1;
                Bytes::from(format!("rev {}", e.revision()))
            });
            assert_eq!(b, "rev 5");
        }
        assert_eq!(builds, 1);
        assert_eq!(ev.derived(0, |_| Bytes::from_static(b"other")), "other");
    }
}
