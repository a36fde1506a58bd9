//! Unary calls: the answer comes back once with its context, deadlines travel as time left,
//! only calls that were received can be answered, and ids are never given twice.

use crate::pair::{answers, offer, requests, Dir, Pair};
use bytes::Bytes;
use mitto_proto::connection::{CallOptions, CommandError, Config, Event, Link, Origin, RequestId};
use mitto_proto::{Frame, FrameType, Headers, Status, Subject};
use std::collections::HashSet;
use std::time::Duration;

pub(crate) fn req(payload: &'static str) -> Frame {
    Frame::request(0, Subject::literal("calc.add").unwrap(), payload)
}

#[test]
fn a_unary_call_is_answered_once_with_its_context() {
    let mut p = Pair::connected();
    let id = p
        .client
        .call(p.now, req("[1,2]"), CallOptions::new(), 77)
        .unwrap();
    p.drive();
    let reqs = requests(&p.take_server());
    assert_eq!(reqs.len(), 1);
    let (rid, frame) = &reqs[0];
    assert_eq!((frame.id, &frame.payload[..]), (id.get(), &b"[1,2]"[..]));
    assert_eq!(frame.subject.as_str(), "calc.add");
    assert_eq!(id.get() >> 63, 0, "a client's call ids have bit 63 clear");
    p.server
        .respond(*rid, Frame::response(0, Status::OK, "3"))
        .unwrap();
    p.drive();
    let evs = p.take_client();
    match &evs[..] {
        [Event::Answer {
            id: got,
            ctx,
            answer,
        }] => {
            assert_eq!((*got, *ctx), (id, 77));
            assert_eq!(&answer.as_ref().unwrap().payload[..], b"3");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.client.pending(), 0);
    assert_eq!(p.server.incoming_calls(), 0);
}

#[test]
fn a_failed_response_is_the_peers_failure_with_its_reason_and_headers() {
    let mut p = Pair::connected();
    p.client
        .call(p.now, req("x"), CallOptions::new(), 1)
        .unwrap();
    p.drive();
    let (rid, _) = requests(&p.take_server())[0].clone();
    let details = Headers::builder()
        .insert_custom("x-detail", "d")
        .unwrap()
        .build();
    let r = Frame::response(0, Status::EXECUTION_ERROR, "boom").with_headers(details);
    p.server.respond(rid, r).unwrap();
    p.drive();
    let Some(Event::Answer { answer: Err(e), .. }) = p.client_events.first() else {
        panic!("{:?}", p.client_events)
    };
    assert_eq!(
        (e.status(), e.origin()),
        (Status::EXECUTION_ERROR, Origin::Peer)
    );
    assert_eq!(e.reason(), "boom");
    assert_eq!(
        e.frame().unwrap().headers.get_custom("x-detail"),
        Some(&b"d"[..])
    );
}

#[test]
fn only_a_call_received_and_not_finished_can_be_answered() {
    let mut p = Pair::connected();
    assert_eq!(
        p.server
            .respond(RequestId(999), Frame::response(0, Status::OK, "")),
        Err(CommandError::UnknownRequest(999))
    );
    p.client
        .call(p.now, req("x"), CallOptions::new(), 1)
        .unwrap();
    p.drive();
    let (rid, _) = requests(&p.take_server())[0].clone();
    p.server
        .respond(rid, Frame::response(0, Status::OK, "a"))
        .unwrap();
    assert_eq!(
        p.server.respond(rid, Frame::response(0, Status::OK, "b")),
        Err(CommandError::UnknownRequest(rid.0)),
        "a call is answered once"
    );
    assert_eq!(
        p.server.send_stream_item(rid, Frame::stream(0, "i", false)),
        Err(CommandError::UnknownRequest(rid.0))
    );
    assert!(matches!(
        p.server.respond(RequestId(1), Frame::ping(1)),
        Err(CommandError::Misuse(_))
    ));
    p.drive();
    let sent: Vec<_> = p
        .sent(Dir::Down)
        .iter()
        .filter(|f| f.frame_type == FrameType::Response)
        .collect();
    assert_eq!(sent.len(), 1, "nothing but the one answer went on the wire");
    assert_eq!(answers(&p.client_events), [(1, Status::OK)]);
}

#[test]
fn the_deadline_header_is_the_time_left_when_the_request_leaves() {
    let mut p = Pair::connected();
    let t0 = p.now;
    let opts = CallOptions::new().timeout(Duration::from_millis(250));
    p.client.call(t0, req("x"), opts, 1).unwrap();
    // The driver takes the REQUEST 50 ms later (no timer fired in between).
    p.now = t0 + Duration::from_millis(50);
    p.drive();
    let evs = p.take_server();
    let Some(Event::Request {
        frame, deadline, ..
    }) = evs.first()
    else {
        panic!("{evs:?}")
    };
    assert_eq!(frame.headers.deadline(), Some(Duration::from_millis(200)));
    assert_eq!(*deadline, Some(t0 + Duration::from_millis(250)));
}

#[test]
fn a_result_too_large_for_the_caller_arrives_as_payload_too_large() {
    let mut client_hello = offer("client", 0);
    client_hello.max_payload = 64;
    let mut p = Pair::with(Config::client(client_hello), Config::server(offer("s", 0)));
    p.drive();
    p.take_client();
    p.take_server();
    p.client
        .call(p.now, req("x"), CallOptions::new(), 1)
        .unwrap();
    p.drive();
    let (rid, _) = requests(&p.take_server())[0].clone();
    p.server
        .respond(rid, Frame::response(0, Status::OK, vec![0u8; 65]))
        .unwrap();
    p.drive();
    assert_eq!(answers(&p.client_events), [(1, Status::PAYLOAD_TOO_LARGE)]);
    // And a REQUEST over the server's agreed limit never leaves.
    let big = Frame::request(0, Subject::literal("m").unwrap(), vec![0u8; 65]);
    assert!(matches!(
        p.client.call(p.now, big, CallOptions::new(), 2),
        Err(CommandError::TooLarge {
            what: "payload",
            len: 65,
            max: 64
        })
    ));
    assert_eq!(p.client.queued_bytes(), 0);
}

#[test]
fn a_million_calls_never_share_an_id() {
    let mut p = Pair::with(
        Config::client(offer("client", 0)).link(Link::Frames),
        Config::server(offer("server", 0)),
    );
    p.drive();
    let mut seen = HashSet::with_capacity(1 << 20);
    let mut answered = 0u64;
    for batch in 0..1000u64 {
        for i in 0..1000u64 {
            let id = p
                .client
                .call(p.now, req("x"), CallOptions::new(), batch * 1000 + i)
                .unwrap();
            assert!(seen.insert(id.get()), "id {} given twice", id.get());
        }
        p.transmit(Dir::Up);
        p.deliver(Dir::Up);
        while let Some(e) = p.server.poll_event() {
            if let Event::Request { id, .. } = e {
                p.server
                    .respond(id, Frame::response(0, Status::OK, Bytes::new()))
                    .unwrap();
            }
        }
        p.transmit(Dir::Down);
        p.deliver(Dir::Down);
        while let Some(e) = p.client.poll_event() {
            if let Event::Answer { answer, .. } = e {
                assert!(answer.is_ok());
                answered += 1;
            }
        }
        p.clear_log();
    }
    assert_eq!((answered, seen.len()), (1_000_000, 1_000_000));
}

#[test]
fn answers_in_any_order_reach_their_own_calls() {
    let mut p = Pair::with(
        Config::client(offer("client", 0)).link(Link::Frames),
        Config::server(offer("server", 0)),
    );
    p.drive();
    p.take_client();
    let ids: Vec<_> = (0..4)
        .map(|ctx| {
            p.client
                .call(p.now, req("x"), CallOptions::new(), ctx)
                .unwrap()
        })
        .collect();
    p.drive();
    let reqs = requests(&p.take_server());
    p.hold(Dir::Down, true);
    for (rid, f) in &reqs {
        let r = Frame::response(0, Status::OK, Bytes::from(f.id.to_string()));
        p.server.respond(*rid, r).unwrap();
    }
    p.transmit(Dir::Down);
    // The callee may answer in any order: the answers arrive reversed, one at a time.
    p.in_flight(Dir::Down).make_contiguous().reverse();
    for expect in (0..4u64).rev() {
        let f = p.deliver_one(Dir::Down).unwrap();
        assert_eq!(f.id, ids[expect as usize].get());
        p.events();
        match &p.take_client()[..] {
            [Event::Answer {
                id,
                ctx,
                answer: Ok(r),
            }] => {
                assert_eq!((*id, *ctx), (ids[expect as usize], expect));
                assert_eq!(r.payload, Bytes::from(id.get().to_string()));
            }
            other => panic!("{other:?}"),
        }
    }
}
