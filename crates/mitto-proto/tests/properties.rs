//! Property tests: every frame type round-trips, streams split anywhere decode the same, and
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! arbitrary bytes never panic the decoder or make it buffer beyond its limits.

use bytes::{Bytes, BytesMut};
use mitto_proto::{
    Decoder, Delivery, Flags, Frame, FrameType, Headers, Hello, Limits, MsgKind,
    SlowConsumerPolicy, Status, Subject, SubscribeOptions, WellKnown,
};
use proptest::prelude::*;
use std::time::Duration;

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,6}"
}

fn literal() -> impl Strategy<Value = Subject> {
    prop::collection::vec(token(), 1..5).prop_map(|t| Subject::literal(&t.join(".")).unwrap())
}

fn filter() -> impl Strategy<Value = Subject> {
    (
        prop::collection::vec(prop_oneof![token(), Just("*".to_string())], 1..5),
        any::<bool>(),
    )
        .prop_map(|(mut t, gt)| {
            if gt {
                t.push(">".into());
            }
            Subject::new(&t.join(".")).unwrap()
        })
}

fn headers() -> impl Strategy<Value = Headers> {
    (
        prop::option::of("[a-z/+.-]{1,30}"),
        prop::option::of(any::<u32>()),
        prop::collection::vec(
            ("x-[a-z]{1,10}", prop::collection::vec(any::<u8>(), 0..20)),
            0..3,
        ),
    )
        .prop_map(|(ct, dl, custom)| {
            let mut b = Headers::builder();
            if let Some(ct) = ct {
                b = b.insert(WellKnown::ContentType, ct).unwrap();
            }
            if let Some(us) = dl {
                b = b.deadline(Duration::from_micros(us.into()));
            }
            for (k, v) in custom {
                b = b.insert_custom(&k, v).unwrap();
            }
            b.build()
        })
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn options() -> impl Strategy<Value = SubscribeOptions> {
    (
        any::<bool>(),
        0u8..5,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        prop::option::of("[a-z]{1,8}"),
        prop::option::of("[a-z0-9_-]{1,12}"),
    )
        .prop_map(
            |(acked, p, max_pending, ack_wait_ms, max_deliver, credit, queue, durable)| {
                SubscribeOptions {
                    delivery: if acked {
                        Delivery::AtLeastOnce
                    } else {
                        Delivery::AtMostOnce
                    },
                    policy: [
                        SlowConsumerPolicy::ServerDefault,
                        SlowConsumerPolicy::Block,
                        SlowConsumerPolicy::DropOldest,
                        SlowConsumerPolicy::DropNewest,
                        SlowConsumerPolicy::Disconnect,
                    ][usize::from(p)],
                    max_pending,
                    ack_wait_ms,
                    max_deliver,
                    credit,
                    queue,
                    durable,
                }
            },
        )
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        "[a-z]{0,10}",
        "[a-z0-9-]{0,10}",
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(
            |(minor, features, max_payload, keepalive_ms, name, client_id, auth)| Hello {
                version: mitto_proto::Version { major: 1, minor },
                features: mitto_proto::Features::from_bits(features),
                max_payload,
                keepalive_ms,
                name,
                client_id,
                auth: Bytes::from(auth),
                ..Hello::default()
            },
        )
}

/// Any valid frame of any type, with the flags that type allows.
fn frame() -> impl Strategy<Value = Frame> {
    let id = any::<u64>();
    let sid = || 1u32..;
    prop_oneof![
        (hello(), any::<bool>()).prop_map(|(h, r)| Frame::hello(&h, r).unwrap()),
        (sid(), filter(), options(), any::<bool>()).prop_map(|(s, f, o, ack)| {
            let fr = Frame::subscribe(s, f, &o).unwrap();
            if ack {
                fr.with_flags(Flags::ACK_REQUIRED)
            } else {
                fr
            }
        }),
        (sid(), filter(), options()).prop_map(|(s, f, o)| Frame::register(s, f, &o).unwrap()),
        (sid(), prop::option::of(any::<u32>())).prop_map(|(s, a)| Frame::unsubscribe(s, a)),
        sid().prop_map(Frame::unregister),
        (literal(), payload(), 0u8..8)
            .prop_map(|(s, p, fl)| Frame::publish(s, p).with_flags(Flags::from_bits(fl & 0b101))),
        (sid(), id, literal(), payload()).prop_map(|(s, i, subj, p)| Frame::event(s, i, subj, p)),
        (id, literal(), payload(), any::<bool>()).prop_map(|(i, s, p, start)| {
            let f = Frame::request(i, s, p);
            if start {
                f.with_flags(Flags::START)
            } else {
                f
            }
        }),
        (id, any::<u16>(), payload()).prop_map(|(i, st, p)| Frame::response(i, Status(st), p)),
        (id, payload(), any::<bool>()).prop_map(|(i, p, e)| Frame::stream(i, p, e)),
        id.prop_map(Frame::cancel),
        (id, any::<u32>()).prop_map(|(i, n)| Frame::credit_stream(i, n)),
        (sid(), any::<u32>()).prop_map(|(s, n)| Frame::credit_subscription(s, n)),
        (id, any::<u32>()).prop_map(|(i, s)| Frame::ack(i, s)),
        (id, sid(), prop::option::of(any::<u32>())).prop_map(|(i, s, d)| Frame::nack(i, s, d)),
        (id, any::<u16>(), "\\PC{0,40}").prop_map(|(i, st, r)| Frame::error(i, Status(st), &r)),
        (id, payload()).prop_map(|(i, p)| Frame::ping(i).with_payload(p)),
        (id, payload()).prop_map(|(i, p)| Frame::pong(&Frame::ping(i).with_payload(p))),
        (any::<u16>(), "\\PC{0,40}").prop_map(|(st, r)| Frame::close(Status(st), &r)),
        id.prop_map(Frame::health_query),
        id.prop_map(Frame::stats_query),
    ]
    .prop_flat_map(|f| (Just(f), headers(), prop_oneof![0u8..=5, 128u8..=255]))
    .prop_map(|(mut f, h, kind)| {
        f.headers = h;
        f.kind = MsgKind(kind);
        f
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_round_trips(f in frame()) {
        let wire = f.to_bytes().unwrap();
        prop_assert_eq!(wire.len(), f.encoded_len());
        let mut buf = BytesMut::from(&wire[..]);
        let back = Decoder::default().decode(&mut buf).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(back, f);
    }

    #[test]
    fn batches_split_anywhere_decode_the_same(frames in prop::collection::vec(frame(), 1..6), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut dec = Decoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for p in points {
            buf.extend_from_slice(&wire[at..p]);
            at = p;
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        mitto_proto::fuzzing::decode(&data);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(tail in prop::collection::vec(any::<u8>(), 0..512), t in 1u8..=0x14, flags in any::<u8>()) {
        let mut head = Frame::publish(Subject::literal("a").unwrap(), "").to_bytes().unwrap().to_vec();
        head[5] = flags;
        head[6] = t;
        let n = tail.len() as u32;
        head[28..32].copy_from_slice(&n.to_be_bytes());
        head.truncate(32);
        head[22..24].copy_from_slice(&0u16.to_be_bytes());
        let mut data = vec![0u8];
        data.extend_from_slice(&head);
        data.extend_from_slice(&tail);
        mitto_proto::fuzzing::decode(&data);
    }

    #[test]
    fn api_built_frames_round_trip(data in prop::collection::vec(any::<u8>(), 0..400)) {
        mitto_proto::fuzzing::round_trip(&data);
    }

    #[test]
    fn frame_type_byte_is_checked(t in any::<u8>()) {
        let mut wire = Frame::ping(1).to_bytes().unwrap().to_vec();
        wire[6] = t;
        let r = Decoder::default().decode(&mut BytesMut::from(&wire[..]));
        match FrameType::from_u8(t) {
            None => prop_assert_eq!(r.unwrap_err().status(), Status::UNSUPPORTED_FEATURE),
            Some(_) => prop_assert!(r.is_ok() || r.unwrap_err().status() != Status::UNSUPPORTED_FEATURE),
        }
    }
}

#[test]
fn limits_are_checked_before_allocating() {
    // A header declaring the largest payload the field can express, and nothing after it.
    let mut wire = Frame::publish(Subject::literal("a").unwrap(), "")
        .to_bytes()
        .unwrap()
        .to_vec();
    wire[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
    wire.truncate(33);
    let mut buf = BytesMut::from(&wire[..]);
    let cap = buf.capacity();
    let e = Decoder::new(Limits::default())
        .decode(&mut buf)
        .unwrap_err();
    assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE);
    assert!(buf.capacity() <= cap);
}
