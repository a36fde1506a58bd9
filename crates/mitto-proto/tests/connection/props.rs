//! A property test: random API calls on both sides, random frame arrivals (each direction
//! transmitted, delivered or held at random, so frames cross), random time, and the
//! invariants checked after every step: nothing answered twice, nothing lost (at the end every
//! call has exactly one final answer), order kept (publishes and requests reach the peer in
//! the order issued, except by the overtaking rule), and no frame the peer did not agree to
//! receive ever sent.

use crate::pair::{offer, Dir, Pair};
use bytes::Bytes;
use mitto_proto::connection::{
    CallOptions, CommandError, Config, Event, Link, OpId, RequestEnd, RequestId, Shape,
};
use mitto_proto::{Features, Flags, Frame, FrameType, Limits, Status, Subject};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[derive(Clone, Debug)]
enum Act {
    Call {
        shape: u8,
        timeout: Option<u16>,
        urgent: bool,
        size: u16,
    },
    Publish {
        urgent: bool,
        size: u16,
    },
    Respond {
        k: u8,
        ok: bool,
        size: u16,
    },
    ServerItem {
        k: u8,
        n: u8,
    },
    ClientItem {
        k: u8,
        n: u8,
        end: bool,
    },
    ClientConsume {
        k: u8,
        n: u8,
    },
    ServerConsume {
        k: u8,
        n: u8,
    },
    Cancel {
        k: u8,
    },
    Transmit(bool),
    Deliver(bool),
    Hold(bool, bool),
    Advance(u16),
    Close,
    Cut,
}

fn size() -> impl Strategy<Value = u16> {
    prop_oneof![4 => 0u16..100, 1 => 0u16..3000]
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        60 => (0u8..4, prop::option::of(1u16..300), any::<bool>(), size())
            .prop_map(|(shape, timeout, urgent, size)| Act::Call { shape, timeout, urgent, size }),
        30 => (any::<bool>(), size()).prop_map(|(urgent, size)| Act::Publish { urgent, size }),
        50 => (any::<u8>(), any::<bool>(), size())
            .prop_map(|(k, ok, size)| Act::Respond { k, ok, size }),
        30 => (any::<u8>(), 1u8..100).prop_map(|(k, n)| Act::ServerItem { k, n }),
        30 => (any::<u8>(), 1u8..100, prop::bool::weighted(0.1))
            .prop_map(|(k, n, end)| Act::ClientItem { k, n, end }),
        20 => (any::<u8>(), 1u8..40).prop_map(|(k, n)| Act::ClientConsume { k, n }),
        20 => (any::<u8>(), 1u8..40).prop_map(|(k, n)| Act::ServerConsume { k, n }),
        15 => any::<u8>().prop_map(|k| Act::Cancel { k }),
        60 => any::<bool>().prop_map(Act::Transmit),
        60 => any::<bool>().prop_map(Act::Deliver),
        8 => (any::<bool>(), any::<bool>()).prop_map(|(d, h)| Act::Hold(d, h)),
        25 => (1u16..200).prop_map(Act::Advance),
        1 => Just(Act::Close),
        1 => Just(Act::Cut),
    ]
}

/// What the test knows of what the client issued.
#[derive(Default)]
struct Model {
    next: u64,
    /// Calls by context: their id and whether their caller streams.
    calls: HashMap<u64, (OpId, bool)>,
    /// Final answers by context.
    answered: HashMap<u64, Status>,
    /// Contexts given back by cancel.
    cancelled: HashSet<u64>,
    /// Requests of the client the server holds, in arrival order.
    open: Vec<RequestId>,
    /// Sequence numbers the server received, by lane (normal, urgent).
    arrived: [Vec<u64>; 2],
}

fn dir(b: bool) -> Dir {
    if b {
        Dir::Up
    } else {
        Dir::Down
    }
}

fn pick<T: Copy>(v: &[T], k: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[usize::from(k) % v.len()])
}

impl Model {
    fn seq(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Takes both sides' events and checks what they say.
    fn events(&mut self, p: &mut Pair) {
        p.events();
        for e in p.take_client() {
            match e {
                Event::Answer { ctx, answer, .. } => {
                    assert!(
                        !self.cancelled.contains(&ctx),
                        "call {ctx} answered after cancel"
                    );
                    let status = answer.as_ref().map_or_else(|e| e.status(), |f| f.status);
                    assert_ne!(status, Status::PROTOCOL_ERROR, "a peer broke flow control");
                    let before = self.answered.insert(ctx, status);
                    assert!(before.is_none(), "call {ctx} answered twice");
                }
                Event::Item { frame, .. } => assert_eq!(&frame.payload[..], b"item"),
                _ => {}
            }
        }
        for e in p.take_server() {
            match e {
                Event::Request { id, frame, .. } => {
                    self.open.push(id);
                    self.arrival(&frame);
                }
                Event::Frame(f) if f.frame_type == FrameType::Publish => self.arrival(&f),
                Event::RequestEnded { id, why } => {
                    assert_ne!(
                        why,
                        RequestEnd::StreamViolation,
                        "the caller broke flow control"
                    );
                    self.open.retain(|r| *r != id);
                }
                _ => {}
            }
        }
    }

    fn arrival(&mut self, f: &Frame) {
        let seq: u64 = std::str::from_utf8(&f.payload[..f.payload.len().min(20)])
            .ok()
            .and_then(|s| s.trim_end_matches('.').parse().ok())
            .expect("a sequence number");
        let lane = &mut self.arrived[usize::from(f.is_urgent())];
        assert!(
            lane.last().is_none_or(|l| *l < seq),
            "{seq} arrived after {lane:?}"
        );
        lane.push(seq);
    }
}

/// A payload of `size` bytes that starts with the sequence number.
fn numbered(seq: u64, size: u16) -> Bytes {
    let mut s = seq.to_string();
    while s.len() < usize::from(size) {
        s.push('.');
    }
    Bytes::from(s)
}

/// Every frame sent either way fits what its receiver agreed to, uses only agreed features,
/// and none follows a CLOSE.
fn check_wire(p: &Pair) {
    let Some(agreed) = p.client.agreed().or(p.server.agreed()).cloned() else {
        return;
    };
    let Limits {
        max_payload,
        max_headers,
        ..
    } = agreed.limits;
    for d in [Dir::Up, Dir::Down] {
        let sent = p.sent(d);
        let mut closed = false;
        for f in sent {
            assert!(!closed, "{:?} after CLOSE", f.frame_type);
            closed = f.frame_type == FrameType::Close;
            if f.frame_type == FrameType::Hello {
                continue;
            }
            assert!(
                f.payload.len() <= max_payload as usize,
                "{:?} over max_payload",
                f.frame_type
            );
            assert!(f.headers.as_bytes().len() <= max_headers as usize);
            if f.frame_type == FrameType::Stream || f.flags.contains(Flags::START) {
                assert!(agreed.features.contains(Features::STREAMING));
            }
            assert_ne!(
                f.frame_type,
                FrameType::Error,
                "no side had reason to refuse anything"
            );
        }
    }
}

fn run(acts: Vec<Act>, frames: bool, max_payload: u32) {
    let mut hello = offer("client", 0);
    hello.max_payload = max_payload;
    let mut ccfg = Config::client(hello);
    if frames {
        ccfg = ccfg.link(Link::Frames);
    }
    let mut p = Pair::with(ccfg, Config::server(offer("server", 0)));
    p.drive();
    let mut m = Model::default();
    m.events(&mut p);
    for a in acts {
        step(&mut p, &mut m, a);
        m.events(&mut p);
        check_wire(&p);
    }
    // Let everything arrive, answer what the server holds, and let every deadline pass.
    p.hold(Dir::Up, false);
    p.hold(Dir::Down, false);
    for _ in 0..3 {
        p.drive();
        m.events(&mut p);
        for id in std::mem::take(&mut m.open) {
            let _ = p.server.respond(id, Frame::response(0, Status::OK, "end"));
        }
        p.drive();
        m.events(&mut p);
    }
    p.advance(Duration::from_secs(3600));
    m.events(&mut p);
    check_wire(&p);
    for ctx in m.calls.keys() {
        let answers =
            usize::from(m.answered.contains_key(ctx)) + usize::from(m.cancelled.contains(ctx));
        assert_eq!(answers, 1, "call {ctx}: one final answer, got {answers}");
    }
    assert_eq!(p.client.pending(), 0);
}

fn step(p: &mut Pair, m: &mut Model, a: Act) {
    let now = p.now;
    match a {
        Act::Call {
            shape,
            timeout,
            urgent,
            size,
        } => {
            let shape = [
                Shape::Unary,
                Shape::ServerStream,
                Shape::ClientStream,
                Shape::Bidi,
            ][usize::from(shape)];
            let seq = m.seq();
            let mut f = Frame::request(0, Subject::literal("m").unwrap(), numbered(seq, size));
            if urgent {
                f.flags.insert(Flags::URGENT);
            }
            let mut opts = CallOptions::new().shape(shape);
            opts.timeout = timeout.map(|t| Duration::from_millis(t.into()));
            match p.client.call(now, f, opts, seq) {
                Ok(id) => {
                    m.calls.insert(seq, (id, shape.client_streams()));
                }
                Err(
                    CommandError::TooLarge { .. }
                    | CommandError::WouldBlock(_)
                    | CommandError::Closed,
                ) => {}
                Err(e) => panic!("{e}"),
            }
        }
        Act::Publish { urgent, size } => {
            let seq = m.seq();
            let mut f = Frame::publish(Subject::literal("p").unwrap(), numbered(seq, size));
            if urgent {
                f.flags.insert(Flags::URGENT);
            }
            let _ = p.client.publish(f);
        }
        Act::Respond { k, ok, size } => {
            if let Some(id) = pick(&m.open, k) {
                let status = if ok {
                    Status::OK
                } else {
                    Status::EXECUTION_ERROR
                };
                let r = Frame::response(0, status, vec![b'r'; usize::from(size)]);
                if p.server.respond(id, r).is_ok() {
                    m.open.retain(|r| *r != id);
                }
            }
        }
        Act::ServerItem { k, n } => {
            if let Some(id) = pick(&m.open, k) {
                for _ in 0..n {
                    if p.server
                        .send_stream_item(id, Frame::stream(0, "item", false))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        Act::ClientItem { k, n, end } => {
            let mut streaming: Vec<(u64, OpId)> = m
                .calls
                .iter()
                .filter(|c| c.1 .1)
                .map(|(ctx, c)| (*ctx, c.0))
                .collect();
            streaming.sort_unstable();
            if let Some((_, id)) = pick(&streaming, k) {
                for i in 0..n {
                    let last = end && i + 1 == n;
                    if p.client
                        .send_item(id, Frame::stream(0, "item", last))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        Act::ClientConsume { k, n } => {
            let mut ids: Vec<(u64, OpId)> = m.calls.iter().map(|(ctx, c)| (*ctx, c.0)).collect();
            ids.sort_unstable();
            let ids: Vec<OpId> = ids.into_iter().map(|c| c.1).collect();
            if let Some(id) = pick(&ids, k) {
                let _ = p.client.items_consumed(id, n.into());
            }
        }
        Act::ServerConsume { k, n } => {
            if let Some(id) = pick(&m.open, k) {
                let _ = p.server.request_consumed(id, n.into());
            }
        }
        Act::Cancel { k } => {
            let mut ctxs: Vec<u64> = m.calls.keys().copied().collect();
            ctxs.sort_unstable();
            if let Some(ctx) = pick(&ctxs, k) {
                if let Ok(got) = p.client.cancel(m.calls[&ctx].0) {
                    assert_eq!(got, Some(ctx));
                    assert!(!m.answered.contains_key(&ctx), "cancelled after its answer");
                    m.cancelled.insert(ctx);
                }
            }
        }
        Act::Transmit(up) => {
            p.transmit(dir(up));
        }
        Act::Deliver(up) => {
            p.deliver(dir(up));
        }
        Act::Hold(up, held) => p.hold(dir(up), held),
        Act::Advance(ms) => {
            let to = p.now + Duration::from_millis(ms.into());
            p.now = to;
            p.client.handle_timeout(to);
            p.server.handle_timeout(to);
        }
        Act::Close => {
            let _ = p.client.close(Status::OK, "done");
        }
        Act::Cut => p.cut(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_traffic_keeps_every_invariant(
        acts in prop::collection::vec(act(), 1..250),
        frames in any::<bool>(),
        max_payload in prop::sample::select(vec![64u32, 512, 2048, 0]),
    ) {
        run(acts, frames, max_payload);
    }
}
