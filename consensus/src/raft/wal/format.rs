//! The bytes on disk: segment names, the segment header, the chained
//! record checksum and the meta file's framing (the layout is drawn in
//! the module doc of `wal/mod.rs`), and the two filesystem calls every
//! phase needs. The fuzz target builds segments with these.

use std::fs::File;
use std::path::Path;

pub(super) const MAGIC: &[u8; 8] = b"LKWAL001";
pub(super) const HEADER: u64 = 24;
/// len + crc + index.
pub(super) const RECORD_HEAD: u64 = 16;
/// Largest payload accepted when reading (a bigger length is corruption).
pub(super) const MAX_RECORD: u32 = 1 << 30;

pub(super) fn corrupt(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

pub(crate) fn seg_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

pub(super) fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn record_crc(prev: u32, len: u32, index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

pub(crate) fn header_bytes(first_index: u64, seed: u32) -> [u8; HEADER as usize] {
    let mut b = [0u8; HEADER as usize];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&first_index.to_le_bytes());
    b[16..20].copy_from_slice(&seed.to_le_bytes());
    let c = crc32fast::hash(&b[..20]);
    b[20..24].copy_from_slice(&c.to_le_bytes());
    b
}

/// Gives `file` `len` bytes of allocated, zero-reading space from `off`
/// on, so later writes there change no file size or block map that
/// `fdatasync` would have to journal beyond the extent conversion.
pub(super) fn preallocate(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), off, len) {
        Ok(()) => Ok(()),
        // A filesystem without fallocate: a sparse file still works,
        // its first writes only cost more to sync.
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(off + len),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn read_meta_file(b: &[u8]) -> std::io::Result<Vec<u8>> {
    if b.len() < 4 || crc32fast::hash(&b[4..]).to_le_bytes() != b[..4] {
        return Err(corrupt("raft-wal/meta: checksum mismatch".into()));
    }
    Ok(b[4..].to_vec())
}
