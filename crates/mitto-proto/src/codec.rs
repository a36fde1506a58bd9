//! The streaming decoder, with the tokio-util contract: `Ok(None)` means "need more bytes",
//! `Ok(Some(frame))` one frame, `Err` a [`DecodeError`].

use crate::error::{DecodeError, DecodeErrorKind};
use crate::frame::Frame;
use crate::header::{Header, HEADER_LEN, MAGIC};
use crate::negotiate::Limits;
use crate::subject::SubjectCache;
use bytes::{Buf, BytesMut};

#[derive(Clone, Debug)]
enum State {
    /// Waiting for a header.
    Head,
    /// Throwing away the rest of an oversize frame, without buffering it.
    Discard(u64),
    /// A fatal error happened; the stream cannot be trusted any more.
    Failed(DecodeError),
}

/// Splits a byte stream into frames.
///
/// Every length in a header is checked against the [`Limits`] *before* any buffer grows for it,
/// so a peer can never make this side allocate more than the limits allow. A frame over a limit
/// is reported at once (so the peer hears about it promptly) and its bytes are then skipped as
/// they arrive, without being buffered. A frame that is complete but invalid is consumed and
/// reported; decoding goes on with the next frame. Only framing errors
/// ([`DecodeError::is_fatal`]) stop the decoder for good.
///
/// A frame within the limits is buffered as its bytes arrive: the decoder never reserves room
/// for what a header declares, only for at most [`Decoder::RESERVE_AHEAD`] bytes of it at a
/// time, so a peer that sends headers of large frames and then stalls holds no more memory
/// than it has actually sent.
///
/// ```
/// use bytes::BytesMut;
/// use mitto_proto::{Decoder, Frame, Subject};
///
/// let mut buf = BytesMut::new();
/// Frame::publish(Subject::literal("demo.hello")?, "hi").encode(&mut buf)?;
/// let mut dec = Decoder::default();
/// let frame = dec.decode(&mut buf)?.expect("one whole frame");
/// assert_eq!(frame.subject.as_str(), "demo.hello");
/// assert_eq!(&frame.payload[..], b"hi");
/// assert!(dec.decode(&mut buf)?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// The subjects this decoder sees over and over.
    subjects: SubjectCache,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// The most room the decoder asks a buffer to make, at once, for the rest of a frame whose
    /// header has arrived: the buffer grows with what arrives, never by the declared length.
    pub const RESERVE_AHEAD: usize = 64 * 1024;

    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            state: State::Head,
            subjects: SubjectCache::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the limits (after HELLO negotiated smaller ones).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Whether a fatal error stopped the decoder.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    /// Decodes the next frame from `src`, consuming its bytes.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match &mut self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Discard(left) => {
                let n = (*left).min(src.len() as u64);
                src.advance(n as usize);
                *left -= n;
                if *left > 0 {
                    return Ok(None);
                }
                self.state = State::Head;
            }
            State::Head => {}
        }
        if src.len() < HEADER_LEN {
            // Fail fast on garbage instead of waiting for 32 bytes that may never come.
            let n = src.len().min(MAGIC.len());
            if src[..n] != MAGIC[..n] {
                return Err(self.fail(DecodeError::new(DecodeErrorKind::BadMagic, 0)));
            }
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&src[..HEADER_LEN]);
        let h = match Header::from_bytes(&raw) {
            Ok(h) => h,
            Err(e) => return Err(self.fail(e)),
        };
        if let Some(kind) = self.over_limit(&h) {
            let total = h.frame_len();
            let now = total.min(src.len() as u64);
            src.advance(now as usize);
            if total > now {
                self.state = State::Discard(total - now);
            }
            return Err(DecodeError::new(kind, h.id));
        }
        // Within the limits, so this fits in usize and is bounded by them.
        let total = h.frame_len() as usize;
        if src.len() < total {
            // Room for the next bytes only: what a header declares is not yet memory the peer
            // has spent (a stalled sender of huge headers would otherwise hold it all).
            src.reserve((total - src.len()).min(Self::RESERVE_AHEAD));
            return Ok(None);
        }
        let buf = src.split_to(total).freeze();
        Frame::from_parts(h, buf, &self.limits, &mut self.subjects).map(Some)
    }

    /// Call at end of stream: an error if a partial frame is left over.
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() && !matches!(self.state, State::Discard(_)) => Ok(None),
            None => {
                let left = src.len();
                src.clear();
                Err(self.fail(DecodeError::new(DecodeErrorKind::Truncated(left), 0)))
            }
        }
    }

    fn over_limit(&self, h: &Header) -> Option<DecodeErrorKind> {
        let l = &self.limits;
        if h.payload_len > l.max_payload {
            return Some(DecodeErrorKind::PayloadTooLarge {
                len: h.payload_len.into(),
                max: l.max_payload.into(),
            });
        }
        if h.headers_len > l.max_headers {
            return Some(DecodeErrorKind::HeadersTooLarge {
                len: h.headers_len.into(),
                max: l.max_headers.into(),
            });
        }
        if h.subject_len > l.max_subject {
            return Some(DecodeErrorKind::SubjectTooLong {
                len: h.subject_len.into(),
                max: l.max_subject.into(),
            });
        }
        None
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.state = State::Failed(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, Status, Subject};
    use bytes::Bytes;

    /// Whether `buf`'s memory is its own again once emptied (no decoded frame holds a view of it).
    fn reclaimable(buf: &mut BytesMut) -> bool {
        buf.clear();
        buf.try_reclaim(1024)
    }

    fn publish(payload_len: usize) -> BytesMut {
        let mut b = BytesMut::new();
        Frame::publish(Subject::literal("a").unwrap(), vec![7u8; payload_len])
            .encode(&mut b)
            .unwrap();
        b
    }

    #[test]
    fn a_plain_response_decodes_whole_and_any_other_shape_meets_every_rule() {
        let encode = |f: &Frame| {
            let mut b = BytesMut::new();
            f.encode(&mut b).unwrap();
            b
        };
        let decode = |mut b: BytesMut| Decoder::default().decode(&mut b);
        // The plain shape, every field back as sent.
        let mut f = Frame::response(7, Status::TIMEOUT, Bytes::from_static(b"xy"));
        f.kind = crate::MsgKind(200);
        f.aux = 3;
        let got = decode(encode(&f)).unwrap().unwrap();
        assert_eq!(got, f);
        // A reserved kind, a reserved flag bit, a flag a RESPONSE may not carry, a subject: each
        // refused with its own reason.
        let mut bad_kind = f.clone();
        bad_kind.kind = crate::MsgKind(9);
        let mut reserved = encode(&f);
        reserved[5] |= crate::Flags::RESERVED_MASK;
        let subject = Frame::publish(Subject::literal("a").unwrap(), Bytes::new());
        let mut with_subject = encode(&subject);
        with_subject[6] = crate::FrameType::Response as u8;
        let mut not_allowed = f.clone();
        not_allowed.flags.insert(crate::Flags::END);
        for (why, b) in [
            ("kind", encode(&bad_kind)),
            ("reserved flag", reserved),
            ("subject", with_subject),
            ("END", encode(&not_allowed)),
        ] {
            assert!(decode(b).is_err(), "a RESPONSE with a {why} is refused");
        }
    }

    #[test]
    fn a_subject_seen_again_is_decoded_as_a_kept_copy_and_one_off_subjects_are_not_kept() {
        let mut dec = Decoder::default();
        let frame = |subject: &str| {
            let mut b = BytesMut::with_capacity(1024);
            Frame::publish(Subject::literal(subject).unwrap(), Bytes::new())
                .encode(&mut b)
                .unwrap();
            b
        };
        // First sight: a view of the read buffer.
        let mut buf = frame("orders.eu");
        let first = dec.decode(&mut buf).unwrap().unwrap().subject;
        assert!(!reclaimable(&mut buf), "the first one is a view");
        drop(first);
        // Second sight: kept; from then on no view of the read buffer.
        for _ in 0..3 {
            let mut buf = frame("orders.eu");
            let s = dec.decode(&mut buf).unwrap().unwrap().subject;
            assert_eq!(s.as_str(), "orders.eu");
            assert!(
                reclaimable(&mut buf),
                "a kept subject holds nothing of the buffer"
            );
        }
        // Subjects seen once each are never kept.
        for i in 0..20 {
            let mut buf = frame(&format!("_INBOX.x.{i}"));
            let s = dec.decode(&mut buf).unwrap().unwrap().subject;
            assert!(!reclaimable(&mut buf), "one-off subject {i} is a view");
            drop(s);
        }
        // A kept subject is still only valid where the frame type allows it.
        let mut b = BytesMut::new();
        let mut f = Frame::publish(Subject::literal("orders.eu").unwrap(), Bytes::new());
        f.frame_type = crate::FrameType::Response;
        f.encode(&mut b).unwrap();
        assert!(dec.decode(&mut b).is_err(), "RESPONSE carries no subject");
    }

    #[test]
    fn a_payload_is_a_view_of_the_read_buffer_and_an_empty_one_holds_none_of_it() {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::with_capacity(1024);
        Frame::response(1, Status::OK, Bytes::new())
            .encode(&mut buf)
            .unwrap();
        let empty = dec.decode(&mut buf).unwrap().unwrap();
        assert!(empty.payload.is_empty());
        assert!(reclaimable(&mut buf), "an empty payload keeps no view");
        let mut buf = BytesMut::with_capacity(1024);
        Frame::response(2, Status::OK, Bytes::from_static(b"abc"))
            .encode(&mut buf)
            .unwrap();
        let full = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&full.payload[..], b"abc");
        assert!(!reclaimable(&mut buf), "the payload is a view, not a copy");
        drop(full);
        assert!(reclaimable(&mut buf));
        drop(empty);
    }

    #[test]
    fn need_more_then_frame() {
        let whole = publish(10);
        let mut dec = Decoder::default();
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let r = dec.decode(&mut buf).unwrap();
            assert_eq!(r.is_some(), i == whole.len() - 1);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_is_reported_then_skipped_without_buffering() {
        let mut dec = Decoder::new(Limits {
            max_payload: 100,
            ..Limits::default()
        });
        let big = publish(1000);
        let mut buf = BytesMut::from(&big[..40]);
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE);
        assert!(!e.is_fatal());
        assert!(buf.is_empty());
        assert!(
            buf.capacity() <= 40,
            "nothing reserved for the oversize frame"
        );
        // the rest of the big frame arrives, then a good one
        buf.extend_from_slice(&big[40..]);
        buf.extend_from_slice(&publish(5));
        let f = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.payload.len(), 5);
    }

    /// A PUBLISH header (and its one-byte subject) declaring `payload_len` bytes of payload.
    fn declared(payload_len: u32) -> BytesMut {
        let mut b = publish(0);
        b[28..32].copy_from_slice(&payload_len.to_be_bytes());
        b
    }

    #[test]
    fn a_declared_length_is_not_reserved_the_buffer_grows_with_what_arrives() {
        // The largest frame the default limits allow, declared and then not sent.
        let max = Limits::DEFAULT_MAX_PAYLOAD;
        let mut dec = Decoder::default();
        let mut buf = declared(max);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= buf.len() + Decoder::RESERVE_AHEAD,
            "{} bytes reserved for a frame of which {} arrived",
            buf.capacity(),
            buf.len()
        );
        // A frame that does arrive, in pieces: the buffer follows what arrived (BytesMut
        // doubles when it grows), never the declared length, and the frame comes out whole.
        let total = 4 << 20;
        let mut dec = Decoder::new(Limits {
            max_payload: total,
            ..Limits::default()
        });
        let mut buf = declared(total);
        let piece = vec![5u8; 48 * 1024];
        let mut sent = 0usize;
        loop {
            match dec.decode(&mut buf).unwrap() {
                Some(f) => {
                    assert_eq!(f.payload.len(), total as usize);
                    break;
                }
                None => {
                    assert!(
                        buf.capacity() <= 2 * (buf.len() + Decoder::RESERVE_AHEAD),
                        "capacity {} with {} bytes arrived",
                        buf.capacity(),
                        buf.len()
                    );
                    let n = piece.len().min(total as usize - sent);
                    buf.extend_from_slice(&piece[..n]);
                    sent += n;
                }
            }
        }
        assert_eq!(sent, total as usize);
    }

    #[test]
    fn the_handshake_limits_refuse_a_large_first_frame_at_its_header() {
        let mut dec = Decoder::new(Limits::HANDSHAKE);
        let mut buf = declared(Limits::HANDSHAKE.max_payload + 1);
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(e.code(), "payload_too_large");
        assert!(buf.is_empty() && buf.capacity() <= 64, "nothing buffered");
        let mut ok = declared(Limits::HANDSHAKE.max_payload);
        let mut dec = Decoder::new(Limits::HANDSHAKE);
        assert!(
            dec.decode(&mut ok).unwrap().is_none(),
            "at the limit: waits"
        );
        assert_eq!(Limits::HANDSHAKE.max_frame(), 32 + 256 + 1024 + 4096);
    }

    #[test]
    fn garbage_fails_fast_and_stays_failed() {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(&b"GET /"[..]);
        let e = dec.decode(&mut buf).unwrap_err();
        assert!(e.is_fatal());
        assert_eq!(e.status(), Status::PROTOCOL_ERROR);
        let mut more = publish(1);
        assert!(dec.decode(&mut more).is_err());
        assert!(dec.is_failed());
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let whole = publish(10);
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        let e = dec.decode_eof(&mut buf).unwrap_err();
        assert_eq!(e.code(), "truncated");
        let mut dec = Decoder::default();
        assert!(dec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn payload_is_a_slice_of_the_read_buffer() {
        let mut buf = publish(1 << 16);
        let start = buf.as_ptr() as usize;
        let f = Decoder::default().decode(&mut buf).unwrap().unwrap();
        let p = f.payload.as_ptr() as usize;
        assert_eq!(
            p,
            start + 32 + 1,
            "payload must point into the original buffer"
        );
    }
}
