//! Range responses written straight from the stored encodings.
//!
//! A `RangeResponse` is `header`, then each pair as field 2, then `more`
//! and `count`; protobuf lets these be concatenated as bytes. Every live
//! pair already holds its encoding ([`crate::mvcc::keyindex::LiveKv`]), so a
//! current-revision range is a copy of those bytes, never a re-encode.

use bytes::{BufMut, Bytes, BytesMut};
use lookout_proto::pb::{RangeRequest, ResponseHeader};
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::mvcc::state::MvccState;

/// Whether [`current_range`] answers `req` exactly as the general path
/// would: a read at the current revision with full values (`keys_only`
/// changes every pair, so there is no stored encoding to copy). Sorting,
/// limits and revision filters are the shared evaluation's, the same in
/// both paths.
pub fn fast_path(req: &RangeRequest, st: &MvccState) -> bool {
    (req.revision <= 0 || req.revision == st.rev) && !req.keys_only
}

/// The encoded `RangeResponse` for a request [`fast_path`] accepted.
pub fn current_range(req: &RangeRequest, st: &MvccState, header: &ResponseHeader) -> Bytes {
    let sel = st.select_current(req);
    let body: usize = sel
        .entries
        .iter()
        .map(|live| 1 + encoded_len_varint(live.encoded.len() as u64) + live.encoded.len())
        .sum();
    let h = header.encoded_len();
    let mut buf = BytesMut::with_capacity(1 + encoded_len_varint(h as u64) + h + body + 2 + 11);
    // field 1 (header), length-delimited
    buf.put_u8(0x0a);
    encode_varint(h as u64, &mut buf);
    header.encode_raw(&mut buf);
    for live in &sel.entries {
        // field 2 (kvs), length-delimited
        buf.put_u8(0x12);
        encode_varint(live.encoded.len() as u64, &mut buf);
        buf.put_slice(&live.encoded);
    }
    if sel.more {
        // field 3 (more), varint
        buf.put_u8(0x18);
        buf.put_u8(1);
    }
    if sel.count != 0 {
        // field 4 (count), varint
        buf.put_u8(0x20);
        encode_varint(sel.count as u64, &mut buf);
    }
    buf.freeze()
}
