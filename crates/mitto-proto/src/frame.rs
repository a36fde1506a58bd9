//! Frames: the typed view of one header plus its subject, headers block and payload.

use crate::body::{
    decode_credit, decode_opt_u32, decode_reason, HealthReport, Hello, StatsReport,
    SubscribeOptions,
};
use crate::error::{DecodeError, DecodeErrorKind, EncodeError};
use crate::header::{Flags, FrameType, Header, MsgKind, HEADER_LEN, VERSION_MAJOR};
use crate::headers::Headers;
use crate::negotiate::Limits;
use crate::status::Status;
use crate::subject::{Subject, SubjectCache};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One frame. Fields are public: build one with a constructor and adjust what you need.
///
/// Subject, headers and payload are `Bytes` slices of the received buffer: decoding copies
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame type.
    pub frame_type: FrameType,
    /// Flag bits.
    pub flags: Flags,
    /// Message kind.
    pub kind: MsgKind,
    /// Message id, call id, or the id of the frame this one answers.
    pub id: u64,
    /// Subscription id (SUBSCRIBE, UNSUBSCRIBE, EVENT, REGISTER, UNREGISTER, CREDIT, ACK, NACK);
    /// 0 where unused.
    pub aux: u32,
    /// Status code (RESPONSE, ERROR, CLOSE, replies); OK elsewhere.
    pub status: Status,
    /// Subject (empty for frame types that carry none).
    pub subject: Subject,
    /// Key/value headers.
    pub headers: Headers,
    /// Payload.
    pub payload: Bytes,
    /// A value attached inside one process instead of an encoded payload (see
    /// [`crate::local`]); never encoded. A frame that carries one has its payload filled by
    /// [`Frame::materialize`] before it reaches a byte transport.
    pub value: Option<crate::local::Attachment>,
}

/// A frame whose parts are borrowed: what a sender that keeps its subject, headers and payload
/// elsewhere encodes without building (and dropping) a [`Frame`]. Same wire bytes as the
/// [`Frame`] with the same fields.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    /// The frame type.
    pub frame_type: FrameType,
    /// Flag bits.
    pub flags: Flags,
    /// Message kind.
    pub kind: MsgKind,
    /// Message id, call id, or the id of the frame this one answers.
    pub id: u64,
    /// Subscription id, 0 where unused.
    pub aux: u32,
    /// Status code.
    pub status: Status,
    /// Subject.
    pub subject: &'a Subject,
    /// Key/value headers.
    pub headers: &'a Headers,
    /// Payload.
    pub payload: &'a [u8],
}

impl FrameRef<'_> {
    /// The fixed header this frame encodes to.
    pub fn header(&self) -> Result<Header, EncodeError> {
        let too_large = |what, len: usize, max: u64| EncodeError::TooLarge {
            what,
            len: len as u64,
            max,
        };
        let subject_len = u16::try_from(self.subject.len())
            .map_err(|_| too_large("subject", self.subject.len(), u16::MAX.into()))?;
        let headers_len = u32::try_from(self.headers.as_bytes().len())
            .map_err(|_| too_large("headers", self.headers.as_bytes().len(), u32::MAX.into()))?;
        let payload_len = u32::try_from(self.payload.len())
            .map_err(|_| too_large("payload", self.payload.len(), u32::MAX.into()))?;
        Ok(Header {
            version: VERSION_MAJOR,
            flags: self.flags,
            frame_type: self.frame_type as u8,
            kind: self.kind,
            id: self.id,
            aux: self.aux,
            status: self.status.0,
            subject_len,
            headers_len,
            payload_len,
        })
    }

    /// Total encoded length.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.subject.len() + self.headers.as_bytes().len() + self.payload.len()
    }

    /// Appends the whole frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let h = self.header()?;
        dst.reserve(self.encoded_len());
        dst.put_slice(&h.to_bytes());
        dst.put_slice(self.subject.as_bytes());
        dst.put_slice(self.headers.as_bytes());
        dst.put_slice(self.payload);
        Ok(())
    }
}

/// Whether a frame type carries a subject.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SubjectRule {
    None,
    Literal,
    Filter,
}

struct Rule {
    subject: SubjectRule,
    flags: u8,
    needs_sid: bool,
}

const fn rule(t: FrameType) -> Rule {
    use FrameType::*;
    let ack = Flags::ACK_REQUIRED.bits();
    let msg = Flags::COMPRESSED.bits() | Flags::URGENT.bits();
    let reply = Flags::REPLY.bits();
    let (subject, flags, needs_sid) = match t {
        Hello => (SubjectRule::None, reply, false),
        Subscribe | Register => (SubjectRule::Filter, ack, true),
        Unsubscribe | Unregister => (SubjectRule::None, ack, true),
        Publish => (SubjectRule::Literal, ack | msg, false),
        Event => (SubjectRule::Literal, ack | msg, true),
        Request => (SubjectRule::Literal, msg | Flags::START.bits(), false),
        Response => (SubjectRule::None, msg, false),
        Stream => (SubjectRule::None, msg | Flags::END.bits(), false),
        Health | Stats => (SubjectRule::None, reply, false),
        Ack | Error | Ping | Pong | Close | Cancel | Credit | Nack => (SubjectRule::None, 0, false),
    };
    Rule {
        subject,
        flags,
        needs_sid,
    }
}

impl Frame {
    /// A frame of type `t` with everything else empty.
    pub fn new(t: FrameType) -> Frame {
        Frame {
            frame_type: t,
            flags: Flags::empty(),
            kind: MsgKind::NONE,
            id: 0,
            aux: 0,
            status: Status::OK,
            subject: Subject::empty(),
            headers: Headers::new(),
            payload: Bytes::new(),
            value: None,
        }
    }

    /// Fills the payload from the attached value, if any (encoding it the first time any frame
    /// carrying that value needs it). Frames without a value are left as they are.
    pub fn materialize(&mut self) -> Result<(), String> {
        if let Some(v) = &self.value {
            self.payload = v.0.encoded().map_err(str::to_owned)?.clone();
        }
        Ok(())
    }

    /// HELLO with a body (set `reply` on the server's answer).
    pub fn hello(body: &Hello, reply: bool) -> Result<Frame, EncodeError> {
        let mut b = BytesMut::with_capacity(64);
        body.encode(&mut b)?;
        let mut f = Frame::new(FrameType::Hello).with_payload(b.freeze());
        if reply {
            f.flags.insert(Flags::REPLY);
        }
        Ok(f)
    }

    /// SUBSCRIBE subscription `sid` to `filter`.
    pub fn subscribe(
        sid: u32,
        filter: Subject,
        opts: &SubscribeOptions,
    ) -> Result<Frame, EncodeError> {
        Self::sub_like(FrameType::Subscribe, sid, filter, opts)
    }

    /// REGISTER service instance `sid` answering requests on `filter`.
    pub fn register(
        sid: u32,
        filter: Subject,
        opts: &SubscribeOptions,
    ) -> Result<Frame, EncodeError> {
        Self::sub_like(FrameType::Register, sid, filter, opts)
    }

    fn sub_like(
        t: FrameType,
        sid: u32,
        filter: Subject,
        opts: &SubscribeOptions,
    ) -> Result<Frame, EncodeError> {
        let mut b = BytesMut::new();
        opts.encode(&mut b)?;
        let mut f = Frame::new(t).with_payload(b.freeze());
        f.aux = sid;
        f.subject = filter;
        Ok(f)
    }

    /// UNSUBSCRIBE subscription `sid`, at once or after `after` more messages.
    pub fn unsubscribe(sid: u32, after: Option<u32>) -> Frame {
        let mut f = Frame::new(FrameType::Unsubscribe);
        f.aux = sid;
        if let Some(n) = after {
            f.payload = Bytes::copy_from_slice(&n.to_be_bytes());
        }
        f
    }

    /// UNREGISTER service instance `sid`.
    pub fn unregister(sid: u32) -> Frame {
        let mut f = Frame::new(FrameType::Unregister);
        f.aux = sid;
        f
    }

    /// PUBLISH `payload` to the literal `subject`.
    pub fn publish(subject: Subject, payload: impl Into<Bytes>) -> Frame {
        let mut f = Frame::new(FrameType::Publish).with_payload(payload);
        f.subject = subject;
        f
    }

    /// EVENT: delivery `id` of a message on `subject` to subscription `sid`.
    pub fn event(sid: u32, id: u64, subject: Subject, payload: impl Into<Bytes>) -> Frame {
        let mut f = Frame::new(FrameType::Event)
            .with_payload(payload)
            .with_id(id);
        f.aux = sid;
        f.subject = subject;
        f
    }

    /// REQUEST call `id` to `subject` (a method name or a service subject).
    pub fn request(id: u64, subject: Subject, payload: impl Into<Bytes>) -> Frame {
        let mut f = Frame::new(FrameType::Request)
            .with_payload(payload)
            .with_id(id);
        f.subject = subject;
        f
    }

    /// RESPONSE completing call `id`.
    pub fn response(id: u64, status: Status, payload: impl Into<Bytes>) -> Frame {
        let mut f = Frame::new(FrameType::Response)
            .with_payload(payload)
            .with_id(id);
        f.status = status;
        f
    }

    /// STREAM item of call `id`; `end` marks the sender's last item.
    pub fn stream(id: u64, payload: impl Into<Bytes>, end: bool) -> Frame {
        let mut f = Frame::new(FrameType::Stream)
            .with_payload(payload)
            .with_id(id);
        if end {
            f.flags.insert(Flags::END);
        }
        f
    }

    /// CANCEL call `id`.
    pub fn cancel(id: u64) -> Frame {
        Frame::new(FrameType::Cancel).with_id(id)
    }

    /// CREDIT of `n` more items to the stream of call `id`.
    pub fn credit_stream(id: u64, n: u32) -> Frame {
        Frame::new(FrameType::Credit)
            .with_id(id)
            .with_payload(Bytes::copy_from_slice(&n.to_be_bytes()))
    }

    /// CREDIT of `n` more EVENTs to subscription `sid`.
    pub fn credit_subscription(sid: u32, n: u32) -> Frame {
        let mut f =
            Frame::new(FrameType::Credit).with_payload(Bytes::copy_from_slice(&n.to_be_bytes()));
        f.aux = sid;
        f
    }

    /// ACK of frame `id` (and, for a delivered EVENT, subscription `sid`; 0 otherwise).
    pub fn ack(id: u64, sid: u32) -> Frame {
        let mut f = Frame::new(FrameType::Ack).with_id(id);
        f.aux = sid;
        f
    }

    /// NACK of delivery `id` to subscription `sid`, redelivered after `delay_ms` if given.
    pub fn nack(id: u64, sid: u32, delay_ms: Option<u32>) -> Frame {
        let mut f = Frame::new(FrameType::Nack).with_id(id);
        f.aux = sid;
        if let Some(d) = delay_ms {
            f.payload = Bytes::copy_from_slice(&d.to_be_bytes());
        }
        f
    }

    /// ERROR about frame `id` (0 for the connection) with a status and a reason.
    pub fn error(id: u64, status: Status, reason: &str) -> Frame {
        let mut f = Frame::new(FrameType::Error).with_id(id);
        f.status = status;
        f.payload = Bytes::copy_from_slice(reason.as_bytes());
        f
    }

    /// PING `id`.
    pub fn ping(id: u64) -> Frame {
        Frame::new(FrameType::Ping).with_id(id)
    }

    /// PONG answering a PING (same id, same payload).
    pub fn pong(ping: &Frame) -> Frame {
        Frame::new(FrameType::Pong)
            .with_id(ping.id)
            .with_payload(ping.payload.clone())
    }

    /// CLOSE with a status and a reason.
    pub fn close(status: Status, reason: &str) -> Frame {
        let mut f = Frame::new(FrameType::Close);
        f.status = status;
        f.payload = Bytes::copy_from_slice(reason.as_bytes());
        f
    }

    /// HEALTH query `id`.
    pub fn health_query(id: u64) -> Frame {
        Frame::new(FrameType::Health).with_id(id)
    }

    /// HEALTH reply to query `id`.
    pub fn health_reply(id: u64, report: &HealthReport) -> Result<Frame, EncodeError> {
        let mut f = Frame::new(FrameType::Health)
            .with_id(id)
            .with_payload(report.encode()?);
        f.flags.insert(Flags::REPLY);
        Ok(f)
    }

    /// STATS query `id`.
    pub fn stats_query(id: u64) -> Frame {
        Frame::new(FrameType::Stats).with_id(id)
    }

    /// STATS reply to query `id`.
    pub fn stats_reply(id: u64, report: &StatsReport) -> Result<Frame, EncodeError> {
        let mut f = Frame::new(FrameType::Stats)
            .with_id(id)
            .with_payload(report.encode()?);
        f.flags.insert(Flags::REPLY);
        Ok(f)
    }

    /// Sets the id.
    pub fn with_id(mut self, id: u64) -> Frame {
        self.id = id;
        self
    }
    /// Sets the payload.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Frame {
        self.payload = payload.into();
        self
    }
    /// Sets the headers.
    pub fn with_headers(mut self, headers: Headers) -> Frame {
        self.headers = headers;
        self
    }
    /// Adds flags.
    pub fn with_flags(mut self, flags: Flags) -> Frame {
        self.flags.insert(flags);
        self
    }
    /// Sets the message kind.
    pub fn with_kind(mut self, kind: MsgKind) -> Frame {
        self.kind = kind;
        self
    }

    /// A borrowed view of the frame, for encoding.
    #[inline]
    pub fn as_ref(&self) -> FrameRef<'_> {
        FrameRef {
            frame_type: self.frame_type,
            flags: self.flags,
            kind: self.kind,
            id: self.id,
            aux: self.aux,
            status: self.status,
            subject: &self.subject,
            headers: &self.headers,
            payload: &self.payload,
        }
    }

    /// The fixed header this frame encodes to.
    pub fn header(&self) -> Result<Header, EncodeError> {
        self.as_ref().header()
    }

    /// Total encoded length.
    pub fn encoded_len(&self) -> usize {
        self.as_ref().encoded_len()
    }

    /// Appends the whole frame to `dst`. Many frames appended to one buffer make one write.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.as_ref().encode(dst)
    }

    /// Appends everything but the payload, for a vectored write that sends the payload `Bytes`
    /// as its own slice (no copy of large payloads).
    pub fn encode_head(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let h = self.header()?;
        dst.reserve(HEADER_LEN + self.subject.len() + self.headers.as_bytes().len());
        dst.put_slice(&h.to_bytes());
        dst.put_slice(self.subject.as_bytes());
        dst.put_slice(self.headers.as_bytes());
        Ok(())
    }

    /// The whole frame as new bytes.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b)?;
        Ok(b.freeze())
    }

    /// Whether the URGENT flag is set.
    pub fn is_urgent(&self) -> bool {
        self.flags.contains(Flags::URGENT)
    }

    /// Parses a complete frame. `buf` holds exactly the frame, header included, and `h` its
    /// already-read header whose lengths match `buf` and the limits.
    pub(crate) fn from_parts(
        h: Header,
        mut buf: Bytes,
        limits: &Limits,
        subjects: &mut SubjectCache,
    ) -> Result<Frame, DecodeError> {
        if h.frame_type == FrameType::Response as u8
            && h.flags.bits() == 0
            && h.subject_len == 0
            && h.headers_len == 0
            && h.kind.is_valid()
        {
            // The commonest frame, an answer with neither flags, subject nor headers: the
            // rules below have nothing else to check in it.
            let payload = if buf.len() > HEADER_LEN {
                buf.advance(HEADER_LEN);
                buf
            } else {
                Bytes::new()
            };
            return Ok(Frame {
                frame_type: FrameType::Response,
                flags: h.flags,
                kind: h.kind,
                id: h.id,
                aux: h.aux,
                status: Status(h.status),
                subject: Subject::empty(),
                headers: Headers::new(),
                payload,
                value: None,
            });
        }
        let err = |k| DecodeError::new(k, h.id);
        let t = FrameType::from_u8(h.frame_type)
            .ok_or_else(|| err(DecodeErrorKind::UnknownFrameType(h.frame_type)))?;
        let bits = h.flags.bits();
        if bits & Flags::RESERVED_MASK != 0 {
            return Err(err(DecodeErrorKind::ReservedFlags(
                bits & Flags::RESERVED_MASK,
            )));
        }
        let r = rule(t);
        if bits & !r.flags != 0 {
            let bad = Flags::from_bits(bits & !r.flags);
            let flag = bad.names().first().copied().unwrap_or("?");
            return Err(err(DecodeErrorKind::FlagNotAllowed {
                flag,
                frame: t.name(),
            }));
        }
        if !h.kind.is_valid() {
            return Err(err(DecodeErrorKind::ReservedKind(h.kind.0)));
        }
        if r.needs_sid && h.aux == 0 {
            return Err(err(DecodeErrorKind::MissingSubscriptionId(t.name())));
        }
        let s_end = HEADER_LEN + usize::from(h.subject_len);
        let h_end = s_end + h.headers_len as usize;
        let subject = match (r.subject, h.subject_len) {
            (SubjectRule::None, 0) => Subject::empty(),
            (SubjectRule::None, _) => {
                return Err(err(DecodeErrorKind::UnexpectedSubject(t.name())))
            }
            (_, 0) => return Err(err(DecodeErrorKind::MissingSubject(t.name()))),
            (rule, _) => match subjects.get(&buf[HEADER_LEN..s_end]) {
                // A literal subject this decoder keeps: checked when it was kept.
                Some(s) => s,
                None => {
                    let (s, wildcard) =
                        Subject::from_wire(buf.slice(HEADER_LEN..s_end)).map_err(err)?;
                    if wildcard && rule == SubjectRule::Literal {
                        return Err(err(DecodeErrorKind::InvalidSubject(
                            "wildcards are only allowed in subscriptions",
                        )));
                    }
                    match wildcard {
                        false => subjects.saw(&s).unwrap_or(s),
                        true => s,
                    }
                }
            },
        };
        let headers = if h.headers_len == 0 {
            Headers::new()
        } else {
            Headers::from_wire(buf.slice(s_end..h_end)).map_err(err)?
        };
        // The payload is what is left of the frame's bytes: taken, not sliced, so that it costs
        // no reference count (a response with neither subject nor headers takes none at all).
        let payload = if buf.len() > h_end {
            buf.advance(h_end);
            buf
        } else {
            // Holds nothing of the receive buffer.
            Bytes::new()
        };
        check_body(t, h.flags, &payload, limits).map_err(err)?;
        Ok(Frame {
            frame_type: t,
            flags: h.flags,
            kind: h.kind,
            id: h.id,
            aux: h.aux,
            status: Status(h.status),
            subject,
            headers,
            payload,
            value: None,
        })
    }

    /// The payload, decompressed if the COMPRESSED flag is set, refusing to produce more than
    /// `max` bytes.
    pub fn decompressed_payload(&self, max: u32) -> Result<Bytes, DecodeError> {
        if !self.flags.contains(Flags::COMPRESSED) {
            return Ok(self.payload.clone());
        }
        crate::compress::decompress(&self.payload, max).map_err(|k| DecodeError::new(k, self.id))
    }
}

fn check_body(
    t: FrameType,
    flags: Flags,
    p: &[u8],
    limits: &Limits,
) -> Result<(), DecodeErrorKind> {
    use FrameType::*;
    let reply = flags.contains(Flags::REPLY);
    match t {
        Hello => {
            crate::body::Hello::decode(p)?;
        }
        Subscribe | Register => {
            SubscribeOptions::decode(p, t.name())?;
        }
        Unsubscribe => {
            decode_opt_u32(p, "UNSUBSCRIBE")?;
        }
        Nack => {
            decode_opt_u32(p, "NACK")?;
        }
        Credit => {
            decode_credit(p)?;
        }
        Error | Close => {
            decode_reason(p, t.name())?;
        }
        Health | Stats if !reply && !p.is_empty() => {
            return Err(DecodeErrorKind::MalformedBody {
                frame: t.name(),
                reason: "a query carries no body",
            })
        }
        Health if reply => {
            HealthReport::decode(p)?;
        }
        Stats if reply => {
            StatsReport::decode(p)?;
        }
        _ => {}
    }
    if flags.contains(Flags::COMPRESSED) {
        crate::compress::check_prefix(p, limits.max_payload)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_head_plus_payload_equals_encode() {
        let f = Frame::publish(Subject::literal("a.b").unwrap(), &b"xyz"[..])
            .with_headers(Headers::builder().insert_custom("k", "v").unwrap().build());
        let mut whole = BytesMut::new();
        f.encode(&mut whole).unwrap();
        let mut head = BytesMut::new();
        f.encode_head(&mut head).unwrap();
        head.extend_from_slice(&f.payload);
        assert_eq!(whole, head);
        assert_eq!(whole.len(), f.encoded_len());
    }

    #[test]
    fn a_frame_fits_in_128_bytes() {
        // Frames are moved by value through every in-process hop: up to 128 bytes a move is a
        // few inlined vector copies, above it a call to memcpy (BENCHMARKS.md, in-process bus).
        assert!(
            std::mem::size_of::<Frame>() <= 128,
            "{}",
            std::mem::size_of::<Frame>()
        );
    }

    #[test]
    fn constructors_set_the_right_fields() {
        let e = Frame::event(7, 9, Subject::literal("x").unwrap(), "p");
        assert_eq!((e.aux, e.id, e.frame_type), (7, 9, FrameType::Event));
        let c = Frame::credit_subscription(3, 100);
        assert_eq!(decode_credit(&c.payload).unwrap(), 100);
        assert_eq!(c.aux, 3);
        let p = Frame::ping(5).with_payload("t");
        let pong = Frame::pong(&p);
        assert_eq!((pong.id, &pong.payload[..]), (5, &b"t"[..]));
        assert!(Frame::stream(1, "", true).flags.contains(Flags::END));
        assert_eq!(
            Frame::error(4, Status::TIMEOUT, "late").status,
            Status::TIMEOUT
        );
    }
}
