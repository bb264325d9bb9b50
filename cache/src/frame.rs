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
        let msg = head.as_message();
        let len = msg.encoded_len();
        if len <= INLINE_HEAD {
            let mut buf = [0u8; INLINE_HEAD];
            let mut slot = &mut buf[..];
            msg.encode(&mut slot).expect("fits inline");
            Self::Inline {
                buf,
                len: len as u8,
            }
        } else {
            let mut b = BytesMut::with_capacity(len);
            msg.encode(&mut b).expect("capacity reserved");
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
                let mut head_only = normal.clone();
                head_only.events.clear();
                assert_eq!(frame.head(), head_only);
                assert_eq!(frame.prev_kv(), prev_kv);
            }
        }
    }
}
