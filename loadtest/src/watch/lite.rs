//! A lean `WatchResponse` decoder for the load generator's gRPC watchers.
//!
//! ```text
//!   HTTP/2 DATA ─> tonic framing ─> LiteDecoder: one pass over the bytes
//!     header/flags/cancel fields ─> LiteResponse
//!     events[i].kv: mod_revision, key, value ─> (rev, tag, send stamp) ─> LiteEvent
//! ```
//!
//! prost's decoder builds a `KeyValue` with owned `Bytes` per event and the
//! checker then parsed the value twice (tag, latency stamp). At 500k+
//! deliveries/s the load generator shares the machine with the target, so
//! each event is now read once in place: the key and value are hashed and
//! the stamp parsed straight from the received buffer. What the checker
//! sees is unchanged: the same revision, tag and stamp as before.

use bytes::Buf;
use lookout_proto::pb;
use prost::encoding::decode_varint;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

use crate::payload::{self, event_tag_stamped};

/// The fields of a `WatchResponse` the watchers use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiteResponse {
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub events: Vec<LiteEvent>,
}

/// One event, reduced to what the checker and the latency histogram need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiteEvent {
    pub rev: i64,
    /// [`crate::payload::event_tag`] of (type, key, value).
    pub tag: u64,
    /// The writer's send time, when the value is one of ours.
    pub sent_unix_ns: Option<u64>,
}

/// The Watch RPC's client codec: prost for requests, [`LiteDecoder`] for
/// responses.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiteCodec;

impl Codec for LiteCodec {
    type Encode = pb::WatchRequest;
    type Decode = LiteResponse;
    type Encoder = <ProstCodec<pb::WatchRequest, pb::WatchResponse> as Codec>::Encoder;
    type Decoder = LiteDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<pb::WatchRequest, pb::WatchResponse>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        LiteDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LiteDecoder;

impl Decoder for LiteDecoder {
    type Item = LiteResponse;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<LiteResponse>, Status> {
        let n = buf.remaining();
        // tonic gathers a whole message into one buffer before decoding, so
        // the chunk is normally the message; copy only if it is not.
        let resp = if buf.chunk().len() >= n {
            let r = parse_response(&buf.chunk()[..n]);
            buf.advance(n);
            r
        } else {
            let bytes = buf.copy_to_bytes(n);
            parse_response(&bytes)
        };
        resp.map(Some)
            .map_err(|e| Status::internal(format!("bad WatchResponse: {e}")))
    }
}

/// Reads one protobuf field key: (field number, wire type).
fn key(b: &mut &[u8]) -> Result<(u32, u8), &'static str> {
    let k = decode_varint(b).map_err(|_| "bad key")?;
    Ok(((k >> 3) as u32, (k & 7) as u8))
}

fn varint(b: &mut &[u8]) -> Result<u64, &'static str> {
    decode_varint(b).map_err(|_| "bad varint")
}

fn bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let len = varint(b)? as usize;
    if len > b.len() {
        return Err("truncated field");
    }
    let (v, rest) = b.split_at(len);
    *b = rest;
    Ok(v)
}

fn skip(b: &mut &[u8], wire: u8) -> Result<(), &'static str> {
    match wire {
        0 => varint(b).map(|_| ()),
        1 if b.len() >= 8 => {
            *b = &b[8..];
            Ok(())
        }
        2 => bytes(b).map(|_| ()),
        5 if b.len() >= 4 => {
            *b = &b[4..];
            Ok(())
        }
        _ => Err("bad wire type"),
    }
}

/// Parses a whole encoded `WatchResponse`.
pub fn parse_response(mut b: &[u8]) -> Result<LiteResponse, &'static str> {
    let mut r = LiteResponse::default();
    while !b.is_empty() {
        let (field, wire) = key(&mut b)?;
        match (field, wire) {
            (2, 0) => r.watch_id = varint(&mut b)? as i64,
            (3, 0) => r.created = varint(&mut b)? != 0,
            (4, 0) => r.canceled = varint(&mut b)? != 0,
            (5, 0) => r.compact_revision = varint(&mut b)? as i64,
            (6, 2) => r.cancel_reason = String::from_utf8_lossy(bytes(&mut b)?).into_owned(),
            (11, 2) => {
                if r.events.capacity() == 0 {
                    r.events.reserve(4);
                }
                r.events.push(parse_event(bytes(&mut b)?)?);
            }
            _ => skip(&mut b, wire)?,
        }
    }
    Ok(r)
}

/// `mvccpb.Event`: type (1), kv (2); prev_kv (3) is skipped.
fn parse_event(mut b: &[u8]) -> Result<LiteEvent, &'static str> {
    let mut is_delete = false;
    let mut kv: &[u8] = &[];
    while !b.is_empty() {
        let (field, wire) = key(&mut b)?;
        match (field, wire) {
            (1, 0) => is_delete = varint(&mut b)? == 1,
            (2, 2) => kv = bytes(&mut b)?,
            _ => skip(&mut b, wire)?,
        }
    }
    let (mut k, mut v, mut rev) = (&[][..], &[][..], 0i64);
    while !kv.is_empty() {
        let (field, wire) = key(&mut kv)?;
        match (field, wire) {
            (1, 2) => k = bytes(&mut kv)?,
            (3, 0) => rev = varint(&mut kv)? as i64,
            (5, 2) => v = bytes(&mut kv)?,
            _ => skip(&mut kv, wire)?,
        }
    }
    let stamp = payload::decode(v);
    Ok(LiteEvent {
        rev,
        tag: event_tag_stamped(is_delete, k, v, stamp),
        sent_unix_ns: stamp.map(|s| s.sent_unix_ns),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::event_tag;
    use bytes::Bytes;
    use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
    use prost::Message;

    #[test]
    fn reads_what_prost_reads() {
        let value = payload::encode_at(7, 1_700_000_000_000_000_001, 256);
        let ev = |t: EventType, rev: i64, v: Bytes| Event {
            r#type: t as i32,
            kv: Some(KeyValue {
                key: Bytes::from_static(b"/lo/k0000001"),
                create_revision: 3,
                mod_revision: rev,
                version: 2,
                value: v,
                lease: 9,
            }),
            prev_kv: Some(KeyValue {
                key: Bytes::from_static(b"/lo/k0000001"),
                value: Bytes::from_static(b"old"),
                ..Default::default()
            }),
        };
        let full = pb::WatchResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: u64::MAX,
                member_id: 1,
                revision: 99,
                raft_term: 4,
            }),
            watch_id: 12,
            created: true,
            canceled: true,
            compact_revision: 40,
            cancel_reason: "why".into(),
            fragment: true,
            events: vec![
                ev(EventType::Put, 41, value.clone()),
                ev(EventType::Delete, 42, Bytes::new()),
                ev(EventType::Put, 43, Bytes::from_static(b"foreign")),
            ],
        };
        let lite = parse_response(&full.encode_to_vec()).unwrap();
        assert_eq!(
            (lite.watch_id, lite.created, lite.canceled),
            (12, true, true)
        );
        assert_eq!(
            (lite.compact_revision, lite.cancel_reason.as_str()),
            (40, "why")
        );
        let want: Vec<LiteEvent> = full
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                LiteEvent {
                    rev: kv.mod_revision,
                    tag: event_tag(e.r#type == 1, &kv.key, &kv.value),
                    sent_unix_ns: payload::decode(&kv.value).map(|s| s.sent_unix_ns),
                }
            })
            .collect();
        assert_eq!(lite.events, want);
        assert_eq!(lite.events[0].sent_unix_ns, Some(1_700_000_000_000_000_001));
        // Defaults (all fields zero) decode to defaults; garbage is an error.
        assert_eq!(
            parse_response(&pb::WatchResponse::default().encode_to_vec()).unwrap(),
            LiteResponse::default()
        );
        assert!(parse_response(&[0x5a, 0x10, 0x01]).is_err());
    }
}
