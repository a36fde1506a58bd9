//! Recovery at open: torn tails are cut, damaged records skipped and counted, nothing followed
//! into a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use mitto_store::{StartAt, StoreError};

/// The segment files of stream `name`, oldest first.
fn segments(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("streams").join(name).join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Record sizes: 34 framing + subject "t.x" + payload.
fn record_size(payload: usize) -> u64 {
    (34 + 3 + payload) as u64
}

fn write_stream(dir: &Path, n: usize, payload: usize) {
    let store = open(dir);
    let s = store.create_stream(cfg("t")).unwrap();
    for i in 0..n {
        let p = vec![b'a' + (i % 26) as u8; payload];
        s.append("t.x", Bytes::new(), Bytes::from(p))
            .unwrap()
            .wait()
            .unwrap();
    }
}

#[test]
fn a_torn_last_record_is_cut_at_every_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_stream(dir.path(), 20, 25);
    let seg = segments(dir.path(), "t").pop().unwrap();
    let whole = std::fs::read(&seg).unwrap();
    let last = whole.len() as u64 - record_size(25);
    for cut in last..whole.len() as u64 {
        // The write stopped at `cut`; or the file's length made it to disk but the data did not.
        for zero_fill in [false, true] {
            let mut bytes = whole[..cut as usize].to_vec();
            if zero_fill {
                bytes.resize(whole.len(), 0);
            }
            std::fs::write(&seg, &bytes).unwrap();
            let store = open(dir.path());
            let s = store.stream("t").unwrap();
            let r = s.recovery();
            assert_eq!(r.truncated_bytes, bytes.len() as u64 - last, "cut at {cut}");
            assert_eq!((r.records, r.damaged_ranges), (19, 0), "cut at {cut}");
            assert_eq!(seqs(&s), (1..=19).collect::<Vec<_>>(), "cut at {cut}");
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), last);
            // The next append takes the torn record's place; the next open is clean.
            assert_eq!(fill(&s, 0, 1), vec![20]);
            drop((s, store));
            let store = open(dir.path());
            assert!(store.stream("t").unwrap().recovery().is_clean());
        }
    }
    std::fs::write(&seg, &whole).unwrap();
    let store = open(dir.path());
    assert_eq!(seqs(&store.stream("t").unwrap()).len(), 20);
}

#[test]
fn a_damaged_record_in_the_middle_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    write_stream(dir.path(), 50, 30);
    let seg = segments(dir.path(), "t").pop().unwrap();
    let whole = std::fs::read(&seg).unwrap();
    let size = record_size(30) as usize;
    let r20 = 40 + 19 * size;
    // Each field of record 20: hash, length, sequence, timestamp, lengths, subject, payload.
    for at in [0, 5, 8, 10, 12, 20, 28, 30, 34, 40, size - 1] {
        let mut bytes = whole.clone();
        bytes[r20 + at] ^= 0xA5;
        std::fs::write(&seg, &bytes).unwrap();
        let store = open(dir.path());
        let s = store.stream("t").unwrap();
        let r = s.recovery().clone();
        assert_eq!(
            (r.damaged_ranges, r.missing_seqs, r.truncated_bytes),
            (1, 1, 0),
            "byte {at}: {r:?}"
        );
        assert_eq!(r.damaged_bytes, size as u64, "byte {at}");
        let want: Vec<u64> = (1..=50).filter(|&q| q != 20).collect();
        assert_eq!(seqs(&s), want, "byte {at}");
        assert_eq!(s.info().msgs, 49);
        assert_eq!(s.get(20).unwrap(), None);
        assert_eq!(
            s.reader(StartAt::Seq(20))
                .next_message()
                .unwrap()
                .unwrap()
                .seq,
            21
        );
        drop((s, store));
    }
    // A length field that claims 4 GiB is bounded by the record limit, not followed.
    let mut bytes = whole.clone();
    bytes[r20 + 8..r20 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let store = open(dir.path());
    let s = store.stream("t").unwrap();
    assert_eq!(s.recovery().missing_seqs, 1);
    assert_eq!(seqs(&s).len(), 49);
    assert_eq!(fill(&s, 0, 1), vec![51]);
}

#[test]
fn several_damaged_stretches_and_garbage_between_records() {
    let dir = tempfile::tempdir().unwrap();
    write_stream(dir.path(), 40, 10);
    let seg = segments(dir.path(), "t").pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let size = record_size(10) as usize;
    // Records 5-7 overwritten with random-looking bytes, record 30 zeroed.
    let mut x = 0x1234_5678u32;
    for b in &mut bytes[40 + 4 * size..40 + 7 * size] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    bytes[40 + 29 * size..40 + 30 * size].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let store = open(dir.path());
    let s = store.stream("t").unwrap();
    let r = s.recovery();
    assert_eq!((r.damaged_ranges, r.missing_seqs), (2, 4), "{r:?}");
    let want: Vec<u64> = (1..=40)
        .filter(|q| !(5..=7).contains(q) && *q != 30)
        .collect();
    assert_eq!(seqs(&s), want);
}

#[test]
fn a_segment_torn_while_created_is_removed_and_a_bad_header_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let s = store.create_stream(cfg("t").segment_size(1100)).unwrap();
        fill(&s, 0, 100);
    }
    let segs = segments(dir.path(), "t");
    assert!(segs.len() >= 3);
    // A newer segment whose header never made it to disk.
    let torn = segs[0].with_file_name("00000000000000009999.seg");
    std::fs::write(&torn, [0u8; 17]).unwrap();
    let store = open(dir.path());
    let s = store.stream("t").unwrap();
    assert_eq!(s.recovery().removed_files, vec![torn.clone()]);
    assert!(!torn.exists());
    assert_eq!(seqs(&s).len(), 100);
    drop((s, store));

    // A damaged header on a segment in the middle: its records cannot be trusted.
    let mut b = std::fs::read(&segs[1]).unwrap();
    b[0] ^= 1;
    std::fs::write(&segs[1], &b).unwrap();
    let store = open(dir.path());
    let s = store.stream("t").unwrap();
    assert_eq!(
        s.recovery().quarantined_files,
        vec![segs[1].with_extension("damaged")]
    );
    let got = seqs(&s);
    assert!(got.len() < 100 && got[0] == 1 && *got.last().unwrap() == 100);
    assert_eq!(fill(&s, 0, 1), vec![101]);
}

#[test]
fn a_record_damaged_after_open_is_reported_once_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store.create_stream(cfg("t")).unwrap();
    fill(&s, 0, 30);
    let seg = segments(dir.path(), "t").pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40 + 2 * 39 + 36] ^= 0xFF; // a payload byte of record 3 ("m2": 39 bytes each below m10)
    std::fs::write(&seg, &bytes).unwrap();
    let mut r = s.reader(StartAt::First);
    assert_eq!(r.next_message().unwrap().unwrap().seq, 1);
    assert_eq!(r.next_message().unwrap().unwrap().seq, 2);
    assert!(matches!(r.next_message(), Err(StoreError::Corrupt { .. })));
    // It goes on from the next indexed record: never past the end, never in a loop.
    let rest: Vec<_> = r.map(|m| m.unwrap().seq).collect();
    assert!(rest.last().is_none_or(|&l| l == 30));
}

#[test]
fn stray_files_in_the_segments_folder_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    write_stream(dir.path(), 5, 5);
    let segdir = dir.path().join("streams/t/segments");
    std::fs::write(segdir.join("notes.txt"), b"hello").unwrap();
    std::fs::write(segdir.join("1.seg"), b"hello").unwrap();
    let store = open(dir.path());
    assert_eq!(seqs(&store.stream("t").unwrap()), vec![1, 2, 3, 4, 5]);
}

#[test]
fn random_damage_never_panics_and_never_invents_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut originals = Vec::new();
    {
        let store = open(dir.path());
        let s = store.create_stream(cfg("t")).unwrap();
        for i in 0..300usize {
            let p = format!("payload-{i}-{}", "x".repeat(i % 50));
            s.append("t.x", Bytes::new(), Bytes::from(p.clone()))
                .unwrap()
                .wait()
                .unwrap();
            originals.push(p);
        }
    }
    let seg = segments(dir.path(), "t").pop().unwrap();
    let whole = std::fs::read(&seg).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for round in 0..60 {
        let mut bytes = whole.clone();
        for _ in 0..1 + rnd(8) {
            let at = 40 + rnd(bytes.len() - 40);
            match rnd(3) {
                0 => bytes[at] ^= 1 << rnd(8),
                1 => {
                    let end = (at + rnd(200)).min(bytes.len());
                    bytes[at..end].fill(rnd(256) as u8);
                }
                _ => bytes.truncate(at),
            }
        }
        std::fs::write(&seg, &bytes).unwrap();
        let store = open(dir.path());
        let s = store.stream("t").unwrap();
        let mut last = 0;
        for m in s.reader(StartAt::First) {
            let m = m.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(m.seq > last, "round {round}");
            last = m.seq;
            assert_eq!(
                m.payload(),
                originals[m.seq as usize - 1].as_bytes(),
                "round {round}"
            );
        }
        drop((s, store));
    }
}
