//! What readers and the writer share: the segments, the counts, and the head of the stream,
//! which retention and purge move forward.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;

use crate::config::Retention;
use crate::fs::read_full_at;
use crate::record::OVERHEAD;
use crate::segment::Segment;

/// How many bytes of the head segment are read at once to learn its records' sizes and times.
const HEAD_CHUNK: usize = 64 * 1024;

/// Counters since open.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) appended: u64,
    pub(crate) append_errors: u64,
    pub(crate) rejected_full: u64,
    pub(crate) removed: u64,
    pub(crate) fsyncs: u64,
    pub(crate) batches: u64,
    pub(crate) segments_deleted: u64,
    pub(crate) duplicates: u64,
}

/// One record at the head, as retention needs it.
#[derive(Debug, Clone, Copy)]
struct HeadRec {
    seq: u64,
    ts: u64,
    size: u32,
    off: u64,
}

/// Where the first live record is in the first segment.
#[derive(Debug, Default)]
pub(crate) struct Head {
    off: u64,
    dropped_msgs: u64,
    dropped_bytes: u64,
    cache: VecDeque<HeadRec>,
    /// Offset of the next record after the cached ones.
    read_to: u64,
}

/// The state behind the stream's lock. Only the writer thread changes it.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Ascending by base sequence; the last one is the segment being written. Never empty.
    pub(crate) segs: Vec<Segment>,
    /// Nothing below it is kept (a purge sets it; retention moves it).
    pub(crate) floor: u64,
    pub(crate) first_seq: u64,
    pub(crate) first_ts: u64,
    pub(crate) last_seq: u64,
    pub(crate) last_ts: u64,
    pub(crate) msgs: u64,
    pub(crate) bytes: u64,
    pub(crate) head: Head,
    /// A sync failed: no more writes until reopened.
    pub(crate) failed: bool,
    pub(crate) closed: bool,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn new(segs: Vec<Segment>, floor: u64) -> Self {
        let last = segs.last().map_or(0, |s| s.last_seq);
        let last_ts = segs.iter().map(|s| s.last_ts).max().unwrap_or(0);
        let head_off = crate::segment::HEADER_LEN as u64;
        Shared {
            msgs: segs.iter().map(|s| s.msgs).sum(),
            bytes: segs.iter().map(|s| s.bytes).sum(),
            segs,
            floor,
            first_seq: 0,
            first_ts: 0,
            last_seq: last,
            last_ts,
            head: Head {
                off: head_off,
                read_to: head_off,
                ..Head::default()
            },
            failed: false,
            closed: false,
            counters: Counters::default(),
        }
    }

    /// The first segment's next record at the head, reading ahead when the cache is empty.
    fn peek(&mut self) -> io::Result<Option<HeadRec>> {
        if let Some(r) = self.head.cache.front() {
            return Ok(Some(*r));
        }
        let Some(seg) = self.segs.first() else {
            return Ok(None);
        };
        let mut off = self.head.read_to.max(self.head.off);
        if let Some(end) = seg.hole_at(off) {
            off = end;
            self.head.off = self.head.off.max(end);
        }
        if off >= seg.end {
            return Ok(None);
        }
        let want = ((seg.end - off) as usize).min(HEAD_CHUNK);
        let mut buf = vec![0u8; want.max(OVERHEAD)];
        let n = read_full_at(&*seg.file, &mut buf, off)?;
        let mut p = 0usize;
        while p + OVERHEAD <= n {
            let at = off + p as u64;
            if p > 0 && seg.hole_at(at).is_some() {
                break;
            }
            let len = u32::from_le_bytes(buf[p + 8..p + 12].try_into().unwrap_or_default());
            let size = u64::from(len) + 12;
            if size < OVERHEAD as u64 || at + size > seg.end {
                // Only our own records are here; a bad length means the file changed under us.
                tracing::error!(segment = %seg.path.display(), offset = at, "unreadable head record");
                self.head.off = seg.end;
                break;
            }
            let word = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap_or_default());
            self.head.cache.push_back(HeadRec {
                seq: word(p + 12),
                ts: word(p + 20),
                size: size as u32,
                off: at,
            });
            p += size as usize;
        }
        self.head.read_to = off + p as u64;
        if let Some(end) = self.segs[0].hole_at(self.head.read_to) {
            self.head.read_to = end;
        }
        Ok(self.head.cache.front().copied())
    }

    fn pop(&mut self, r: HeadRec) {
        self.head.cache.pop_front();
        self.head.off = r.off + u64::from(r.size);
        self.head.dropped_msgs += 1;
        self.head.dropped_bytes += u64::from(r.size);
        self.msgs = self.msgs.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(u64::from(r.size));
        self.floor = self.floor.max(r.seq + 1);
        self.counters.removed += 1;
    }

    /// Drops the first segment whole (it is not the one being written).
    fn drop_first_segment(&mut self, delete: &mut Vec<PathBuf>) {
        let seg = self.segs.remove(0);
        let gone = seg.msgs.saturating_sub(self.head.dropped_msgs);
        self.msgs = self.msgs.saturating_sub(gone);
        let bytes = seg.bytes.saturating_sub(self.head.dropped_bytes);
        self.bytes = self.bytes.saturating_sub(bytes);
        self.counters.removed += gone;
        self.floor = self.floor.max(seg.last_seq + 1);
        delete.push(seg.path);
        let off = crate::segment::HEADER_LEN as u64;
        self.head = Head {
            off,
            read_to: off,
            ..Head::default()
        };
    }

    /// Removes what is below the floor and what the retention limits exclude at `now_ns`;
    /// returns the segment files to delete (no longer referenced).
    pub(crate) fn enforce(&mut self, ret: &Retention, now_ns: u64) -> io::Result<Vec<PathBuf>> {
        let mut delete = Vec::new();
        loop {
            if self.segs.len() > 1 {
                let first = &self.segs[0];
                if first.last_seq < self.floor || first.msgs == self.head.dropped_msgs {
                    self.drop_first_segment(&mut delete);
                    continue;
                }
            }
            let Some(r) = self.peek()? else {
                if self.segs.len() > 1 {
                    // What is left of the first segment is unreadable: skip it whole.
                    self.drop_first_segment(&mut delete);
                    continue;
                }
                break;
            };
            let over = r.seq < self.floor
                || ret.max_msgs.is_some_and(|m| self.msgs > m)
                || ret.max_bytes.is_some_and(|b| self.bytes > b)
                || ret.max_age.is_some_and(|a| {
                    r.ts.saturating_add(u64::try_from(a.as_nanos()).unwrap_or(u64::MAX)) <= now_ns
                });
            if !over {
                break;
            }
            self.pop(r);
        }
        self.counters.segments_deleted += delete.len() as u64;
        match self.peek()? {
            Some(r) if self.msgs > 0 => {
                self.first_seq = r.seq;
                self.first_ts = r.ts;
            }
            _ => {
                self.first_seq = self.last_seq + 1;
                self.first_ts = 0;
            }
        }
        Ok(delete)
    }

    /// The end of the damaged stretch at `off` in the segment starting at `base_seq`, if any.
    pub(crate) fn hole_end(&self, base_seq: u64, off: u64) -> Option<u64> {
        let i = self.segs.partition_point(|g| g.base_seq < base_seq);
        self.segs
            .get(i)
            .filter(|g| g.base_seq == base_seq)
            .and_then(|g| g.hole_at(off))
    }

    /// The active segment.
    pub(crate) fn active(&self) -> &Segment {
        &self.segs[self.segs.len() - 1]
    }

    pub(crate) fn active_mut(&mut self) -> &mut Segment {
        let n = self.segs.len() - 1;
        &mut self.segs[n]
    }

    /// Index of the segment that holds `seq` or, past its end, the next one.
    pub(crate) fn segment_for(&self, seq: u64) -> usize {
        let i = self.segs.partition_point(|s| s.base_seq <= seq);
        i.saturating_sub(1)
    }
}
