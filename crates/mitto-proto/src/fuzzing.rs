//! Entry points for the fuzz targets in `fuzz/`, kept here (as rustls does) so that the normal
//! test run can replay the committed corpus through exactly the same code on stable Rust.
//! Each function panics only if the code under test breaks one of its promises.

#![allow(clippy::expect_used)] // the expectations are the promises the fuzzers check

use crate::body::{
    decode_credit, decode_opt_u32, HealthReport, Hello, StatsReport, SubscribeOptions,
};
use crate::{Decoder, Flags, Frame, FrameType, Headers, Limits, MsgKind, Status, Subject};
use bytes::{Bytes, BytesMut};

/// Feeds arbitrary bytes to a decoder in chunks whose sizes the input picks. Nothing may panic, the
/// decoder must never buffer more than the limits allow, and every frame it yields must re-encode
/// to bytes that decode to the same frame.
pub fn decode(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;
    let limits = Limits {
        max_payload: 4096,
        max_headers: 1024,
        max_subject: 256,
    };
    let mut dec = Decoder::new(limits);
    let mut buf = BytesMut::new();
    for part in data.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => check_frame(&f, &limits),
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(e) => {
                    let _ = (e.status(), e.code(), e.to_string());
                }
            }
        }
        let most = 32 + 256 + 1024 + 4096 + chunk;
        assert!(buf.len() <= most, "decoder buffered {} bytes", buf.len());
    }
    let _ = dec.decode_eof(&mut buf);
}

fn check_frame(f: &Frame, limits: &Limits) {
    let wire = f.to_bytes().expect("a decoded frame always re-encodes");
    let mut again = BytesMut::from(&wire[..]);
    let g = Decoder::new(*limits)
        .decode(&mut again)
        .expect("re-encoded frame decodes");
    assert_eq!(g.as_ref(), Some(f), "round trip changed the frame");
    let p = &f.payload[..];
    let _ = (
        Hello::decode(p),
        SubscribeOptions::decode(p, "X"),
        decode_credit(p),
    );
    let _ = (
        decode_opt_u32(p, "X"),
        HealthReport::decode(p),
        StatsReport::decode(p),
    );
    let _ = f.decompressed_payload(limits.max_payload);
    let _ = (
        f.headers.deadline(),
        f.headers.ttl(),
        f.headers.reply_to(),
        f.headers.count(),
    );
    let _ = format!("{f:?}");
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self
            .0
            .split_first()
            .map(|(b, r)| (*b, r))
            .unwrap_or((0, &[]));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.u8()))
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.u8()).min(max).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.bytes(max)).into_owned()
    }
}

/// Builds a frame from the input through the public API, encodes it, decodes it, and checks the
/// result is the same frame, for every frame type, flag, kind and header the input picks.
pub fn round_trip(data: &[u8]) {
    let mut inp = Input(data);
    let t = FrameType::ALL[usize::from(inp.u8()) % FrameType::ALL.len()];
    let subject_text = inp.text(40);
    let subject = match t {
        FrameType::Subscribe | FrameType::Register => Subject::new(&subject_text),
        FrameType::Publish | FrameType::Event | FrameType::Request => {
            Subject::literal(&subject_text)
        }
        _ => Ok(Subject::empty()),
    };
    let Ok(subject) = subject else { return };
    if subject.is_empty()
        && matches!(
            t,
            FrameType::Subscribe
                | FrameType::Register
                | FrameType::Publish
                | FrameType::Event
                | FrameType::Request
        )
    {
        return;
    }
    let id = inp.u64();
    let sid = u32::from(inp.u8()) + 1;
    let payload = Bytes::from(inp.bytes(255));
    let mut f = match t {
        FrameType::Hello => {
            let h = Hello {
                name: inp.text(20),
                client_id: inp.text(20),
                auth: Bytes::from(inp.bytes(20)),
                ..Hello::default()
            };
            Frame::hello(&h, inp.u8() & 1 == 1).expect("short strings encode")
        }
        FrameType::Subscribe | FrameType::Register => {
            let queue = Some(inp.text(10)).filter(|q| {
                !q.is_empty() && !q.chars().any(|c| c.is_whitespace() || c.is_control())
            });
            let o = SubscribeOptions {
                max_pending: u32::from(inp.u8()),
                credit: u32::from(inp.u8()),
                queue,
                ..Default::default()
            };
            let f = if t == FrameType::Subscribe {
                Frame::subscribe(sid, subject, &o)
            } else {
                Frame::register(sid, subject, &o)
            };
            f.expect("short queue encodes")
        }
        FrameType::Unsubscribe => {
            Frame::unsubscribe(sid, Some(u32::from(inp.u8())).filter(|n| n % 2 == 0))
        }
        FrameType::Unregister => Frame::unregister(sid),
        FrameType::Publish => Frame::publish(subject, payload),
        FrameType::Event => Frame::event(sid, id, subject, payload),
        FrameType::Request => Frame::request(id, subject, payload),
        FrameType::Response => Frame::response(id, Status(u16::from(inp.u8())), payload),
        FrameType::Stream => Frame::stream(id, payload, inp.u8() & 1 == 1),
        FrameType::Cancel => Frame::cancel(id),
        FrameType::Credit => Frame::credit_stream(id, u32::from(inp.u8())),
        FrameType::Ack => Frame::ack(id, sid),
        FrameType::Nack => Frame::nack(id, sid, Some(u32::from(inp.u8()))),
        FrameType::Error => Frame::error(id, Status(u16::from(inp.u8())), &inp.text(30)),
        FrameType::Close => Frame::close(Status(u16::from(inp.u8())), &inp.text(30)),
        FrameType::Ping => Frame::ping(id).with_payload(payload),
        FrameType::Pong => Frame::pong(&Frame::ping(id).with_payload(payload)),
        FrameType::Health => Frame::health_query(id),
        FrameType::Stats => Frame::stats_query(id),
    };
    let extra = inp.u8();
    if matches!(
        t,
        FrameType::Publish
            | FrameType::Event
            | FrameType::Response
            | FrameType::Stream
            | FrameType::Request
    ) {
        if extra & 1 == 1 {
            f.flags.insert(Flags::URGENT);
        }
        if extra & 2 == 2 {
            f.payload = crate::compress::compress(&f.payload);
            f.flags.insert(Flags::COMPRESSED);
        }
        let k = inp.u8();
        f.kind = MsgKind(if k <= 5 || k >= 128 { k } else { 0 });
    }
    let mut hb = Headers::builder();
    for _ in 0..(inp.u8() % 4) {
        let key = inp.text(12);
        let value = inp.bytes(30);
        hb = match hb.clone().insert_custom(&key, &value) {
            Ok(b) => b,
            Err(_) => hb,
        };
    }
    f.headers = hb.build();
    let wire = f.to_bytes().expect("frames built by the API encode");
    let mut buf = BytesMut::from(&wire[..]);
    let back = Decoder::default()
        .decode(&mut buf)
        .expect("frames built by the API decode");
    assert_eq!(back.as_ref(), Some(&f));
    if f.flags.contains(Flags::COMPRESSED) {
        let original = crate::compress::decompress(&f.payload, u32::MAX)
            .expect("own compression decompresses");
        assert!(original.len() <= 255);
    }
}
