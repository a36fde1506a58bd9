//! Every error path: decode errors (answered as the table of spec section 14 says, fatal ones
//! closing), answers to unknown ids, frames a role does not accept, features not agreed, and
//! a peer's refusal of a call.

use crate::calls::req;
use crate::pair::{answers, brief, offer, requests, Dir, Pair, Raw};
use bytes::BytesMut;
use mitto_proto::connection::{CallOptions, Closer, Config, Event, Origin};
use mitto_proto::{Features, Flags, Frame, FrameType, Headers, Status, Subject};

fn server() -> Raw {
    Raw::accepted_server(Config::server(offer("s", 0)))
}

#[test]
fn a_frame_that_cannot_be_decoded_is_answered_and_the_connection_goes_on() {
    let mut r = server();
    let mut b = BytesMut::new();
    Frame::request(21, Subject::literal("m").unwrap(), "x")
        .with_headers(Headers::builder().insert_custom("k", "v").unwrap().build())
        .encode(&mut b)
        .unwrap();
    b[32 + 2] = 0; // the free-form key's length: now an empty key
    Frame::ping(22).encode(&mut b).unwrap();
    r.feed(&b);
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 21, Status::BAD_REQUEST),
            (FrameType::Pong, 22, Status::OK)
        ]
    );
    assert_eq!(r.conn.stats().decode_errors, 1);
    assert!(r.conn.is_open());
}

#[test]
fn a_fatal_decode_error_sends_error_and_close_and_fails_what_waits() {
    let mut p = Pair::connected();
    p.client
        .call(p.now, req("x"), CallOptions::new(), 1)
        .unwrap();
    p.drive();
    p.take_server();
    p.clear_log();
    let mut garbage = BytesMut::from(&b"NOPE, not mitto"[..]);
    p.client.handle_input(p.now, &mut garbage);
    p.drive();
    assert_eq!(
        brief(p.sent(Dir::Up)),
        [
            (FrameType::Error, 0, Status::PROTOCOL_ERROR),
            (FrameType::Close, 0, Status::PROTOCOL_ERROR)
        ]
    );
    assert_eq!(answers(&p.client_events), [(1, Status::UNAVAILABLE)]);
    let Some(Event::Closed(c)) = p.client_events.last() else {
        panic!()
    };
    assert_eq!(c.by, Closer::Protocol);
}

#[test]
fn answers_to_unknown_ids_are_ignored_without_a_word() {
    let mut p = Pair::connected();
    // Ids in each receiver's own half (a server's calls have bit 63 set): nothing in flight.
    for (id, to_client) in [(12345u64, true), (1 << 63 | 12345, false)] {
        for f in [
            Frame::response(id, Status::OK, "?"),
            Frame::stream(id, "?", false),
            Frame::credit_stream(id, 5),
            Frame::ack(id, 0),
            Frame::cancel(777),
        ] {
            let mut b = BytesMut::new();
            f.encode(&mut b).unwrap();
            if to_client {
                p.client.handle_input(p.now, &mut b);
            } else {
                p.server.handle_input(p.now, &mut b);
            }
        }
    }
    p.drive();
    assert!(p.sent(Dir::Up).is_empty() && p.sent(Dir::Down).is_empty());
    assert!(p.take_client().is_empty() && p.take_server().is_empty());
    assert!(p.client.stats().late_answers >= 3);
}

#[test]
fn a_response_whose_id_is_in_the_peers_half_is_unexpected() {
    let mut p = Pair::connected();
    let mut b = BytesMut::new();
    Frame::response(1 << 63 | 5, Status::OK, "")
        .encode(&mut b)
        .unwrap();
    p.client.handle_input(p.now, &mut b);
    let mut b = BytesMut::new();
    Frame::response(6, Status::OK, "").encode(&mut b).unwrap();
    p.server.handle_input(p.now, &mut b);
    p.drive();
    assert_eq!(
        brief(p.sent(Dir::Up)),
        [(FrameType::Error, 1 << 63 | 5, Status::UNEXPECTED_FRAME)]
    );
    assert_eq!(
        brief(p.sent(Dir::Down)),
        [(FrameType::Error, 6, Status::UNEXPECTED_FRAME)]
    );
}

#[test]
fn a_server_that_opens_calls_refuses_a_request_id_with_bit_63() {
    let mut cfg = Config::server(offer("broker", 0));
    cfg.opens_calls = true;
    let mut r = Raw::accepted_server(cfg);
    r.send(&[req("").with_id(1 << 63 | 9), req("").with_id(9)]);
    assert_eq!(
        brief(&r.out()),
        [(FrameType::Error, 1 << 63 | 9, Status::PROTOCOL_ERROR)]
    );
    assert_eq!(requests(&r.events()).len(), 1, "the other one is served");
    // An RPC server that opens no calls serves it (its ids are unambiguous anyway).
    let mut r = Raw::accepted_server(Config::server(offer("rpc", 0)));
    r.send(&[req("").with_id(1 << 63 | 9)]);
    assert!(r.out().is_empty());
    assert_eq!(requests(&r.events()).len(), 1);
}

#[test]
fn frames_a_role_does_not_accept_are_refused_as_unexpected() {
    let mut p = Pair::connected();
    let sub = Frame::subscribe(1, Subject::new("a.>").unwrap(), &Default::default())
        .unwrap()
        .with_id(31);
    let event = Frame::event(1, 32, Subject::literal("a").unwrap(), "");
    let hello = Frame::hello(&offer("again", 0), false).unwrap().with_id(33);
    let report = Frame::stats_reply(34, &Default::default()).unwrap();
    for (to_client, f) in [(true, sub), (false, event), (false, hello), (false, report)] {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        if to_client {
            p.client.handle_input(p.now, &mut b);
        } else {
            p.server.handle_input(p.now, &mut b);
        }
    }
    p.drive();
    assert_eq!(
        brief(p.sent(Dir::Up)),
        [(FrameType::Error, 31, Status::UNEXPECTED_FRAME)]
    );
    assert_eq!(
        brief(p.sent(Dir::Down)),
        [
            (FrameType::Error, 32, Status::UNEXPECTED_FRAME),
            (FrameType::Error, 33, Status::UNEXPECTED_FRAME),
            (FrameType::Error, 34, Status::UNEXPECTED_FRAME)
        ]
    );
    assert!(p.client.is_open() && p.server.is_open());
    // An ERROR about nothing of a side's own is surfaced for the application's log.
    assert!(matches!(&p.take_server()[..], [Event::PeerError(f)] if f.id == 31));
    assert_eq!(p.take_client().len(), 3);
}

#[test]
fn a_feature_not_agreed_is_refused_with_unsupported_feature() {
    let mut hello = offer("s", 0);
    hello.features = Features::ACKS;
    let mut r = Raw::server(Config::server(hello));
    r.send(&[Frame::hello(&offer("c", 0), false).unwrap()]);
    r.events();
    r.conn.accept(r.now, "c", "", false).unwrap();
    r.out();
    r.send(&[
        req("").with_id(41).with_flags(Flags::START),
        Frame::stream(41, "x", false),
        Frame::credit_subscription(3, 1).with_id(43),
    ]);
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 41, Status::UNSUPPORTED_FEATURE),
            (FrameType::Error, 41, Status::UNSUPPORTED_FEATURE),
            (FrameType::Error, 43, Status::UNSUPPORTED_FEATURE)
        ]
    );
    assert!(r.events().is_empty());
}

#[test]
fn a_second_request_with_an_id_in_flight_and_one_too_many_are_refused() {
    let mut cfg = Config::server(offer("s", 0));
    cfg.max_incoming_calls = 2;
    let mut r = Raw::accepted_server(cfg);
    r.send(&[
        req("").with_id(1),
        req("").with_id(1),
        req("").with_id(2),
        req("").with_id(3),
    ]);
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 1, Status::PROTOCOL_ERROR),
            (FrameType::Response, 3, Status::BACKPRESSURE_REJECTION)
        ]
    );
    assert_eq!(requests(&r.events()).len(), 2);
}

#[test]
fn an_error_naming_a_call_fails_it_as_the_peers_refusal() {
    let mut p = Pair::connected();
    let id = p
        .client
        .call(p.now, req("x"), CallOptions::new(), 8)
        .unwrap();
    let mut b = BytesMut::new();
    Frame::error(id.get(), Status::INVALID_SUBJECT, "bad subject")
        .encode(&mut b)
        .unwrap();
    p.client.handle_input(p.now, &mut b);
    p.events();
    let evs = p.take_client();
    let Some(Event::Answer {
        ctx: 8,
        answer: Err(e),
        ..
    }) = evs.first()
    else {
        panic!("{evs:?}")
    };
    assert_eq!(
        (e.status(), e.origin(), &*e.reason()),
        (Status::INVALID_SUBJECT, Origin::Peer, "bad subject")
    );
}

#[test]
fn an_answer_that_cannot_be_decoded_fails_its_call_at_once() {
    let mut p = Pair::connected();
    let id = p
        .client
        .call(p.now, req("x"), CallOptions::new(), 8)
        .unwrap();
    p.drive();
    p.clear_log();
    let mut b = BytesMut::new();
    Frame::response(id.get(), Status::OK, "r")
        .with_flags(Flags::END) // not allowed on RESPONSE
        .encode(&mut b)
        .unwrap();
    p.client.handle_input(p.now, &mut b);
    p.drive();
    assert_eq!(answers(&p.client_events), [(8, Status::PROTOCOL_ERROR)]);
    assert_eq!(
        brief(p.sent(Dir::Up)),
        [
            (FrameType::Cancel, id.get(), Status::OK),
            (FrameType::Error, id.get(), Status::BAD_REQUEST)
        ],
        "the CANCEL of a call whose REQUEST left overtakes"
    );
}

#[test]
fn a_frame_the_peer_would_refuse_is_refused_here_and_nothing_is_queued() {
    use mitto_proto::connection::CommandError;
    use mitto_proto::MsgKind;
    let mut p = Pair::connected();
    let end = req("").with_flags(Flags::END);
    assert!(matches!(
        p.client.call(p.now, end, CallOptions::new(), 1),
        Err(CommandError::Misuse(_))
    ));
    let reserved = req("").with_kind(MsgKind(9));
    assert!(matches!(
        p.client.call(p.now, reserved, CallOptions::new(), 1),
        Err(CommandError::Misuse(_))
    ));
    let start = Frame::publish(Subject::literal("p").unwrap(), "").with_flags(Flags::START);
    assert!(matches!(
        p.client.publish(start),
        Err(CommandError::Misuse(_))
    ));
    let mut bad = Frame::new(FrameType::Event);
    bad.flags = Flags::from_bits(0x80);
    assert!(matches!(
        p.server.send_frame(bad),
        Err(CommandError::Misuse(_))
    ));
    assert_eq!((p.client.queued_bytes(), p.server.queued_bytes()), (0, 0));
    assert_eq!(p.client.pending(), 0);
}
