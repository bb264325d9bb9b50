//! A `WatchResponse` as bytes: a small per-watcher head followed by the
//! shared, pre-encoded `events` fields of [`CachedEvent`]s.
//!
//! ```text
//!   [header, watch_id, created, canceled, compact_revision, cancel_reason, fragment]
//!   [0x5a len Event][0x5a len Event]...      <- shared Arc<CachedEvent> bytes
//! ```
//!
//! `events` is field 11, the highest, so head + events is exactly what prost
//! would write for the whole message; decoding gives the same `WatchResponse`.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use lookout_proto::pb::{ResponseHeader, WatchResponse};
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::event::CachedEvent;

/// The per-watcher fields of a `WatchResponse` (everything but `events`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameHead {
    pub header: ResponseHeader,
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub fragment: bool,
}

impl FrameHead {
    #[cfg(test)]
    fn as_message(&self) -> WatchResponse {
        WatchResponse {
            header: Some(self.header),
            watch_id: self.watch_id,
            created: self.created,
            canceled: self.canceled,
            compact_revision: self.compact_revision,
            cancel_reason: self.cancel_reason.clone(),
            fragment: self.fragment,
            events: Vec::new(),
        }
    }

    /// Length of the head as prost would encode it (every field but
    /// `events`; zero fields omitted, the header always present).
    pub fn encoded_len(&self) -> usize {
        let h = header_body_len(&self.header);
        1 + encoded_len_varint(h as u64)
            + h
            + int_len(self.watch_id)
            + 2 * usize::from(self.created)
            + 2 * usize::from(self.canceled)
            + int_len(self.compact_revision)
            + if self.cancel_reason.is_empty() {
                0
            } else {
                let n = self.cancel_reason.len();
                1 + encoded_len_varint(n as u64) + n
            }
            + 2 * usize::from(self.fragment)
    }

    /// Writes the head exactly as prost would, without building a message:
    /// this runs once per delivered frame.
    pub fn write_to(&self, buf: &mut impl BufMut) {
        let h = &self.header;
        buf.put_u8(0x0a);
        encode_varint(header_body_len(h) as u64, buf);
        put_uint(buf, 0x08, h.cluster_id);
        put_uint(buf, 0x10, h.member_id);
        put_uint(buf, 0x18, h.revision as u64);
        put_uint(buf, 0x20, h.raft_term);
        put_uint(buf, 0x10, self.watch_id as u64);
        put_bool(buf, 0x18, self.created);
        put_bool(buf, 0x20, self.canceled);
        put_uint(buf, 0x28, self.compact_revision as u64);
        if !self.cancel_reason.is_empty() {
            buf.put_u8(0x32);
            encode_varint(self.cancel_reason.len() as u64, buf);
            buf.put_slice(self.cancel_reason.as_bytes());
        }
        put_bool(buf, 0x38, self.fragment);
    }
}

fn header_body_len(h: &ResponseHeader) -> usize {
    uint_len(h.cluster_id) + uint_len(h.member_id) + int_len(h.revision) + uint_len(h.raft_term)
}

/// A varint field (tag byte + value), absent when zero.
fn uint_len(v: u64) -> usize {
    if v == 0 { 0 } else { 1 + encoded_len_varint(v) }
}

fn int_len(v: i64) -> usize {
    uint_len(v as u64)
}

fn put_uint(buf: &mut impl BufMut, tag: u8, v: u64) {
    if v != 0 {
        buf.put_u8(tag);
        encode_varint(v, buf);
    }
}

fn put_bool(buf: &mut impl BufMut, tag: u8, v: bool) {
    if v {
        buf.put_u8(tag);
        buf.put_u8(1);
    }
}

/// gRPC's length prefix: a compression flag (0) and the message length,
/// big-endian, before every message on the wire.
pub const GRPC_PREFIX_LEN: usize = 5;

/// Writes one gRPC-framed `WatchResponse` (prefix, head, events) straight
/// into `buf`: the delivery path of [`crate::WatchFrames::next_grpc`]. The
/// events' bytes are copied once, into the connection's write buffer.
pub(crate) fn write_grpc_message(
    buf: &mut BytesMut,
    head: &FrameHead,
    events: &[Arc<CachedEvent>],
    prev_kv: bool,
) -> usize {
    let len = head.encoded_len() + events.iter().map(|e| e.encoded_len(prev_kv)).sum::<usize>();
    buf.reserve(GRPC_PREFIX_LEN + len);
    if head.cancel_reason.is_empty() {
        // The common head (no reason) is assembled on the stack and copied
        // in one piece: byte-wise `BufMut` writes showed up in profiles.
        let mut tmp = [0u8; GRPC_PREFIX_LEN + INLINE_HEAD];
        tmp[1..5].copy_from_slice(&(len as u32).to_be_bytes());
        let mut at = GRPC_PREFIX_LEN;
        head.write_plain(&mut tmp, &mut at);
        buf.extend_from_slice(&tmp[..at]);
    } else {
        buf.put_u8(0);
        buf.put_u32(len as u32);
        head.write_to(buf);
    }
    for e in events {
        e.write_to(prev_kv, buf);
    }
    GRPC_PREFIX_LEN + len
}

/// Appends a varint at `at` (the caller sized `out`).
#[inline]
fn stack_varint(out: &mut [u8], at: &mut usize, mut v: u64) {
    while v >= 0x80 {
        out[*at] = (v as u8) | 0x80;
        v >>= 7;
        *at += 1;
    }
    out[*at] = v as u8;
    *at += 1;
}

#[inline]
fn stack_uint(out: &mut [u8], at: &mut usize, tag: u8, v: u64) {
    if v != 0 {
        out[*at] = tag;
        *at += 1;
        stack_varint(out, at, v);
    }
}

#[inline]
fn stack_bool(out: &mut [u8], at: &mut usize, tag: u8, v: bool) {
    if v {
        out[*at] = tag;
        out[*at + 1] = 1;
        *at += 2;
    }
}

impl FrameHead {
    /// [`FrameHead::write_to`] for a head without `cancel_reason`, into a
    /// stack buffer with room for [`INLINE_HEAD`] bytes from `at`.
    #[inline]
    fn write_plain(&self, out: &mut [u8], at: &mut usize) {
        debug_assert!(self.cancel_reason.is_empty());
        let h = &self.header;
        out[*at] = 0x0a;
        *at += 1;
        stack_varint(out, at, header_body_len(h) as u64);
        stack_uint(out, at, 0x08, h.cluster_id);
        stack_uint(out, at, 0x10, h.member_id);
        stack_uint(out, at, 0x18, h.revision as u64);
        stack_uint(out, at, 0x20, h.raft_term);
        stack_uint(out, at, 0x10, self.watch_id as u64);
        stack_bool(out, at, 0x18, self.created);
        stack_bool(out, at, 0x20, self.canceled);
        stack_uint(out, at, 0x28, self.compact_revision as u64);
        stack_bool(out, at, 0x38, self.fragment);
    }
}

/// Longest head without a `cancel_reason`: header 46 + watch_id 11 + flags 6
/// + compact_revision 11 = 74 bytes; anything longer goes to the heap.
const INLINE_HEAD: usize = 80;

#[derive(Clone)]
enum Head {
    Inline { buf: [u8; INLINE_HEAD], len: u8 },
    Heap(Bytes),
}

impl Head {
    fn encode(head: &FrameHead) -> Self {
        let len = head.encoded_len();
        if len <= INLINE_HEAD {
            let mut buf = [0u8; INLINE_HEAD];
            let mut slot = &mut buf[..];
            head.write_to(&mut slot);
            Self::Inline {
                buf,
                len: len as u8,
            }
        } else {
            let mut b = BytesMut::with_capacity(len);
            head.write_to(&mut b);
            Self::Heap(b.freeze())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::Inline { buf, len } => &buf[..*len as usize],
            Self::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Head({} bytes)", self.bytes().len())
    }
}

/// One `WatchResponse` ready to be written: the per-watcher head and the
/// shared events. Writing it is a few `memcpy`s, never a protobuf encode.
#[derive(Debug, Clone)]
pub struct WatchFrame {
    head: Head,
    events: Vec<Arc<CachedEvent>>,
    prev_kv: bool,
    watch_id: i64,
    revision: i64,
    canceled: bool,
}

impl WatchFrame {
    /// A frame from its head and the events to follow it.
    pub fn new(head: &FrameHead, events: Vec<Arc<CachedEvent>>, prev_kv: bool) -> Self {
        Self {
            head: Head::encode(head),
            events,
            prev_kv,
            watch_id: head.watch_id,
            revision: head.header.revision,
            canceled: head.canceled,
        }
    }

    pub fn watch_id(&self) -> i64 {
        self.watch_id
    }

    /// `header.revision` of this response.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn is_canceled(&self) -> bool {
        self.canceled
    }

    pub fn events(&self) -> &[Arc<CachedEvent>] {
        &self.events
    }

    /// Whether the events go out with their `prev_kv`.
    pub fn prev_kv(&self) -> bool {
        self.prev_kv
    }

    /// The per-watcher fields (everything but `events`), decoded from the
    /// small head alone: for front ends that write another format (JSON)
    /// and take the events from [`WatchFrame::events`].
    pub fn head(&self) -> WatchResponse {
        WatchResponse::decode(self.head.bytes()).expect("heads are valid protobuf")
    }

    /// Size of the encoded `WatchResponse`.
    pub fn encoded_len(&self) -> usize {
        self.head.bytes().len()
            + self
                .events
                .iter()
                .map(|e| e.encoded_len(self.prev_kv))
                .sum::<usize>()
    }

    /// Writes the encoded `WatchResponse` (what a tonic encoder would write).
    pub fn write_to(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.head.bytes());
        for e in &self.events {
            e.write_to(self.prev_kv, buf);
        }
    }

    /// Writes the frame as one gRPC message (length prefix + bytes).
    pub fn write_grpc(&self, buf: &mut BytesMut) {
        let len = self.encoded_len();
        buf.reserve(GRPC_PREFIX_LEN + len);
        buf.put_u8(0);
        buf.put_u32(len as u32);
        self.write_to(buf);
    }

    /// The encoded `WatchResponse` as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.write_to(&mut b);
        b.freeze()
    }

    /// Decodes the frame (tests and diagnostics only).
    pub fn decode(&self) -> WatchResponse {
        WatchResponse::decode(self.to_bytes()).expect("frames are valid protobuf")
    }
}

/// Builds a complete encoded `WatchResponse` from the per-watcher `head` and
/// shared events: the pure form of [`WatchFrame`], kept for callers that
/// want contiguous bytes.
pub fn encode_watch_response(
    head: &FrameHead,
    events: &[Arc<CachedEvent>],
    prev_kv: bool,
) -> Bytes {
    WatchFrame::new(head, events.to_vec(), prev_kv).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use lookout_proto::mvccpb::KeyValue;

    fn kv(key: &str, rev: i64, val: &str) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: 1,
            mod_revision: rev,
            version: 1,
            value: Bytes::copy_from_slice(val.as_bytes()),
            lease: 7,
        }
    }

    #[test]
    fn encoded_frame_decodes_to_the_normal_encoding() {
        let prev = kv("a", 3, "before");
        let events = vec![
            Arc::new(CachedEvent::new(
                EventKind::Put,
                &kv("a", 4, "x"),
                Some(&prev),
            )),
            Arc::new(CachedEvent::new(
                EventKind::Delete,
                &KeyValue {
                    key: Bytes::from_static(b"b"),
                    mod_revision: 5,
                    ..Default::default()
                },
                Some(&kv("b", 2, "y")),
            )),
        ];
        let heads = [
            FrameHead {
                header: ResponseHeader {
                    cluster_id: u64::MAX,
                    member_id: 42,
                    revision: 5,
                    raft_term: 9,
                },
                watch_id: -1,
                created: true,
                canceled: true,
                compact_revision: i64::MAX,
                fragment: true,
                cancel_reason: String::new(),
            },
            FrameHead {
                watch_id: 3,
                cancel_reason: "x".repeat(200),
                ..Default::default()
            },
            // Zero fields are left out, as prost leaves them out.
            FrameHead::default(),
            FrameHead {
                header: ResponseHeader {
                    revision: -5,
                    raft_term: 1 << 40,
                    ..Default::default()
                },
                watch_id: i64::MIN,
                compact_revision: -1,
                fragment: true,
                ..Default::default()
            },
        ];
        for head in &heads {
            for prev_kv in [false, true] {
                let bytes = encode_watch_response(head, &events, prev_kv);
                let mut normal = head.as_message();
                normal.events = events.iter().map(|e| e.to_event(prev_kv)).collect();
                assert_eq!(WatchResponse::decode(bytes.clone()).unwrap(), normal);
                // Byte for byte what prost writes, too.
                assert_eq!(bytes.as_ref(), &normal.encode_to_vec()[..]);
                let frame = WatchFrame::new(head, events.clone(), prev_kv);
                assert_eq!(frame.encoded_len(), bytes.len());
                assert_eq!(frame.decode(), normal);
                // The gRPC path: a 5-byte prefix, then the same bytes.
                let mut want = vec![0u8];
                want.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                want.extend_from_slice(&bytes);
                let mut grpc = BytesMut::new();
                let n = write_grpc_message(&mut grpc, head, &events, prev_kv);
                assert_eq!((n, &grpc[..]), (want.len(), &want[..]));
                let mut again = BytesMut::new();
                frame.write_grpc(&mut again);
                assert_eq!(&again[..], &want[..]);
                let mut head_only = normal.clone();
                head_only.events.clear();
                assert_eq!(frame.head(), head_only);
                assert_eq!(frame.prev_kv(), prev_kv);
            }
        }
    }
}
