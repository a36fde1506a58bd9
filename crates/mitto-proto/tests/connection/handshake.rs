//! The HELLO exchange both ways, refusals by the one rule of spec section 8.1, the handshake
//! limits, and the handshake timeout.

use crate::pair::{brief, offer, Dir, Pair, Raw};
use bytes::Bytes;
use mitto_proto::connection::{CallOptions, Closer, CommandError, Config, Event};
use mitto_proto::{Features, Frame, FrameType, Limits, Status, Subject, Version};
use std::time::Duration;

#[test]
fn an_accepted_hello_opens_both_sides_with_the_same_agreement() {
    let mut server_hello = offer("server", 30_000);
    server_hello.max_payload = 4096;
    server_hello.features = Features::STREAMING | Features::ACKS;
    let mut p = Pair::with(
        Config::client(offer("client", 0)),
        Config::server(server_hello),
    );
    p.drive();
    let Some(Event::Hello(h)) = p.server_events.first() else {
        panic!("{:?}", p.server_events)
    };
    assert_eq!(h.name, "client");
    let Some(Event::Connected {
        agreed,
        reply,
        resumed,
    }) = p.client_events.first()
    else {
        panic!("{:?}", p.client_events)
    };
    assert_eq!(agreed, p.server.agreed().unwrap(), "both computed the same");
    assert_eq!(agreed.limits.max_payload, 4096);
    assert_eq!(agreed.features, Features::STREAMING | Features::ACKS);
    assert_eq!(agreed.keepalive_ms, 30_000, "a client's 0 is no preference");
    assert_eq!((reply.client_id.as_str(), *resumed), ("c-1", false));
    assert_eq!(
        brief(p.sent(Dir::Down)),
        [(FrameType::Hello, 0, Status::OK)]
    );
    assert!(p.client.is_open() && p.server.is_open());
}

#[test]
fn a_refused_hello_gets_error_then_close_and_both_sides_end() {
    let mut p = Pair::new();
    p.auto_accept = false;
    p.drive();
    assert!(matches!(p.server_events[..], [Event::Hello(_)]));
    assert!(
        !p.server.can_read(),
        "nothing read while the application decides"
    );
    p.server.refuse(Status::UNAUTHORIZED, "bad token").unwrap();
    p.drive();
    assert_eq!(
        brief(p.sent(Dir::Down)),
        [
            (FrameType::Error, 0, Status::UNAUTHORIZED),
            (FrameType::Close, 0, Status::UNAUTHORIZED)
        ]
    );
    let closed = |evs: &[Event<u64>]| match evs.last() {
        Some(Event::Closed(c)) => (c.by, c.status, c.reason.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        closed(&p.client_events),
        (Closer::Peer, Status::UNAUTHORIZED, "bad token".into())
    );
    assert_eq!(closed(&p.server_events).0, Closer::Local);
    let n = p.client_events.len();
    assert!(
        p.client_events[..n - 1]
            .iter()
            .all(|e| !matches!(e, Event::Closed(_))),
        "one end only, although ERROR and CLOSE both came"
    );
    assert!(p.client.is_closed() && p.server.is_closed());
}

#[test]
fn another_major_version_is_refused_before_the_application_hears_of_it() {
    let mut hello = offer("old", 0);
    hello.version = Version { major: 2, minor: 0 };
    let mut r = Raw::server(Config::server(offer("server", 0)));
    r.send(&[Frame::hello(&hello, false).unwrap().with_id(5)]);
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 5, Status::UNSUPPORTED_VERSION),
            (FrameType::Close, 0, Status::UNSUPPORTED_VERSION)
        ]
    );
    let evs = r.events();
    assert!(matches!(evs[..], [Event::Closed(_)]), "{evs:?}");
    assert!(r.conn.is_closed());
}

#[test]
fn a_first_frame_other_than_hello_ends_the_connection_and_nothing_after_it_is_read() {
    let mut r = Raw::server(Config::server(offer("server", 0)));
    let req = Frame::request(9, Subject::literal("a").unwrap(), "x");
    r.send(&[req.clone(), req]);
    let out = r.out();
    assert_eq!(
        brief(&out),
        [
            (FrameType::Error, 9, Status::UNEXPECTED_FRAME),
            (FrameType::Close, 0, Status::UNEXPECTED_FRAME)
        ]
    );
    assert_eq!(
        &out[0].payload[..],
        b"the first frame must be HELLO, not REQUEST"
    );
    assert!(r.input.is_empty(), "what follows is dropped, not buffered");
    assert!(r
        .events()
        .iter()
        .all(|e| !matches!(e, Event::Request { .. })));
    // A HELLO with REPLY is not a client's HELLO either.
    let mut r = Raw::server(Config::server(offer("server", 0)));
    r.send(&[Frame::hello(&offer("x", 0), true).unwrap().with_id(3)]);
    assert_eq!(r.out()[0].status, Status::UNEXPECTED_FRAME);
}

#[test]
fn a_first_frame_over_the_handshake_limits_is_refused_from_its_header() {
    let mut r = Raw::server(Config::server(offer("server", 0)));
    let big = Frame::hello(&offer("x", 0), false)
        .unwrap()
        .with_id(4)
        .with_payload(vec![0u8; Limits::HANDSHAKE.max_payload as usize + 1]);
    let bytes = big.to_bytes().unwrap();
    // Only the header arrives: refused at once, nothing reserved for the rest.
    r.feed(&bytes[..40]);
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 4, Status::PAYLOAD_TOO_LARGE),
            (FrameType::Close, 0, Status::PAYLOAD_TOO_LARGE)
        ]
    );
    assert!(r.input.capacity() < 4096, "{}", r.input.capacity());
    // Garbage: bad magic, id 0.
    let mut r = Raw::server(Config::server(offer("server", 0)));
    r.feed(b"GET / HTTP/1.1\r\n");
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 0, Status::PROTOCOL_ERROR),
            (FrameType::Close, 0, Status::PROTOCOL_ERROR)
        ]
    );
}

#[test]
fn frames_sent_behind_the_hello_are_read_after_the_accept_under_the_agreed_limits() {
    let mut server_hello = offer("server", 0);
    server_hello.max_payload = 100;
    let mut r = Raw::server(Config::server(server_hello));
    let req = |id, n| Frame::request(id, Subject::literal("m").unwrap(), vec![1u8; n]);
    r.send(&[
        Frame::hello(&offer("x", 0), false).unwrap(),
        req(1, 10),
        req(2, 200),
    ]);
    let evs = r.events();
    assert!(matches!(evs[..], [Event::Hello(_)]), "{evs:?}");
    assert!(r.out().is_empty());
    r.conn.accept(r.now, "c", "s", false).unwrap();
    let mut input = std::mem::take(&mut r.input);
    r.conn.handle_input(r.now, &mut input);
    let out = r.out();
    assert_eq!(
        brief(&out),
        [
            (FrameType::Hello, 0, Status::OK),
            (FrameType::Error, 2, Status::PAYLOAD_TOO_LARGE)
        ],
        "the reply first; the second REQUEST is over the agreed 100 bytes"
    );
    let evs = r.events();
    assert!(
        matches!(&evs[..], [Event::Request { id, .. }] if id.0 == 1),
        "{evs:?}"
    );
}

#[test]
fn commands_wait_for_the_handshake_and_the_handshake_for_its_timeout() {
    let mut p = Pair::new();
    p.hold(Dir::Up, true);
    let req = Frame::request(0, Subject::literal("m").unwrap(), Bytes::new());
    assert_eq!(
        p.client.call(p.now, req, CallOptions::new(), 1),
        Err(CommandError::NotReady)
    );
    let t0 = p.now;
    p.advance_to(t0 + Duration::from_secs(10) - Duration::from_nanos(1));
    assert!(p.client_events.is_empty() && p.server_events.is_empty());
    p.advance_to(t0 + Duration::from_secs(10));
    for evs in [&p.client_events, &p.server_events] {
        match &evs[..] {
            [Event::Closed(c)] => {
                assert_eq!((c.by, c.status), (Closer::Transport, Status::TIMEOUT))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_client_answered_with_something_else_than_hello_fails_the_attempt() {
    let mut r = Raw::client(Config::client(offer("c", 0)));
    assert_eq!(r.out()[0].frame_type, FrameType::Hello);
    r.send(&[Frame::ping(1)]);
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 1, Status::UNEXPECTED_FRAME),
            (FrameType::Close, 0, Status::UNEXPECTED_FRAME)
        ]
    );
    let evs = r.events();
    assert!(matches!(&evs[..], [Event::Closed(c)] if c.status == Status::UNEXPECTED_FRAME));
}

#[test]
fn the_servers_first_frame_is_read_with_the_handshake_limits_too() {
    let mut r = Raw::client(Config::client(offer("c", 0)));
    r.out();
    let big = Frame::error(3, Status::UNAUTHORIZED, &"x".repeat(5000));
    let bytes = big.to_bytes().unwrap();
    r.feed(&bytes[..64]);
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 3, Status::PAYLOAD_TOO_LARGE),
            (FrameType::Close, 0, Status::PAYLOAD_TOO_LARGE)
        ]
    );
    // And a HELLO of this side's over them is not sent at all.
    let mut hello = offer("c", 0);
    hello.auth = Bytes::from(vec![b't'; 5000]);
    let mut r = Raw::client(Config::client(hello));
    assert!(r.out().is_empty());
    match &r.events()[..] {
        [Event::Closed(c)] => {
            assert_eq!((c.by, c.status), (Closer::Local, Status::PAYLOAD_TOO_LARGE))
        }
        other => panic!("{other:?}"),
    }
}
