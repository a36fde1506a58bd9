//! The one ordered outbound path: frames leave in the order they were queued except by the
//! overtaking rule (URGENT frames, and the CANCEL of a call whose REQUEST left), the frames of
//! an urgent call stay in its lane, and the buffer is bounded both for new operations
//! ("would block", then `Writable`) and for the answers the connection owes on its own.

use crate::calls::req;
use crate::pair::{offer, requests, Dir, Pair, Raw};
use bytes::BytesMut;
use mitto_proto::connection::{Blocked, CallOptions, CommandError, Config, Event, Shape};
use mitto_proto::{Flags, Frame, FrameType, Subject};

fn publish(s: &str) -> Frame {
    Frame::publish(Subject::literal(s).unwrap(), "p")
}

fn subjects(fs: &[Frame]) -> Vec<String> {
    fs.iter().map(|f| f.subject.as_str().to_owned()).collect()
}

#[test]
fn urgent_frames_overtake_normal_ones_queued_before_them_and_keep_their_own_order() {
    let mut p = Pair::connected();
    p.client.publish(publish("n1")).unwrap();
    p.client
        .publish(publish("u1").with_flags(Flags::URGENT))
        .unwrap();
    p.client.publish(publish("n2")).unwrap();
    p.client
        .publish(publish("u2").with_flags(Flags::URGENT))
        .unwrap();
    p.drive();
    assert_eq!(subjects(p.sent(Dir::Up)), ["u1", "u2", "n1", "n2"]);
    // Frames already taken by the driver are not overtaken.
    p.clear_log();
    p.client.publish(publish("n3")).unwrap();
    p.transmit(Dir::Up);
    p.client
        .publish(publish("u3").with_flags(Flags::URGENT))
        .unwrap();
    p.drive();
    assert_eq!(subjects(p.sent(Dir::Up)), ["n3", "u3"]);
}

#[test]
fn the_frames_of_an_urgent_call_travel_in_its_lane_so_none_overtakes_its_request() {
    let mut p = Pair::connected();
    p.client.publish(publish("before")).unwrap();
    let id = p
        .client
        .call(
            p.now,
            req("").with_flags(Flags::URGENT),
            CallOptions::new().shape(Shape::Bidi),
            1,
        )
        .unwrap();
    p.client
        .send_item(id, Frame::stream(0, "i1", false))
        .unwrap();
    p.client.finish(id).unwrap();
    p.drive();
    let sent = p.sent(Dir::Up);
    let kinds: Vec<FrameType> = sent.iter().map(|f| f.frame_type).collect();
    assert_eq!(
        kinds,
        [
            FrameType::Request,
            FrameType::Stream,
            FrameType::Stream,
            FrameType::Publish
        ]
    );
    assert!(sent[..3].iter().all(Frame::is_urgent));
    let (rid, _) = requests(&p.take_server())[0].clone();
    // The callee's frames take the request's lane too, whatever it asks.
    p.server
        .send_stream_item(rid, Frame::stream(0, "r", false))
        .unwrap();
    p.server
        .respond(
            rid,
            mitto_proto::Frame::response(0, mitto_proto::Status::OK, ""),
        )
        .unwrap();
    p.drive();
    assert!(p.sent(Dir::Down).iter().all(Frame::is_urgent));
}

#[test]
fn past_the_bound_new_operations_would_block_until_the_driver_takes_the_buffer() {
    let mut cfg = Config::client(offer("c", 0));
    cfg.max_outbound = 1000;
    let mut p = Pair::with(cfg, Config::server(offer("s", 0)));
    p.drive();
    p.take_client();
    let mut n = 0;
    let err = loop {
        match p.client.publish(publish("x")) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, CommandError::WouldBlock(Blocked::Buffer));
    assert!(n > 10 && p.client.queued_bytes() <= 1000, "{n}");
    // A call is a new operation too.
    assert!(p
        .client
        .call(p.now, req(""), CallOptions::new(), 1)
        .is_err());
    p.transmit(Dir::Up);
    assert!(matches!(p.client.poll_event(), Some(Event::Writable)));
    p.client.publish(publish("x")).unwrap();
}

#[test]
fn answers_owed_to_a_peer_that_does_not_read_are_bounded_by_leaving_its_input_unread() {
    let mut cfg = Config::server(offer("s", 0));
    cfg.max_owed = 400;
    let mut r = Raw::accepted_server(cfg);
    let mut b = BytesMut::new();
    for i in 0..100 {
        Frame::ping(i)
            .with_payload(vec![0u8; 60])
            .encode(&mut b)
            .unwrap();
    }
    let total = b.len();
    r.input = b;
    let now = r.now;
    r.conn.handle_input(now, &mut r.input);
    assert!(!r.conn.can_read());
    assert!(
        r.conn.queued_bytes() <= 400 + 92,
        "{}",
        r.conn.queued_bytes()
    );
    assert!(
        r.input.len() > total / 2,
        "the rest waits in the driver's buffer"
    );
    // The driver takes what is queued; reading resumes where it stopped.
    let mut pongs = 0;
    while !r.input.is_empty() {
        pongs += r.out().len();
        let mut input = std::mem::take(&mut r.input);
        r.conn.handle_input(now, &mut input);
        r.input = input;
    }
    pongs += r.out().len();
    assert_eq!(pongs, 100, "every PING answered, in order, none dropped");
}

#[test]
fn events_the_application_has_not_taken_are_bounded_the_same_way() {
    let mut cfg = Config::server(offer("s", 0));
    cfg.max_events = 8;
    let mut r = Raw::accepted_server(cfg);
    let mut b = BytesMut::new();
    for i in 0..20 {
        req("").with_id(i).encode(&mut b).unwrap();
    }
    r.input = b;
    let now = r.now;
    r.conn.handle_input(now, &mut r.input);
    assert_eq!(requests(&r.events()).len(), 8);
    let mut input = std::mem::take(&mut r.input);
    r.conn.handle_input(now, &mut input);
    assert_eq!(requests(&r.events()).len(), 8);
}

#[test]
fn a_client_keeps_reading_and_ends_the_connection_when_its_answers_pile_up() {
    let mut cfg = Config::client(offer("c", 0));
    cfg.max_owed = 400;
    let mut r = crate::pair::Raw::client(cfg);
    r.out();
    r.send(&[Frame::hello(&offer("s", 0), true).unwrap()]);
    r.events();
    let mut b = BytesMut::new();
    for i in 0..4 {
        Frame::ping(i)
            .with_payload(vec![0u8; 60])
            .encode(&mut b)
            .unwrap();
    }
    r.feed(&b);
    assert!(r.conn.can_read() && r.input.is_empty());
    let mut b = BytesMut::new();
    for i in 5..100 {
        Frame::ping(i)
            .with_payload(vec![0u8; 60])
            .encode(&mut b)
            .unwrap();
    }
    // A server would leave this input unread; a client must read it (spec 9.4), so past its
    // bound it ends the connection rather than buffer answers without end.
    // A server would leave this input unread; a client must read it (spec 9.4), so past its
    // bound it ends the connection rather than buffer answers without end.
    r.feed(&b);
    assert!(r.conn.queued_bytes() == 0 && r.input.is_empty());
    assert!(r.conn.is_closed());
    assert!(r.conn.queued_bytes() == 0 && r.input.is_empty());
    let evs = r.events();
    assert!(
        matches!(evs.last(), Some(Event::Closed(c)) if c.status == mitto_proto::Status::PROTOCOL_ERROR)
    );
}
