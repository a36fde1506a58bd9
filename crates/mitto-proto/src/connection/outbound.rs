//! The one ordered outbound path of a connection.
//!
//! Every frame the connection sends is queued here, and the driver takes everything queued at
//! once: as encoded bytes in a [`Transmit`] (large payloads as their own `Bytes`, for vectored
//! writes without a copy) or, on an in-process link, as frames.
//!
//! # The overtaking rule
//!
//! There are two lanes, each first in, first out; the driver takes the urgent lane first, then
//! the normal one. A frame goes to the urgent lane when it carries the URGENT flag, or when it
//! is a CANCEL of a call whose REQUEST the driver has already taken (a CANCEL of a call whose
//! REQUEST is still queued withdraws that REQUEST instead, and nothing is sent). Everything
//! else keeps the order it was queued in. The frames of one call travel in the lane of its
//! REQUEST: a call's STREAM frames carry its REQUEST's URGENT flag, and the callee's answers
//! the flag of the REQUEST it answers, so no frame of a call overtakes the frame that opened
//! it. CLOSE is the last frame: nothing is queued after it.

use crate::frame::Frame;
use crate::header::HEADER_LEN;
use crate::headers::{Headers, WellKnown};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Instant;

/// Payloads at least this long are handed to the driver as their own `Bytes`, not copied.
const INLINE_PAYLOAD_MAX: usize = 8 * 1024;
/// Room a [`Transmit`] makes at once for runs of small frames.
const CHUNK: usize = 64 * 1024;
/// An encoded `deadline` header entry: key, length, u64.
const DEADLINE_ENTRY: usize = 11;

/// Which lane a frame waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Lane {
    #[default]
    Normal = 0,
    Urgent = 1,
}

/// Where a queued frame is: its lane and its number in that lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    lane: Lane,
    seq: u64,
}

struct Queued {
    frame: Frame,
    /// A REQUEST's deadline: its `deadline` header is written when the driver takes it, with
    /// the time left then.
    deadline: Option<Instant>,
    len: usize,
    owed: bool,
    withdrawn: bool,
}

/// Frames waiting for the driver.
#[derive(Default)]
pub(crate) struct Outbound {
    lanes: [VecDeque<Queued>; 2],
    /// Frames taken from each lane so far (the number of the frame at its front).
    taken: [u64; 2],
    /// Bytes queued.
    bytes: usize,
    /// Bytes of answers the connection owes on its own, queued.
    owed: usize,
    /// CLOSE is queued: nothing more is.
    closed: bool,
    /// A command was refused for lack of room since the driver last took the queue.
    refused: bool,
}

impl Outbound {
    /// Bytes queued.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of owed answers queued.
    pub(crate) fn owed(&self) -> usize {
        self.owed
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes == 0 && self.lanes.iter().all(VecDeque::is_empty)
    }

    /// Whether CLOSE is queued (or taken).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a new operation of `len` bytes may be queued under `max` bytes; notes a refusal
    /// so that the driver's next take reports the room.
    pub(crate) fn has_room(&mut self, len: usize, max: usize) -> bool {
        let room = self.bytes == 0 || self.bytes + len <= max;
        self.refused |= !room;
        room
    }

    /// Queues `frame` (URGENT ones in the urgent lane). `owed`: an answer the connection sends
    /// on its own, counted against its own bound. Nothing is queued after CLOSE.
    pub(crate) fn push(&mut self, frame: Frame, deadline: Option<Instant>, owed: bool) -> Pos {
        let lane = if frame.is_urgent() {
            Lane::Urgent
        } else {
            Lane::Normal
        };
        self.push_in(lane, frame, deadline, owed)
    }

    /// Queues a CANCEL for a call whose REQUEST went to `request`: withdraws the REQUEST if it
    /// is still queued (nothing sent: `false`), else queues the CANCEL in the urgent lane.
    pub(crate) fn cancel(&mut self, request: Pos, id: u64) -> bool {
        if self.withdraw(request) {
            return false;
        }
        self.push_in(Lane::Urgent, Frame::cancel(id), None, false);
        true
    }

    /// Queues CLOSE, the last frame.
    pub(crate) fn push_close(&mut self, frame: Frame) {
        self.push_in(Lane::Normal, frame, None, true);
        self.closed = true;
    }

    fn push_in(&mut self, lane: Lane, frame: Frame, deadline: Option<Instant>, owed: bool) -> Pos {
        let q = &mut self.lanes[lane as usize];
        let seq = self.taken[lane as usize] + q.len() as u64;
        if self.closed {
            return Pos { lane, seq };
        }
        let len = frame.encoded_len()
            + if deadline.is_some() {
                DEADLINE_ENTRY
            } else {
                0
            };
        self.bytes += len;
        if owed {
            self.owed += len;
        }
        q.push_back(Queued {
            frame,
            deadline,
            len,
            owed,
            withdrawn: false,
        });
        Pos { lane, seq }
    }

    /// Whether the frame at `pos` was taken by the driver.
    #[cfg(test)]
    fn is_taken(&self, pos: Pos) -> bool {
        pos.seq < self.taken[pos.lane as usize]
    }

    /// Takes the frame at `pos` back if the driver has not taken it yet.
    fn withdraw(&mut self, pos: Pos) -> bool {
        let l = pos.lane as usize;
        let Some(i) = pos.seq.checked_sub(self.taken[l]) else {
            return false;
        };
        match self.lanes[l].get_mut(i as usize) {
            Some(q) if !q.withdrawn => {
                q.withdrawn = true;
                self.bytes -= q.len;
                if q.owed {
                    self.owed -= q.len;
                }
                true
            }
            _ => false,
        }
    }

    /// Drops everything queued (the transport is gone).
    pub(crate) fn clear(&mut self) {
        for (l, q) in self.lanes.iter_mut().enumerate() {
            self.taken[l] += q.len() as u64;
            q.clear();
        }
        self.bytes = 0;
        self.owed = 0;
        self.closed = true;
    }

    /// Takes every queued frame, urgent lane first, and hands each to `f` with the time left of
    /// its deadline. Returns whether a refused command may now be retried.
    fn take(&mut self, now: Instant, mut f: impl FnMut(Frame, Option<u64>)) -> bool {
        for l in [Lane::Urgent as usize, Lane::Normal as usize] {
            self.taken[l] += self.lanes[l].len() as u64;
            while let Some(q) = self.lanes[l].pop_front() {
                if q.withdrawn {
                    continue;
                }
                let left = q.deadline.map(|d| {
                    u64::try_from(d.saturating_duration_since(now).as_micros()).unwrap_or(u64::MAX)
                });
                f(q.frame, left);
            }
        }
        self.bytes = 0;
        self.owed = 0;
        std::mem::take(&mut self.refused)
    }

    /// Encodes every queued frame into `t`. Returns whether a refused command may be retried.
    pub(crate) fn take_bytes(&mut self, now: Instant, t: &mut Transmit) -> bool {
        self.take(now, |f, left| t.push(&f, left))
    }

    /// Moves every queued frame into `out` (the `deadline` header written in). Returns whether
    /// a refused command may be retried.
    pub(crate) fn take_frames(&mut self, now: Instant, out: &mut Vec<Frame>) -> bool {
        self.take(now, |mut f, left| {
            if let Some(us) = left {
                f.headers = with_deadline(&f.headers, us);
            }
            out.push(f);
        })
    }
}

/// `headers` with a `deadline` entry of `us` microseconds in front.
fn with_deadline(headers: &Headers, us: u64) -> Headers {
    let mut b = BytesMut::with_capacity(DEADLINE_ENTRY + headers.as_bytes().len());
    put_deadline(&mut b, us);
    b.put_slice(headers.as_bytes());
    // A deadline entry in front of a valid block is a valid block.
    Headers::from_wire(b.freeze()).unwrap_or_else(|_| headers.clone())
}

fn put_deadline(b: &mut BytesMut, us: u64) {
    b.put_u8(WellKnown::Deadline as u8);
    b.put_u16(8);
    b.put_u64(us);
}

/// Encoded frames for the driver to write, in order: frame-aligned chunks, large payloads in
/// their own `Bytes` (write them with [`Transmit::io_slices`] and [`Transmit::advance`]).
#[derive(Default, Debug)]
pub struct Transmit {
    chunks: VecDeque<Bytes>,
    cur: BytesMut,
    len: usize,
}

impl Transmit {
    /// An empty one.
    pub fn new() -> Transmit {
        Transmit::default()
    }

    /// Bytes to write.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `dst` with slices of what is left to write, in order; the number filled.
    pub fn io_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let parts = self
            .chunks
            .iter()
            .map(|c| &c[..])
            .chain(Some(&self.cur[..]));
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(parts.filter(|p| !p.is_empty())) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    /// Forgets the first `n` bytes (written).
    pub fn advance(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            match self.chunks.front_mut() {
                Some(c) if c.len() <= n => {
                    n -= c.len();
                    self.chunks.pop_front();
                }
                Some(c) => {
                    c.advance(n);
                    return;
                }
                None => {
                    self.cur.advance(n.min(self.cur.len()));
                    return;
                }
            }
        }
    }

    /// Moves everything left to write into `dst` (a copy; for simple drivers and tests).
    pub fn drain_into(&mut self, dst: &mut BytesMut) {
        for c in self.chunks.drain(..) {
            dst.extend_from_slice(&c);
        }
        dst.extend_from_slice(&self.cur);
        self.cur.clear();
        self.len = 0;
    }

    /// Appends `f`, with a `deadline` header entry of `left` microseconds in front of its
    /// headers if given.
    fn push(&mut self, f: &Frame, left: Option<u64>) {
        let extra = if left.is_some() { DEADLINE_ENTRY } else { 0 };
        // Every frame queued was checked against the agreed limits, far below the header's
        // field sizes: it has a header.
        let Ok(mut h) = f.header() else { return };
        h.headers_len += extra as u32;
        let head = HEADER_LEN + f.subject.len() + extra + f.headers.as_bytes().len();
        let inline = f.payload.len() < INLINE_PAYLOAD_MAX;
        let need = head + if inline { f.payload.len() } else { 0 };
        if self.cur.capacity() - self.cur.len() < need {
            // Full: what it holds becomes a chunk of its own, instead of growing (and copying)
            // the one being filled.
            if !self.cur.is_empty() {
                self.chunks.push_back(self.cur.split().freeze());
            }
            self.cur.reserve(need.max(CHUNK));
        }
        self.cur.put_slice(&h.to_bytes());
        self.cur.put_slice(f.subject.as_bytes());
        if let Some(us) = left {
            put_deadline(&mut self.cur, us);
        }
        self.cur.put_slice(f.headers.as_bytes());
        if inline {
            self.cur.put_slice(&f.payload);
        } else {
            self.chunks.push_back(self.cur.split().freeze());
            self.chunks.push_back(f.payload.clone());
        }
        self.len += head + f.payload.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoder, Flags, FrameType, Status, Subject};
    use std::time::Duration;

    fn publish(s: &str, urgent: bool) -> Frame {
        let f = Frame::publish(Subject::literal(s).unwrap(), "x");
        if urgent {
            f.with_flags(Flags::URGENT)
        } else {
            f
        }
    }

    fn decode_all(t: &mut Transmit) -> Vec<Frame> {
        let mut b = BytesMut::new();
        t.drain_into(&mut b);
        let mut dec = Decoder::default();
        std::iter::from_fn(|| dec.decode(&mut b).unwrap()).collect()
    }

    #[test]
    fn urgent_frames_overtake_normal_ones_and_each_lane_keeps_its_order() {
        let mut o = Outbound::default();
        let now = Instant::now();
        for (s, u) in [("a", false), ("u1", true), ("b", false), ("u2", true)] {
            o.push(publish(s, u), None, false);
        }
        let mut t = Transmit::new();
        o.take_bytes(now, &mut t);
        let got: Vec<String> = decode_all(&mut t)
            .iter()
            .map(|f| f.subject.as_str().to_owned())
            .collect();
        assert_eq!(got, ["u1", "u2", "a", "b"]);
        assert!(o.is_empty());
    }

    #[test]
    fn a_cancel_withdraws_a_queued_request_and_overtakes_a_taken_one() {
        let mut o = Outbound::default();
        let now = Instant::now();
        let req = Frame::request(7, Subject::literal("m").unwrap(), "");
        let pos = o.push(req.clone(), None, false);
        o.push(publish("after", false), None, false);
        assert!(!o.cancel(pos, 7), "still queued: withdrawn, nothing sent");
        let mut t = Transmit::new();
        o.take_bytes(now, &mut t);
        let got = decode_all(&mut t);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].subject.as_str(), "after");
        // Taken: the CANCEL goes ahead of what was queued after the REQUEST.
        let pos = o.push(req.with_id(8), None, false);
        o.take_bytes(now, &mut t);
        decode_all(&mut t);
        assert!(o.is_taken(pos));
        o.push(publish("queued", false), None, false);
        assert!(o.cancel(pos, 8));
        o.take_bytes(now, &mut t);
        let got = decode_all(&mut t);
        assert_eq!(got[0].frame_type, FrameType::Cancel);
        assert_eq!(got[0].id, 8);
        assert_eq!(got[1].subject.as_str(), "queued");
    }

    #[test]
    fn the_deadline_header_carries_the_time_left_when_the_driver_takes_the_request() {
        let mut o = Outbound::default();
        let t0 = Instant::now();
        let h = Headers::builder().insert_custom("k", "v").unwrap().build();
        let req = Frame::request(1, Subject::literal("m").unwrap(), "p").with_headers(h);
        o.push(req.clone(), Some(t0 + Duration::from_millis(250)), false);
        o.push(req, Some(t0 + Duration::from_millis(250)), false);
        let queued = o.bytes();
        let mut t = Transmit::new();
        o.take_bytes(t0 + Duration::from_millis(50), &mut t);
        assert_eq!(t.len(), queued, "the count included the deadline entry");
        let got = decode_all(&mut t);
        assert_eq!(got[0].headers.deadline(), Some(Duration::from_millis(200)));
        assert_eq!(got[0].headers.get_custom("k"), Some(&b"v"[..]));
        let mut frames = Vec::new();
        o.push(got[1].clone(), Some(t0), false);
        o.take_frames(t0 + Duration::from_secs(1), &mut frames);
        assert_eq!(frames[0].headers.deadline(), Some(Duration::ZERO));
    }

    #[test]
    fn large_payloads_are_chunks_of_their_own_and_advance_crosses_chunks() {
        let mut o = Outbound::default();
        let big = Frame::publish(Subject::literal("b").unwrap(), vec![5u8; 20_000]);
        o.push(publish("a", false), None, false);
        o.push(big.clone(), None, false);
        o.push(publish("c", false), None, false);
        let mut t = Transmit::new();
        o.take_bytes(Instant::now(), &mut t);
        {
            let mut slices = [IoSlice::new(&[]); 8];
            let n = t.io_slices(&mut slices);
            assert_eq!(n, 3, "head chunk, the payload itself, the rest");
            assert!(std::ptr::eq(slices[1].as_ptr(), big.payload.as_ptr()));
        }
        let total = t.len();
        let mut written = BytesMut::new();
        while !t.is_empty() {
            let k = {
                let mut slices = [IoSlice::new(&[]); 8];
                t.io_slices(&mut slices);
                let k = slices[0].len().min(777);
                written.extend_from_slice(&slices[0][..k]);
                k
            };
            t.advance(k);
        }
        assert_eq!(written.len(), total);
        let mut dec = Decoder::default();
        let subjects: Vec<String> = std::iter::from_fn(|| dec.decode(&mut written).unwrap())
            .map(|f| f.subject.as_str().to_owned())
            .collect();
        assert_eq!(subjects, ["a", "b", "c"]);
    }

    #[test]
    fn nothing_is_queued_after_close_and_room_is_reported_after_a_refusal() {
        let mut o = Outbound::default();
        o.push(publish("a", false), None, false);
        assert!(!o.has_room(10_000, 100), "over the bound");
        o.push_close(Frame::close(Status::OK, ""));
        o.push(Frame::ping(1), None, true);
        let mut t = Transmit::new();
        assert!(o.take_bytes(Instant::now(), &mut t), "room again");
        let got = decode_all(&mut t);
        assert_eq!(got.last().unwrap().frame_type, FrameType::Close);
        assert_eq!(got.len(), 2);
    }
}
