//! A connection's outbound frames, in order, URGENT ones first: encoded for a byte stream, or
//! kept as frames for an in-process link.

use crate::transport::{Io, Link};
use bytes::{Buf, Bytes, BytesMut};
use mitto_proto::{Decoder, EncodeError, Frame, Limits};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// Payloads at least this long are written from their own `Bytes`, not copied into the buffer.
const INLINE_PAYLOAD_MAX: usize = 8 * 1024;
/// The outbox's high-water mark: above it the driver takes no commands and (on the accepting
/// side) reads nothing from the peer. The outbox holds at most this plus what one frame (or
/// one command) adds.
pub const OUTBOX_HIGH_WATER: usize = 1024 * 1024;
/// At most this many slices per vectored write.
const MAX_IOVECS: usize = 64;
/// Room the outbox makes at once for runs of small frames.
pub(crate) const OUT_CHUNK: usize = 64 * 1024;

/// Frames waiting to leave, in frame order, URGENT frames first.
pub(crate) enum Outbox {
    /// A byte stream (TCP, Unix, TLS): frames encoded, written in vectored writes.
    Wire(WireOutbox),
    /// An in-process link: frames handed over as they are, in batches.
    Link(LinkOutbox),
}

impl Outbox {
    /// The outbox for `io`.
    pub(crate) fn for_io(io: &Io) -> Outbox {
        match io {
            Io::Link(_) => Outbox::Link(LinkOutbox::default()),
            _ => Outbox::Wire(WireOutbox::default()),
        }
    }

    /// Queues a frame. On a byte stream, a frame whose attached value encodes over
    /// `max_payload` is dropped (and logged): the peer's decoder would refuse it.
    pub(crate) fn push_checked(&mut self, f: &Frame, max_payload: u32) -> Result<(), EncodeError> {
        match self {
            Outbox::Wire(w) => w.push_checked(f, max_payload),
            Outbox::Link(l) => {
                l.push(f.clone());
                Ok(())
            }
        }
    }

    /// Queues a frame.
    pub(crate) fn push(&mut self, f: &Frame) -> Result<(), EncodeError> {
        match self {
            Outbox::Wire(w) => w.push(f),
            Outbox::Link(l) => {
                l.push(f.clone());
                Ok(())
            }
        }
    }

    /// Queues encoded frames (whole frames, in order) after everything queued before: as one
    /// chunk on a byte stream, decoded back into frames on a link.
    pub(crate) fn push_encoded(&mut self, b: Bytes) -> Result<(), mitto_proto::DecodeError> {
        match self {
            Outbox::Wire(w) => {
                w.push_encoded(b);
                Ok(())
            }
            Outbox::Link(l) => l.push_encoded(b),
        }
    }

    /// Bytes waiting (frames on a link count their encoded length).
    pub(crate) fn len(&self) -> usize {
        match self {
            Outbox::Wire(w) => w.len,
            Outbox::Link(l) => l.len,
        }
    }

    pub(crate) fn over_high_water(&self) -> bool {
        self.len() > OUTBOX_HIGH_WATER
    }

    /// Writes until empty or the transport is full.
    pub(crate) fn poll_flush(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match (self, io) {
            (Outbox::Link(out), Io::Link(l)) => out.poll_flush(l, cx),
            (Outbox::Wire(out), io) if !matches!(io, Io::Link(_)) => out.poll_flush(io, cx),
            _ => Poll::Ready(Err(io::Error::other(
                "an outbox of one transport was given another",
            ))),
        }
    }
}

/// Frames for an in-process link.
#[derive(Default)]
pub(crate) struct LinkOutbox {
    frames: Vec<Frame>,
    urgent: Vec<Frame>,
    /// The frames' encoded length, for the high-water mark.
    len: usize,
}

impl LinkOutbox {
    fn push(&mut self, f: Frame) {
        self.len += f.encoded_len();
        if f.is_urgent() {
            self.urgent.push(f);
        } else {
            self.frames.push(f);
        }
    }

    fn push_encoded(&mut self, b: Bytes) -> Result<(), mitto_proto::DecodeError> {
        let mut buf = BytesMut::from(b);
        // Frames this process encoded: bounded by the limits they were built under, not these.
        let mut dec = Decoder::new(Limits {
            max_payload: u32::MAX,
            max_headers: u32::MAX,
            max_subject: u16::MAX,
        });
        while let Some(f) = dec.decode(&mut buf)? {
            self.push(f);
        }
        Ok(())
    }

    fn poll_flush(&mut self, l: &mut Link, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.frames.is_empty() && self.urgent.is_empty() {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(l.poll_reserve(cx))?;
        let mut batch = std::mem::take(&mut self.urgent);
        if batch.is_empty() {
            batch = std::mem::take(&mut self.frames);
        } else {
            batch.append(&mut self.frames);
        }
        self.len = 0;
        Poll::Ready(l.send_reserved(batch))
    }
}

/// Bytes for a byte stream.
#[derive(Default)]
pub(crate) struct WireOutbox {
    /// The chunk being written (possibly partly).
    front: Bytes,
    /// Encoded URGENT frames: written as soon as the front chunk is done.
    urgent: BytesMut,
    /// Frame-aligned chunks: runs of small frames, and large payloads on their own.
    queue: VecDeque<Bytes>,
    /// Small frames being collected.
    cur: BytesMut,
    len: usize,
}

impl WireOutbox {
    fn push_checked(&mut self, f: &Frame, max_payload: u32) -> Result<(), EncodeError> {
        if f.value.is_some() {
            let mut m = f.clone();
            if let Err(e) = m.materialize() {
                tracing::warn!(error = %e, subject = m.subject.as_str(), "cannot encode an attached value; frame dropped");
                return Ok(());
            }
            if m.payload.len() > max_payload as usize {
                tracing::warn!(
                    len = m.payload.len(),
                    max_payload,
                    subject = m.subject.as_str(),
                    "an attached value encodes over the peer's payload limit; frame dropped"
                );
                return Ok(());
            }
            m.value = None;
            return self.push(&m);
        }
        self.push(f)
    }

    pub(crate) fn push(&mut self, f: &Frame) -> Result<(), EncodeError> {
        if f.value.is_some() {
            // A value attached in this process: its encoded form goes on the wire.
            let mut m = f.clone();
            if let Err(e) = m.materialize() {
                tracing::warn!(error = %e, subject = m.subject.as_str(), "cannot encode an attached value; frame dropped");
                return Ok(());
            }
            m.value = None;
            return self.push(&m);
        }
        if f.is_urgent() {
            f.encode(&mut self.urgent)?;
        } else if f.payload.len() >= INLINE_PAYLOAD_MAX {
            f.encode_head(&mut self.cur)?;
            self.queue.push_back(self.cur.split().freeze());
            self.queue.push_back(f.payload.clone());
        } else {
            let need = f.encoded_len();
            if self.cur.capacity() - self.cur.len() < need {
                // Full: what it holds becomes a chunk of its own and a new one starts, instead
                // of growing (and copying) the one being filled.
                if !self.cur.is_empty() {
                    self.queue.push_back(self.cur.split().freeze());
                }
                self.cur.reserve(need.max(OUT_CHUNK));
            }
            f.encode(&mut self.cur)?;
        }
        self.len += f.encoded_len();
        Ok(())
    }

    fn push_encoded(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if !self.cur.is_empty() {
            self.queue.push_back(self.cur.split().freeze());
        }
        self.len += b.len();
        self.queue.push_back(b);
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.front.is_empty()
            && self.urgent.is_empty()
            && self.queue.is_empty()
            && self.cur.is_empty()
    }

    fn poll_flush(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.front.is_empty() {
                self.front = if !self.urgent.is_empty() {
                    self.urgent.split().freeze()
                } else if let Some(c) = self.queue.pop_front() {
                    c
                } else if !self.cur.is_empty() {
                    self.cur.split().freeze()
                } else {
                    // Everything went to the stream; a TLS stream may still hold records it
                    // accepted while the socket was full, and nothing else would write them.
                    return Pin::new(&mut *io).poll_flush(cx);
                };
            }
            let n = if self.queue.is_empty() && self.cur.is_empty() && self.urgent.is_empty() {
                std::task::ready!(Pin::new(&mut *io).poll_write(cx, &self.front))?
            } else {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_IOVECS);
                slices.push(IoSlice::new(&self.front));
                if !self.urgent.is_empty() {
                    slices.push(IoSlice::new(&self.urgent));
                }
                for c in self.queue.iter().take(MAX_IOVECS - 3) {
                    slices.push(IoSlice::new(c));
                }
                if !self.cur.is_empty() && self.queue.len() <= MAX_IOVECS - 3 {
                    slices.push(IoSlice::new(&self.cur));
                }
                std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        let k = n.min(self.front.len());
        self.front.advance(k);
        n -= k;
        if n == 0 {
            return;
        }
        let k = n.min(self.urgent.len());
        self.urgent.advance(k);
        n -= k;
        while n > 0 {
            match self.queue.front_mut() {
                Some(c) if c.len() <= n => {
                    n -= c.len();
                    self.queue.pop_front();
                }
                Some(c) => {
                    c.advance(n);
                    return;
                }
                None => {
                    self.cur.advance(n);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mitto_proto::Subject;

    fn drain(out: &mut WireOutbox) -> Vec<u8> {
        let mut v = Vec::new();
        loop {
            if out.front.is_empty() {
                out.front = if !out.urgent.is_empty() {
                    out.urgent.split().freeze()
                } else if let Some(c) = out.queue.pop_front() {
                    c
                } else if !out.cur.is_empty() {
                    out.cur.split().freeze()
                } else {
                    return v;
                };
            }
            // write 7 bytes at a time, as a slow socket would
            let n = out.front.len().min(7);
            v.extend_from_slice(&out.front[..n]);
            out.consume(n);
        }
    }

    #[test]
    fn outbox_keeps_frame_order_and_puts_urgent_first() {
        let mut out = WireOutbox::default();
        let a = Frame::publish(Subject::literal("a").unwrap(), "1");
        let big = Frame::publish(Subject::literal("b").unwrap(), vec![9u8; 20_000]);
        let u = Frame::publish(Subject::literal("u").unwrap(), "!")
            .with_flags(mitto_proto::Flags::URGENT);
        out.push(&a).unwrap();
        out.push(&big).unwrap();
        out.push(&u).unwrap();
        out.push(&a).unwrap();
        assert_eq!(
            out.len,
            a.encoded_len() * 2 + big.encoded_len() + u.encoded_len()
        );
        let bytes = drain(&mut out);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.push(f.subject.as_str().to_owned());
        }
        assert_eq!(got, ["u", "a", "b", "a"]);
        assert!(out.is_empty());
    }

    #[test]
    fn small_frames_past_a_chunk_start_a_new_chunk_in_order_without_copying() {
        let mut out = WireOutbox::default();
        let n = 3 * OUT_CHUNK / 160;
        for i in 0..n {
            let f =
                Frame::publish(Subject::literal("s").unwrap(), vec![0u8; 128]).with_id(i as u64);
            out.push(&f).unwrap();
        }
        assert!(
            out.queue.len() >= 2,
            "full chunks were set aside, not grown: {}",
            out.queue.len()
        );
        let bytes = drain(&mut out);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = Decoder::default();
        let mut ids = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            ids.push(f.id);
        }
        assert_eq!(ids, (0..n as u64).collect::<Vec<_>>());
        assert!(out.is_empty());
    }

    #[test]
    fn encoded_frames_on_a_link_are_handed_over_as_frames_in_order() {
        let mut out = Outbox::Link(LinkOutbox::default());
        let s = |x: &str| Subject::literal(x).unwrap();
        out.push(&Frame::publish(s("a"), "1")).unwrap();
        let mut encoded = BytesMut::new();
        Frame::publish(s("b"), "2").encode(&mut encoded).unwrap();
        Frame::publish(s("c"), "3").encode(&mut encoded).unwrap();
        out.push_encoded(encoded.freeze()).unwrap();
        let u = Frame::publish(s("u"), "!").with_flags(mitto_proto::Flags::URGENT);
        out.push(&u).unwrap();
        let Outbox::Link(l) = &out else {
            unreachable!()
        };
        let names = |v: &[Frame]| {
            v.iter()
                .map(|f| f.subject.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&l.frames),
            ["a", "b", "c"],
            "nothing dropped, order kept"
        );
        assert_eq!(names(&l.urgent), ["u"]);
        assert!(out.len() > 0);
        let mut bad = Outbox::Link(LinkOutbox::default());
        assert!(
            bad.push_encoded(Bytes::from_static(&[0xff; 40])).is_err(),
            "bytes that are no frames are an error, not silently dropped"
        );
    }
}
