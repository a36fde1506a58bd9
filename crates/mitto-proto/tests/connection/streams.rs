//! The three streaming shapes with stream credit: a sender with no credit is told "would
//! block" and hears when credit comes; a receiver grants after every 32 consumed; END needs no
//! credit; a peer sending beyond its credit breaks the call.

use crate::calls::req;
use crate::pair::{answers, brief, offer, requests, Dir, Pair};
use bytes::Bytes;
use mitto_proto::connection::{
    Blocked, CallOptions, CommandError, Config, Event, Link, Origin, RequestEnd, Shape,
    INITIAL_STREAM_CREDIT,
};
use mitto_proto::{Features, Flags, Frame, FrameType, Status};

fn item(i: u32) -> Frame {
    Frame::stream(0, Bytes::from(i.to_string()), false)
}

fn items(evs: &[Event<u64>]) -> Vec<Bytes> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Item { frame, .. } | Event::RequestItem { frame, .. }
                if !(frame.payload.is_empty() && frame.flags.contains(Flags::END)) =>
            {
                Some(frame.payload.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn server_streaming_waits_for_credit_and_resumes_on_the_grant() {
    let mut p = Pair::connected();
    let opts = CallOptions::new().shape(Shape::ServerStream);
    let id = p.client.call(p.now, req("q"), opts, 1).unwrap();
    p.drive();
    let (rid, f) = requests(&p.take_server())[0].clone();
    assert!(
        !f.flags.contains(Flags::START),
        "the caller does not stream"
    );
    for i in 0..INITIAL_STREAM_CREDIT {
        p.server.send_stream_item(rid, item(i)).unwrap();
    }
    assert_eq!(
        p.server.send_stream_item(rid, item(64)),
        Err(CommandError::WouldBlock(Blocked::Credit))
    );
    p.drive();
    assert_eq!(items(&p.take_client()).len(), 64);
    p.client.items_consumed(id, 31).unwrap();
    p.drive();
    assert!(
        p.take_server().is_empty(),
        "no CREDIT before 32 were consumed"
    );
    p.client.items_consumed(id, 1).unwrap();
    p.drive();
    let credits: Vec<_> = p
        .sent(Dir::Up)
        .iter()
        .filter(|f| f.frame_type == FrameType::Credit)
        .collect();
    assert_eq!(credits.len(), 1);
    assert_eq!(&credits[0].payload[..], &32u32.to_be_bytes());
    assert!(matches!(&p.take_server()[..], [Event::ResponseCreditAvailable { id }] if *id == rid));
    for i in 64..96 {
        p.server.send_stream_item(rid, item(i)).unwrap();
    }
    assert!(p.server.send_stream_item(rid, item(96)).is_err());
    p.server.end_stream(rid).unwrap();
    p.server
        .respond(rid, Frame::response(0, Status::OK, "trailer"))
        .unwrap();
    p.drive();
    let evs = p.take_client();
    let got = items(&evs);
    assert_eq!(got.len(), 32);
    assert_eq!(got[0], Bytes::from("64"));
    assert!(
        matches!(evs.last(), Some(Event::Answer { answer: Ok(f), .. }) if &f.payload[..] == b"trailer")
    );
}

#[test]
fn client_streaming_ends_with_an_end_that_needs_no_credit() {
    let mut p = Pair::connected();
    let opts = CallOptions::new().shape(Shape::ClientStream);
    let id = p.client.call(p.now, req(""), opts, 1).unwrap();
    for i in 0..INITIAL_STREAM_CREDIT {
        p.client.send_item(id, item(i)).unwrap();
    }
    assert_eq!(
        p.client.send_item(id, item(64)),
        Err(CommandError::WouldBlock(Blocked::Credit))
    );
    p.client.finish(id).unwrap();
    assert_eq!(
        p.client.send_item(id, item(65)),
        Err(CommandError::NoStream),
        "after END"
    );
    p.drive();
    let evs = p.take_server();
    let (rid, f) = requests(&evs)[0].clone();
    assert!(f.flags.contains(Flags::START));
    assert_eq!(items(&evs).len(), 64);
    assert!(
        matches!(evs.last(), Some(Event::RequestItem { frame, .. }) if frame.flags.contains(Flags::END))
    );
    p.server.request_consumed(rid, 64).unwrap();
    p.server
        .respond(rid, Frame::response(0, Status::OK, "stored"))
        .unwrap();
    p.drive();
    assert_eq!(answers(&p.client_events), [(1, Status::OK)]);
    assert!(
        p.sent(Dir::Down)
            .iter()
            .all(|f| f.frame_type != FrameType::Credit),
        "nothing is granted to a stream that ended"
    );
}

#[test]
fn bidirectional_streams_are_credited_each_way_and_a_grant_wakes_the_sender() {
    let mut p = Pair::connected();
    let id = p
        .client
        .call(p.now, req(""), CallOptions::new().shape(Shape::Bidi), 1)
        .unwrap();
    for i in 0..64 {
        p.client.send_item(id, item(i)).unwrap();
    }
    assert!(p.client.send_item(id, item(64)).is_err());
    p.drive();
    let evs = p.take_server();
    let (rid, _) = requests(&evs)[0].clone();
    p.server.request_consumed(rid, 32).unwrap();
    p.server.send_stream_item(rid, item(1000)).unwrap();
    p.drive();
    let evs = p.take_client();
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::CreditAvailable { id: got } if *got == id)));
    assert_eq!(items(&evs), [Bytes::from("1000")]);
    p.client.send_item(id, item(64)).unwrap();
}

#[test]
fn a_callee_sending_beyond_its_credit_breaks_the_call_with_cancel() {
    let mut p = Pair::with(
        Config::client(offer("c", 0)).link(Link::Frames),
        Config::server(offer("s", 0)),
    );
    p.drive();
    p.take_client();
    let id = p
        .client
        .call(
            p.now,
            req(""),
            CallOptions::new().shape(Shape::ServerStream),
            1,
        )
        .unwrap();
    p.drive();
    p.clear_log();
    // A peer that ignores credit: 65 items handed straight to the client.
    for i in 0..=64 {
        let mut f = item(i);
        f.id = id.get();
        assert!(p.client.handle_frame(p.now, f).is_none());
    }
    p.drive();
    let evs = p.take_client();
    assert_eq!(items(&evs).len(), 64);
    match evs.last() {
        Some(Event::Answer { answer: Err(e), .. }) => {
            assert_eq!(
                (e.status(), e.origin()),
                (Status::PROTOCOL_ERROR, Origin::Local)
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        brief(p.sent(Dir::Up)),
        [(FrameType::Cancel, id.get(), Status::OK)]
    );
}

#[test]
fn a_caller_sending_beyond_its_credit_gets_protocol_error_and_the_call_ends() {
    let mut p = Pair::with(
        Config::client(offer("c", 0)).link(Link::Frames),
        Config::server(offer("s", 0)),
    );
    p.drive();
    p.take_server();
    p.clear_log();
    let mut open = req("").with_flags(Flags::START);
    open.id = 11;
    assert!(p.server.handle_frame(p.now, open).is_none());
    for i in 0..=64 {
        let mut f = item(i);
        f.id = 11;
        assert!(p.server.handle_frame(p.now, f).is_none());
    }
    let mut evs = p.take_server();
    p.drive();
    evs.extend(p.take_server());
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::RequestEnded {
            why: RequestEnd::StreamViolation,
            ..
        }
    )));
    assert_eq!(
        brief(p.sent(Dir::Down)),
        [(FrameType::Response, 11, Status::PROTOCOL_ERROR)]
    );
    assert_eq!(p.server.incoming_calls(), 0);
}

#[test]
fn streaming_needs_streaming_agreed_and_a_unary_call_has_no_stream() {
    let mut hello = offer("s", 0);
    hello.features = Features::ACKS;
    let mut p = Pair::with(Config::client(offer("c", 0)), Config::server(hello));
    p.drive();
    assert_eq!(
        p.client
            .call(p.now, req(""), CallOptions::new().shape(Shape::Bidi), 1),
        Err(CommandError::NotNegotiated(Features::STREAMING))
    );
    let id = p
        .client
        .call(p.now, req(""), CallOptions::new(), 1)
        .unwrap();
    assert_eq!(p.client.send_item(id, item(0)), Err(CommandError::NoStream));
}
