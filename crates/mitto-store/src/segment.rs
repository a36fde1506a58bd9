//! One segment file: its header, the records' sparse index, and the recovery scan that rebuilds
//! it at open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Result, StoreError};
use crate::fs::{read_full_at, write_all_at, StoreFile, StoreFs};
use crate::record::{self, Bad, Meta, Parsed};

/// Bytes of the segment header.
pub(crate) const HEADER_LEN: usize = 40;
const MAGIC: &[u8; 8] = b"MITTOSG1";
const VERSION: u32 = 1;
/// One index entry per this many bytes of records: a lookup reads at most this much extra.
pub(crate) const INDEX_EVERY: u64 = 32 * 1024;
/// Reads during recovery go this many bytes at a time (or one record, if larger).
const SCAN_CHUNK: usize = 1024 * 1024;

/// A point of the sparse index: the record at `off` has sequence `seq` and timestamp `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    pub(crate) off: u64,
}

/// What recovery found in one segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ScanReport {
    pub(crate) truncated_bytes: u64,
    pub(crate) damaged_ranges: u64,
    pub(crate) damaged_bytes: u64,
    pub(crate) missing_seqs: u64,
}

/// A segment: its file, header fields, extent and index.
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn StoreFile>,
    pub(crate) seed: u64,
    /// The first sequence this segment may hold (from its name and header).
    pub(crate) base_seq: u64,
    /// The last sequence it holds, or `base_seq - 1` while empty.
    pub(crate) last_seq: u64,
    pub(crate) first_ts: u64,
    pub(crate) last_ts: u64,
    /// Records and their bytes.
    pub(crate) msgs: u64,
    pub(crate) bytes: u64,
    /// End of the records readers may see (the writer's offset once durable).
    pub(crate) end: u64,
    pub(crate) index: Vec<IndexEntry>,
    /// Damaged ranges `[start, end)` that recovery skipped; readers jump over them.
    pub(crate) holes: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("base_seq", &self.base_seq)
            .field("last_seq", &self.last_seq)
            .field("end", &self.end)
            .finish()
    }
}

/// The file name of the segment starting at `base_seq`.
pub(crate) fn file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

/// The base sequence a segment file name stands for.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn header(seed: u64, base_seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seed.to_le_bytes());
    h[24..32].copy_from_slice(&base_seq.to_le_bytes());
    let sum = xxh3_64(&h[..32]);
    h[32..].copy_from_slice(&sum.to_le_bytes());
    h
}

/// The seed and base sequence in a header, if it checks.
fn parse_header(h: &[u8]) -> Option<(u64, u64)> {
    if h.len() < HEADER_LEN || &h[..8] != MAGIC {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    if xxh3_64(&h[..32]) != word(32) || h[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    Some((word(16), word(24)))
}

impl Segment {
    fn empty(path: PathBuf, file: Arc<dyn StoreFile>, seed: u64, base_seq: u64) -> Self {
        Segment {
            path,
            file,
            seed,
            base_seq,
            last_seq: base_seq - 1,
            first_ts: 0,
            last_ts: 0,
            msgs: 0,
            bytes: 0,
            end: HEADER_LEN as u64,
            index: Vec::new(),
            holes: Vec::new(),
        }
    }

    /// Creates a segment file with a fresh random seed and makes it durable (file and folder)
    /// before any record goes in.
    pub(crate) fn create(fs: &dyn StoreFs, dir: &Path, base_seq: u64) -> Result<Self> {
        let path = dir.join(file_name(base_seq));
        let file = fs
            .open(&path, true)
            .map_err(|e| StoreError::io("create segment", &path, e))?;
        let seed: u64 = rand::random();
        let h = header(seed, base_seq);
        let io = |e| StoreError::io("write segment header", &path, e);
        file.set_len(0).map_err(io)?;
        write_all_at(&*file, &h, 0).map_err(io)?;
        file.sync_data().map_err(io)?;
        fs.sync_dir(dir)
            .map_err(|e| StoreError::io("sync folder", dir, e))?;
        Ok(Segment::empty(path, file, seed, base_seq))
    }

    /// Notes a record the writer placed at `off` (or recovery found there).
    pub(crate) fn note(&mut self, m: &Meta, off: u64) {
        if self.msgs == 0 {
            self.first_ts = m.ts;
        }
        let due = self.index.last().is_none_or(|e| off >= e.off + INDEX_EVERY);
        if due {
            self.index.push(IndexEntry {
                seq: m.seq,
                ts: m.ts,
                off,
            });
        }
        self.msgs += 1;
        self.bytes += u64::from(m.size);
        self.last_seq = m.seq;
        self.last_ts = m.ts;
        self.end = off + u64::from(m.size);
    }

    /// Where to start reading to find `seq`: the offset of the last indexed record at or before
    /// it (or the first record).
    pub(crate) fn offset_for_seq(&self, seq: u64) -> u64 {
        let i = self.index.partition_point(|e| e.seq <= seq);
        if i == 0 {
            HEADER_LEN as u64
        } else {
            self.index[i - 1].off
        }
    }

    /// Where to start reading to find the first record at or after `ts`.
    pub(crate) fn offset_for_time(&self, ts: u64) -> u64 {
        let i = self.index.partition_point(|e| e.ts < ts);
        if i == 0 {
            HEADER_LEN as u64
        } else {
            self.index[i - 1].off
        }
    }

    /// The end of the hole starting at `off`, if recovery found one there.
    pub(crate) fn hole_at(&self, off: u64) -> Option<u64> {
        self.holes.iter().find(|h| h.0 == off).map(|h| h.1)
    }

    /// Opens and scans a segment file. `Ok(None)`: no usable header (a segment torn while being
    /// created, or damaged); the caller decides what to do with the file.
    pub(crate) fn recover(
        fs: &dyn StoreFs,
        path: &Path,
        max_record: u32,
        is_last: bool,
        report: &mut ScanReport,
    ) -> Result<Option<Self>> {
        let io = |op, e| StoreError::io(op, path, e);
        let file = fs.open(path, false).map_err(|e| io("open segment", e))?;
        let len = file.size().map_err(|e| io("stat segment", e))?;
        let mut h = [0u8; HEADER_LEN];
        let n = read_full_at(&*file, &mut h, 0).map_err(|e| io("read segment", e))?;
        let Some((seed, base_seq)) = parse_header(&h[..n]) else {
            return Ok(None);
        };
        if base_seq == 0 {
            return Ok(None);
        }
        let mut seg = Segment::empty(path.to_owned(), file.clone(), seed, base_seq);
        let mut win = Window::new(file, len);
        let mut off = HEADER_LEN as u64;
        while off < len {
            match win
                .parse(off, seed, max_record)
                .map_err(|e| io("read segment", e))?
            {
                Parsed::Record(m) if m.seq > seg.last_seq => {
                    report.missing_seqs += m.seq - seg.last_seq - 1;
                    seg.note(&m, off);
                    off += u64::from(m.size);
                    continue;
                }
                _ => {}
            }
            // No record follows the last good one here: search for the next one that checks.
            let next = win
                .resync(off + 1, seed, max_record, seg.last_seq)
                .map_err(|e| io("read segment", e))?;
            match next {
                Some(next) => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = off,
                        bytes = next - off,
                        "damaged record(s) skipped"
                    );
                    report.damaged_ranges += 1;
                    report.damaged_bytes += next - off;
                    seg.holes.push((off, next));
                    off = next;
                }
                None if is_last => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = off,
                        bytes = len - off,
                        "torn tail truncated"
                    );
                    report.truncated_bytes += len - off;
                    seg.file
                        .set_len(off)
                        .map_err(|e| io("truncate segment", e))?;
                    seg.file.sync_data().map_err(|e| io("sync segment", e))?;
                    break;
                }
                None => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = off,
                        bytes = len - off,
                        "damaged end of a closed segment skipped"
                    );
                    report.damaged_ranges += 1;
                    report.damaged_bytes += len - off;
                    seg.holes.push((off, len));
                    off = len;
                    break;
                }
            }
        }
        seg.end = off.min(len);
        Ok(Some(seg))
    }
}

/// A read window over a file during recovery: chunked reads, never sized by what it parses
/// beyond `max_record`.
struct Window {
    file: Arc<dyn StoreFile>,
    len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl Window {
    fn new(file: Arc<dyn StoreFile>, len: u64) -> Self {
        Window {
            file,
            len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Makes `[off, off + need)` (cut at the end of the file) present in `buf`.
    fn ensure(&mut self, off: u64, need: usize) -> std::io::Result<&[u8]> {
        let want_end = (off + need as u64).min(self.len);
        let have_end = self.start + self.buf.len() as u64;
        if off < self.start || want_end > have_end {
            let n = (need.max(SCAN_CHUNK) as u64).min(self.len - off) as usize;
            self.buf.resize(n, 0);
            let got = read_full_at(&*self.file, &mut self.buf, off)?;
            self.buf.truncate(got);
            self.start = off;
        }
        let from = (off - self.start) as usize;
        let to = ((want_end - self.start) as usize).min(self.buf.len());
        Ok(&self.buf[from..to.max(from)])
    }

    fn parse(&mut self, off: u64, seed: u64, max_record: u32) -> std::io::Result<Parsed> {
        let available = self.len - off;
        let mut need = 12;
        loop {
            let buf = self.ensure(off, need)?;
            match record::parse(buf, seed, max_record, available) {
                Parsed::NeedMore(n) if n > buf.len() && buf.len() >= need => need = n,
                Parsed::NeedMore(_) => return Ok(Parsed::Bad(Bad::PastEnd)),
                other => return Ok(other),
            }
        }
    }

    /// The offset of the first record at or after `from` that checks and comes after `prev`.
    fn resync(
        &mut self,
        from: u64,
        seed: u64,
        max_record: u32,
        prev: u64,
    ) -> std::io::Result<Option<u64>> {
        let mut p = from;
        while p + record::OVERHEAD as u64 <= self.len {
            if let Parsed::Record(m) = self.parse(p, seed, max_record)? {
                if m.seq > prev {
                    return Ok(Some(p));
                }
            }
            p += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::OsFs;

    fn fill(seg: &mut Segment, n: u64, payload: usize) {
        let mut buf = Vec::new();
        let mut off = seg.end;
        for i in 0..n {
            buf.clear();
            let seq = seg.last_seq + 1;
            record::encode(
                &mut buf,
                seg.seed,
                seq,
                1000 + seq,
                b"s",
                b"",
                &vec![i as u8; payload],
            );
            write_all_at(&*seg.file, &buf, off).unwrap();
            let Parsed::Record(m) = record::parse(&buf, seg.seed, 1 << 20, buf.len() as u64) else {
                panic!()
            };
            seg.note(&m, off);
            off += buf.len() as u64;
        }
    }

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn the_index_is_sparse_and_finds_sequences_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(&OsFs, dir.path(), 1).unwrap();
        fill(&mut seg, 2000, 200);
        let per_entry = seg.msgs / seg.index.len() as u64;
        assert!(per_entry > 100, "one entry per {per_entry} records");
        for seq in [1, 2, 150, 1999, 2000] {
            let off = seg.offset_for_seq(seq);
            let e = seg.index.iter().find(|e| e.off == off).map_or(1, |e| e.seq);
            assert!(e <= seq && seq - e <= per_entry + 1, "{seq} from {e}");
        }
        let off = seg.offset_for_time(1000 + 1500);
        let e = seg.index.iter().find(|e| e.off == off).unwrap();
        assert!(e.ts < 2500 && 2500 - e.ts <= per_entry + 1);
    }

    #[test]
    fn recovery_rebuilds_the_same_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(&OsFs, dir.path(), 10).unwrap();
        fill(&mut seg, 500, 100);
        let mut rep = ScanReport::default();
        let back = Segment::recover(&OsFs, &seg.path, 1 << 20, true, &mut rep)
            .unwrap()
            .unwrap();
        assert_eq!(rep, ScanReport::default());
        assert_eq!((back.base_seq, back.last_seq, back.msgs), (10, 509, 500));
        assert_eq!((back.bytes, back.end), (seg.bytes, seg.end));
        assert_eq!(back.index, seg.index);
    }

    #[test]
    fn a_bad_header_is_reported_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(&OsFs, dir.path(), 1).unwrap();
        write_all_at(&*seg.file, b"X", 3).unwrap();
        let mut rep = ScanReport::default();
        assert!(Segment::recover(&OsFs, &seg.path, 1 << 20, true, &mut rep)
            .unwrap()
            .is_none());
    }
}
