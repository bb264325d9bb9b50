//! [`WatchCodec`]: the Watch RPC's codec. Responses are [`WatchFrame`]s,
//! written as the bytes they already are (a per-watcher head plus shared,
//! pre-encoded events), so an event is encoded once for all its watchers;
//! requests are decoded by prost as usual.
//!
//! ```text
//!   WatchFrame { head bytes, [Arc<CachedEvent>...] } ──write_to──> EncodeBuf ──> HTTP/2 DATA
//!   HTTP/2 DATA ──prost──> WatchRequest
//! ```

use lookout_cache::WatchFrame;
use lookout_proto::pb::WatchRequest;
use lookout_proto::pb::WatchResponse;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstCodec;

/// The pass-through codec of the Watch service.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCodec;

/// Writes a frame's bytes; never encodes a protobuf message.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = WatchFrame;
    type Error = Status;

    fn encode(&mut self, item: WatchFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.write_to(dst);
        Ok(())
    }
}

impl Codec for WatchCodec {
    type Encode = WatchFrame;
    type Decode = WatchRequest;
    type Encoder = FrameEncoder;
    // prost's decoder; the encode type parameter only names it.
    type Decoder = <ProstCodec<WatchResponse, WatchRequest> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<WatchResponse, WatchRequest>::raw_decoder(BufferSettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use lookout_cache::{CachedEvent, EventKind, FrameHead};
    use lookout_proto::mvccpb::KeyValue;
    use prost::Message;
    use std::sync::Arc;

    #[test]
    fn frames_go_out_as_the_bytes_prost_would_write() {
        let ev = Arc::new(CachedEvent::new(
            EventKind::Put,
            &KeyValue {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                mod_revision: 7,
                create_revision: 7,
                version: 1,
                lease: 0,
            },
            None,
        ));
        let frame = WatchFrame::new(
            &FrameHead {
                watch_id: 3,
                ..Default::default()
            },
            vec![ev],
            false,
        );
        let want = frame.decode().encode_to_vec();
        let mut buf = BytesMut::new();
        frame.write_to(&mut buf);
        assert_eq!(&buf[..], &want[..]);
        assert_eq!(WatchResponse::decode(buf.freeze()).unwrap().watch_id, 3);
    }
}
