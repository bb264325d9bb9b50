//! Range responses written straight from the stored encodings.
//!
//! A `RangeResponse` is `header`, then each pair as field 2, then `more`
//! and `count`; protobuf lets these be concatenated as bytes. Every live
//! pair already holds its encoding ([`crate::keyindex::LiveKv`]), so a
//! current-revision range is a copy of those bytes, never a re-encode.

use bytes::{BufMut, Bytes, BytesMut};
use lookout_proto::pb::range_request::{SortOrder, SortTarget};
use lookout_proto::pb::{RangeRequest, ResponseHeader};
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::state::MvccState;

/// Whether [`current_range`] answers `req` exactly as the general path
/// would: the current revision, key order, no revision filters, full values.
pub fn fast_path(req: &RangeRequest, st: &MvccState) -> bool {
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    (req.revision <= 0 || req.revision == st.rev)
        && target == SortTarget::Key
        && order != SortOrder::Descend
        && !req.keys_only
        && req.min_mod_revision == 0
        && req.max_mod_revision == 0
        && req.min_create_revision == 0
        && req.max_create_revision == 0
}

/// The encoded `RangeResponse` for a request [`fast_path`] accepted.
pub fn current_range(req: &RangeRequest, st: &MvccState, header: &ResponseHeader) -> Bytes {
    let limit = if req.limit > 0 {
        req.limit as usize
    } else {
        usize::MAX
    };
    let mut parts: Vec<&Bytes> = Vec::new();
    let mut count: i64 = 0;
    let mut body = 0usize;
    for (_, ki) in st.index_range(&req.key, &req.range_end) {
        let Some(live) = &ki.live else { continue };
        count += 1;
        if !req.count_only && parts.len() < limit {
            body += 1 + encoded_len_varint(live.encoded.len() as u64) + live.encoded.len();
            parts.push(&live.encoded);
        }
    }
    let more = req.limit > 0 && !req.count_only && count > req.limit;
    let h = header.encoded_len();
    let mut buf = BytesMut::with_capacity(1 + encoded_len_varint(h as u64) + h + body + 2 + 11);
    // field 1 (header), length-delimited
    buf.put_u8(0x0a);
    encode_varint(h as u64, &mut buf);
    header.encode_raw(&mut buf);
    for p in parts {
        // field 2 (kvs), length-delimited
        buf.put_u8(0x12);
        encode_varint(p.len() as u64, &mut buf);
        buf.put_slice(p);
    }
    if more {
        // field 3 (more), varint
        buf.put_u8(0x18);
        buf.put_u8(1);
    }
    if count != 0 {
        // field 4 (count), varint
        buf.put_u8(0x20);
        encode_varint(count as u64, &mut buf);
    }
    buf.freeze()
}
