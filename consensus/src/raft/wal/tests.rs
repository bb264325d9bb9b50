//! The WAL's crash and corruption cases, against real files.

use super::*;

fn none(_: &[u8]) -> Option<u64> {
    None
}

fn payload(i: u64) -> Vec<u8> {
    format!("entry-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes()
}

fn fill(w: &Wal, range: std::ops::Range<u64>) {
    for i in range {
        w.append(i, &payload(i)).unwrap();
    }
    w.sync().unwrap();
}

fn indexes(r: &Recovered) -> Vec<u64> {
    r.records.iter().map(|(i, _)| *i).collect()
}

#[test]
fn records_survive_reopen_and_read_back() {
    let d = tempfile::tempdir().unwrap();
    {
        let (w, r) = Wal::open(d.path(), none).unwrap();
        assert!(r.records.is_empty());
        fill(&w, 0..50);
        assert_eq!(w.read(7).unwrap().unwrap(), payload(7));
        assert_eq!(w.read(50).unwrap(), None);
    }
    let (w, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(indexes(&r), (0..50).collect::<Vec<_>>());
    assert!(!r.cut_tail);
    for (i, p) in &r.records {
        assert_eq!(p, &payload(*i));
    }
    fill(&w, 50..60);
    drop(w);
    let (_, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(indexes(&r), (0..60).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_and_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let seg;
    let end;
    {
        let (w, _) = Wal::open(d.path(), none).unwrap();
        fill(&w, 0..10);
        let idx = w.index.lock();
        let l = idx.loc(9).unwrap();
        seg = idx.segs[&l.seq].path.clone();
        end = l.off + RECORD_HEAD + l.len as u64;
        drop(idx);
    }
    // A crash in the middle of writing record 10: half of it landed.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    let mut rec = Vec::new();
    rec.extend_from_slice(&40u32.to_le_bytes());
    rec.extend_from_slice(&123u32.to_le_bytes());
    rec.extend_from_slice(&10u64.to_le_bytes());
    rec.extend_from_slice(b"half a rec");
    f.write_all_at(&rec, end).unwrap();
    drop(f);
    let (w, r) = Wal::open(d.path(), none).unwrap();
    assert!(r.cut_tail);
    assert_eq!(indexes(&r), (0..10).collect::<Vec<_>>());
    fill(&w, 10..12);
    drop(w);
    let (_, r) = Wal::open(d.path(), none).unwrap();
    assert!(!r.cut_tail);
    assert_eq!(indexes(&r), (0..12).collect::<Vec<_>>());
}

#[test]
fn a_flipped_byte_inside_the_log_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let (seg, off) = {
        let (w, _) = Wal::open(d.path(), none).unwrap();
        fill(&w, 0..10);
        let idx = w.index.lock();
        let l = idx.loc(3).unwrap();
        (idx.segs[&l.seq].path.clone(), l.off + RECORD_HEAD + 2)
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], off).unwrap();
    drop(f);
    // In the last segment a damaged record ends the log there
    // (indistinguishable from a torn write): 0..3 remain.
    let (_, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(indexes(&r), vec![0, 1, 2]);
}

/// Where record `index` ends in its segment file.
fn record_end(w: &Wal, index: u64) -> (PathBuf, u64, u64) {
    let idx = w.index.lock();
    let l = idx.loc(index).unwrap();
    (
        idx.segs[&l.seq].path.clone(),
        l.off,
        l.off + RECORD_HEAD + l.len as u64,
    )
}

#[test]
fn a_file_cut_inside_a_record_keeps_every_record_before_it() {
    let d = tempfile::tempdir().unwrap();
    let (seg, off9) = {
        let (w, _) = Wal::open(d.path(), none).unwrap();
        fill(&w, 0..10);
        let (seg, off, _) = record_end(&w, 9);
        (seg, off)
    };
    // The file as a crash during its last write could leave it: cut
    // in the middle of record 9's payload (length shorter than the
    // preallocated segment, too).
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(off9 + RECORD_HEAD + 3)
        .unwrap();
    let (w, r) = Wal::open(d.path(), none).unwrap();
    assert!(r.cut_tail);
    assert_eq!(indexes(&r), (0..9).collect::<Vec<_>>());
    for (i, p) in &r.records {
        assert_eq!(p, &payload(*i), "record {i}");
    }
    // The log goes on from the cut, and the shortened segment rolls
    // over when full instead of writing past its end.
    fill(&w, 9..12);
    drop(w);
    let (w, r) = Wal::open(d.path(), none).unwrap();
    assert!(!r.cut_tail);
    assert_eq!(indexes(&r), (0..12).collect::<Vec<_>>());
    assert_eq!(w.read(9).unwrap().unwrap(), payload(9));
}

#[test]
fn a_zeroed_length_ends_the_log_and_later_stale_bytes_are_cut() {
    let d = tempfile::tempdir().unwrap();
    let (seg, off5) = {
        let (w, _) = Wal::open(d.path(), none).unwrap();
        fill(&w, 0..10);
        let (seg, off, _) = record_end(&w, 5);
        (seg, off)
    };
    // Record 5's head never reached the disk but 6..9 did (pages are
    // written back in any order before the fsync).
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0u8; RECORD_HEAD as usize], off5).unwrap();
    drop(f);
    let (w, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(indexes(&r), (0..5).collect::<Vec<_>>());
    // New, shorter records at 5..7: the old 6..9 behind them must
    // never be read back as part of the log.
    for i in 5..7 {
        w.append(i, b"n").unwrap();
    }
    w.sync().unwrap();
    drop(w);
    let (_, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(indexes(&r), (0..7).collect::<Vec<_>>());
    assert_eq!(r.records[6].1, b"n");
}

#[test]
fn damage_before_the_last_segment_refuses_to_open() {
    let d = tempfile::tempdir().unwrap();
    let big = vec![3u8; (SEGMENT_BYTES / 3) as usize];
    let (seg, off) = {
        let (w, _) = Wal::open(d.path(), none).unwrap();
        for i in 0..5 {
            w.append(i, &big).unwrap();
            w.sync().unwrap();
        }
        assert!(w.segments() >= 2);
        let (seg, off, _) = record_end(&w, 0);
        (seg, off + RECORD_HEAD + 100)
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 1], off).unwrap();
    drop(f);
    // Synced records followed it: cutting there would lose them, so
    // the log refuses to open instead of silently shortening.
    let e = Wal::open(d.path(), none).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
}

#[test]
fn truncate_drops_the_tail_durably_and_stale_records_never_return() {
    let d = tempfile::tempdir().unwrap();
    {
        let (w, _) = Wal::open(d.path(), none).unwrap();
        fill(&w, 0..20);
        w.truncate(12).unwrap();
        assert_eq!(w.read(12).unwrap(), None);
        // Shorter records at the same indexes: the old, longer ones
        // must not be found behind them.
        for i in 12..14 {
            w.append(i, b"new").unwrap();
        }
        w.sync().unwrap();
    }
    let (_, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(indexes(&r), (0..14).collect::<Vec<_>>());
    assert_eq!(r.records[12].1, b"new");
    assert_eq!(r.records[11].1, payload(11));
}

#[test]
fn purge_skips_old_records_and_allows_a_jump_past_the_end() {
    let d = tempfile::tempdir().unwrap();
    {
        let (w, _) = Wal::open(d.path(), none).unwrap();
        fill(&w, 0..10);
        w.purge_upto(4).unwrap();
        assert_eq!(w.read(4).unwrap(), None);
        assert_eq!(w.read(5).unwrap().unwrap(), payload(5));
        // A snapshot moved the log to 100: the log restarts there.
        w.purge_upto(99).unwrap();
        fill(&w, 100..103);
        assert_eq!(w.segments(), 2);
        w.purge_upto(100).unwrap();
        assert_eq!(w.segments(), 1, "the old segment is gone");
    }
    let purged = |_: &[u8]| Some(100);
    std::fs::write(d.path().join("meta"), {
        let mut b = crc32fast::hash(b"m").to_le_bytes().to_vec();
        b.extend_from_slice(b"m");
        b
    })
    .unwrap();
    let (_, r) = Wal::open(d.path(), purged).unwrap();
    assert_eq!(indexes(&r), vec![101, 102]);
}

#[test]
fn segments_roll_and_chain() {
    let d = tempfile::tempdir().unwrap();
    let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
    {
        let (w, _) = Wal::open(d.path(), none).unwrap();
        for i in 0..7 {
            w.append(i, &big).unwrap();
            w.sync().unwrap();
        }
        assert!(w.segments() >= 3);
    }
    let (w, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(indexes(&r), (0..7).collect::<Vec<_>>());
    // Two records per segment: truncating at 2 empties the second
    // segment and deletes the ones after it.
    w.truncate(2).unwrap();
    assert_eq!(w.segments(), 2);
    w.append(2, b"x").unwrap();
    w.sync().unwrap();
    drop(w);
    let (_, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(indexes(&r), vec![0, 1, 2]);
}

#[test]
fn meta_is_replaced_atomically_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let (w, r) = Wal::open(d.path(), none).unwrap();
    assert!(r.meta.is_none());
    w.save_meta(b"one").unwrap();
    w.save_meta(b"two").unwrap();
    drop(w);
    let (_, r) = Wal::open(d.path(), none).unwrap();
    assert_eq!(r.meta.as_deref(), Some(&b"two"[..]));
    std::fs::write(d.path().join("meta"), b"\0\0\0\0two").unwrap();
    assert!(Wal::open(d.path(), none).is_err());
}
