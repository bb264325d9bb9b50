//! What the writer puts into each value, and how watchers read it back.
//!
//! A value is plain ASCII so the same bytes can be checked on the gRPC stream
//! and on an HTTP/JSON stream that shows values as text:
//!
//! ```text
//!   "lo1 <seq> <send_unix_ns> " + '.' padding up to the value size
//! ```
//!
//! `seq` is the writer's sequence number (which put this is), `send_unix_ns`
//! the wall-clock time the put left the client. Wall-clock rather than a
//! process-local monotonic clock so writers and watchers may one day run in
//! separate `lookout-load` processes on the same machine.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lookout_testkit::checker::fnv1a;

const MAGIC: &str = "lo1 ";

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The decoded header of a value written by `lookout-load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub sent_unix_ns: u64,
}

/// Builds a value of `size` bytes (or the header's length if `size` is
/// smaller) carrying `seq` and the current time.
pub fn encode(seq: u64, size: usize) -> Bytes {
    encode_at(seq, now_unix_ns(), size)
}

/// [`encode`] with an explicit send time (tests and replays).
pub fn encode_at(seq: u64, sent_unix_ns: u64, size: usize) -> Bytes {
    let mut v = format!("{MAGIC}{seq} {sent_unix_ns} ").into_bytes();
    if v.len() < size {
        v.resize(size, b'.');
    }
    Bytes::from(v)
}

/// Reads the header back; `None` for values `lookout-load` did not write.
pub fn decode(value: &[u8]) -> Option<Stamp> {
    let rest = value.strip_prefix(MAGIC.as_bytes())?;
    let mut parts = rest.splitn(3, |b| *b == b' ');
    let seq = parse_u64(parts.next()?)?;
    let sent_unix_ns = parse_u64(parts.next()?)?;
    // The header always ends with a space; without it the value was cut.
    parts.next()?;
    Some(Stamp { seq, sent_unix_ns })
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// The key the writer uses for put number `seq` when cycling over `keys`
/// distinct keys under `prefix`.
pub fn key_for(prefix: &[u8], seq: u64, keys: u64) -> Bytes {
    let idx = seq % keys.max(1);
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(format!("k{idx:07}").as_bytes());
    Bytes::from(k)
}

/// The exclusive end of the range that holds every key starting with
/// `prefix` (etcd's `clientv3.GetPrefixRangeEnd`).
pub fn prefix_range_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    // An empty or all-0xff prefix means "every key": etcd spells that "\0".
    Bytes::from_static(b"\0")
}

/// The checker's content tag of one event: key, type and the writer's
/// sequence number (or the whole value for foreign values). The store's
/// history is tagged the same way, so the two digests compare.
pub fn event_tag(is_delete: bool, key: &[u8], value: &[u8]) -> u64 {
    event_tag_stamped(is_delete, key, value, decode(value))
}

/// [`event_tag`] when the value's stamp is already parsed (`stamp` must be
/// `decode(value)`): the watchers' hot path parses it once for the tag and
/// the latency.
#[inline]
pub fn event_tag_stamped(is_delete: bool, key: &[u8], value: &[u8], stamp: Option<Stamp>) -> u64 {
    let v = match stamp {
        Some(s) => s.seq,
        None => fnv1a(value),
    };
    fnv1a(key) ^ v.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(is_delete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let v = encode_at(42, 1_700_000_000_123_456_789, 256);
        assert_eq!(v.len(), 256);
        assert_eq!(
            decode(&v),
            Some(Stamp {
                seq: 42,
                sent_unix_ns: 1_700_000_000_123_456_789
            })
        );
        // Smaller than the header: the header wins, nothing is cut.
        let small = encode_at(7, 9, 4);
        assert_eq!(decode(&small).map(|s| s.seq), Some(7));
    }

    #[test]
    fn rejects_foreign_values() {
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(b"lo1 12"), None);
        assert_eq!(decode(b"lo1 x 1 "), None);
        assert_eq!(decode(b"lo1 99999999999999999999999 1 "), None);
    }

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(&prefix_range_end(b"a/")[..], b"a0");
        assert_eq!(&prefix_range_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_range_end(b"")[..], b"\0");
    }
}
