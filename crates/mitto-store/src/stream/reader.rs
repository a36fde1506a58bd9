//! Reading a stream from a position: one read per chunk of the log, records handed out as
//! slices of that chunk (the payload is copied once, from the file).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Inner;
use crate::error::{Result, StoreError};
use crate::fs::read_full_at;
use crate::record::{self, Bad, Parsed, StoredMessage};

/// Bytes read from the log at once (more when one record is larger).
const READ_CHUNK: usize = 256 * 1024;
/// What a single lookup reads: the index is this close, and most records are smaller.
const LOOKUP_CHUNK: usize = 2 * crate::segment::INDEX_EVERY as usize;

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StartAt {
    /// The oldest message kept.
    First,
    /// The newest message stored when the reader starts.
    Last,
    /// Only messages stored after the reader starts.
    New,
    /// The message with this sequence, or the next one kept.
    Seq(u64),
    /// The first message stored at or after this time (ns since the Unix epoch).
    Time(u64),
}

/// A chunk of one segment.
struct Chunk {
    seed: u64,
    base_seq: u64,
    buf: Bytes,
    /// File offset of `buf[0]`.
    off: u64,
    pos: usize,
    /// Whether `buf` reaches the end of the segment's durable records.
    at_end: bool,
}

/// A cursor over a stream. [`Reader::next_message`] returns `Ok(None)` once it has caught up
/// with the last durable record; later calls return what was appended meanwhile. It is also an
/// [`Iterator`] that ends (for now) when caught up.
pub struct Reader {
    inner: Arc<Inner>,
    next_seq: u64,
    /// Skip records stored before this time (a `StartAt::Time` not reached yet).
    not_before: u64,
    chunk: Option<Chunk>,
    chunk_size: usize,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Reader {
    pub(super) fn new(inner: Arc<Inner>, start: StartAt) -> Self {
        let mut r = Reader {
            inner,
            next_seq: 1,
            not_before: 0,
            chunk: None,
            chunk_size: READ_CHUNK,
        };
        r.seek(start);
        r
    }

    /// A reader for one lookup: it reads little past the record.
    pub(super) fn for_lookup(inner: Arc<Inner>, start: StartAt) -> Self {
        let mut r = Reader::new(inner, start);
        r.chunk_size = LOOKUP_CHUNK;
        r
    }

    /// The sequence the reader returns next (or the first kept after it).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Moves the reader.
    pub fn seek(&mut self, start: StartAt) {
        let s = self.inner.shared();
        self.not_before = 0;
        self.chunk = None;
        self.next_seq = match start {
            StartAt::First => s.first_seq,
            StartAt::Last => s.last_seq.max(s.first_seq),
            StartAt::New => s.last_seq + 1,
            StartAt::Seq(n) => n.max(1),
            StartAt::Time(t) => {
                self.not_before = t;
                // The first segment with a record at or after `t`; its index narrows it down.
                let i = s.segs.partition_point(|g| g.msgs == 0 || g.last_ts < t);
                match s.segs.get(i) {
                    Some(g) => {
                        let off = g.offset_for_time(t);
                        g.index
                            .iter()
                            .find(|e| e.off == off)
                            .map_or(g.base_seq, |e| e.seq)
                    }
                    None => s.last_seq + 1,
                }
            }
        };
    }

    /// The next message, `Ok(None)` when caught up. A record damaged since the stream was
    /// opened is reported once as [`StoreError::Corrupt`]; the reader then goes on after it.
    pub fn next_message(&mut self) -> Result<Option<StoredMessage>> {
        let max = self.inner.cfg.max_record_size;
        loop {
            let mut resume = None;
            let mut need = 0;
            if let Some(c) = &mut self.chunk {
                let at = c.off + c.pos as u64;
                if c.pos < c.buf.len() {
                    let rest = &c.buf[c.pos..];
                    let parsed = record::parse(rest, c.seed, max, rest.len() as u64);
                    if !matches!(parsed, Parsed::Record(_)) {
                        // A stretch recovery skipped: go on after it.
                        let hole = self.inner.shared().hole_end(c.base_seq, at);
                        if let Some(end) = hole {
                            let base = c.base_seq;
                            if !self.read(Some((base, end)), 0)? {
                                return Ok(None);
                            }
                            continue;
                        }
                    }
                    match parsed {
                        Parsed::Record(m) => {
                            let start = c.pos;
                            c.pos += m.size as usize;
                            if m.seq < self.next_seq || m.ts < self.not_before {
                                continue;
                            }
                            self.not_before = 0;
                            self.next_seq = m.seq + 1;
                            return Ok(Some(m.message(&c.buf, start)));
                        }
                        Parsed::Bad(Bad::PastEnd) | Parsed::NeedMore(_) if !c.at_end => {
                            // The chunk ends inside this record: read again from it.
                            need = if rest.len() >= 12 {
                                u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize
                                    + 12
                            } else {
                                12
                            };
                        }
                        _ => {
                            let base = c.base_seq;
                            return self.damaged(base, at);
                        }
                    }
                }
                resume = Some((c.base_seq, at));
            }
            if !self.read(resume, need)? {
                return Ok(None);
            }
        }
    }

    /// Reads the next chunk, from `resume` if it is still in the segment `next_seq` is in.
    /// `false`: nothing more is durable yet.
    fn read(&mut self, mut resume: Option<(u64, u64)>, need: usize) -> Result<bool> {
        loop {
            let (file, seed, base_seq, off, len, at_end) = {
                let s = self.inner.shared();
                if self.next_seq < s.first_seq {
                    self.next_seq = s.first_seq;
                    resume = None;
                }
                if self.next_seq > s.last_seq {
                    self.chunk = None;
                    return Ok(false);
                }
                let i = s.segment_for(self.next_seq);
                let g = &s.segs[i];
                let mut off = match resume {
                    Some((base, off)) if base == g.base_seq => off,
                    _ => g.offset_for_seq(self.next_seq),
                };
                while let Some(end) = g.hole_at(off) {
                    off = end;
                }
                if off >= g.end {
                    self.chunk = None;
                    match s.segs.get(i + 1) {
                        Some(n) => {
                            self.next_seq = self.next_seq.max(n.base_seq);
                            resume = None;
                            continue;
                        }
                        None => return Ok(false),
                    }
                }
                let len = ((g.end - off) as usize).min(self.chunk_size.max(need));
                let at_end = off + len as u64 == g.end;
                (g.file.clone(), g.seed, g.base_seq, off, len, at_end)
            };
            let mut buf = vec![0u8; len];
            let n = read_full_at(&*file, &mut buf, off)
                .map_err(|e| StoreError::io("read segment", self.inner.seg_dir.clone(), e))?;
            buf.truncate(n);
            self.chunk = Some(Chunk {
                seed,
                base_seq,
                buf: Bytes::from(buf),
                off,
                pos: 0,
                at_end: at_end && n == len,
            });
            return Ok(true);
        }
    }

    /// A record that no longer checks: report it, and go on from the next indexed record.
    fn damaged(&mut self, base_seq: u64, at: u64) -> Result<Option<StoredMessage>> {
        self.chunk = None;
        let path = {
            let s = self.inner.shared();
            let i = s.segs.partition_point(|g| g.base_seq < base_seq);
            match s.segs.get(i).filter(|g| g.base_seq == base_seq) {
                Some(g) => {
                    let next = g
                        .index
                        .iter()
                        .find(|e| e.off > at)
                        .map_or(g.last_seq + 1, |e| e.seq);
                    self.next_seq = self.next_seq.max(next);
                    g.path.clone()
                }
                None => self.inner.seg_dir.clone(),
            }
        };
        tracing::error!(segment = %path.display(), offset = at, "damaged record skipped by a reader");
        Err(StoreError::Corrupt {
            path,
            reason: format!("record at offset {at} does not check"),
        })
    }
}

impl Iterator for Reader {
    type Item = Result<StoredMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_message().transpose()
    }
}
