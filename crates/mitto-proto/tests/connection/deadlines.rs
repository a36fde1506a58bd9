//! Deadlines in virtual time: each fires exactly when due, never before; a call's sends CANCEL
//! (or withdraws a REQUEST that never left); a peer's call is answered TIMEOUT; the timer
//! structure gives them in deadline order whatever order they were set in.

use crate::calls::req;
use crate::pair::{answers, brief, frames, requests, Dir, Pair, Raw};
use mitto_proto::connection::{CallOptions, Config, Event, Origin, RequestEnd};
use mitto_proto::{Frame, FrameType, Headers, Status, Subject, SubscribeOptions};
use std::time::Duration;

const NS: Duration = Duration::from_nanos(1);

#[test]
fn a_call_times_out_exactly_at_its_deadline_and_sends_cancel() {
    let mut p = Pair::connected();
    let t0 = p.now;
    let opts = CallOptions::new().timeout(Duration::from_millis(100));
    let id = p.client.call(t0, req("x"), opts, 1).unwrap();
    p.drive();
    assert_eq!(requests(&p.take_server()).len(), 1);
    assert_eq!(
        p.client.poll_timeout(),
        Some(t0 + Duration::from_millis(100))
    );
    p.hold(Dir::Down, true);
    p.advance_to(t0 + Duration::from_millis(100) - NS);
    assert!(answers(&p.client_events).is_empty(), "not before");
    p.advance_to(t0 + Duration::from_millis(100));
    let evs = p.take_client();
    let Some(Event::Answer { answer: Err(e), .. }) = evs.first() else {
        panic!("{evs:?}")
    };
    assert_eq!((e.status(), e.origin()), (Status::TIMEOUT, Origin::Local));
    assert_eq!(
        brief(p.sent(Dir::Up)).last(),
        Some(&(FrameType::Cancel, id.get(), Status::OK))
    );
    // The callee's own TIMEOUT, released now, is one answer too many: ignored.
    p.hold(Dir::Down, false);
    p.drive();
    assert!(answers(&p.take_client()).is_empty());
}

#[test]
fn a_peers_call_is_answered_timeout_exactly_at_its_deadline() {
    let mut p = Pair::connected();
    let t0 = p.now;
    let h = Headers::builder()
        .deadline(Duration::from_millis(50))
        .build();
    p.client
        .call(t0, req("x").with_headers(h), CallOptions::new(), 1)
        .unwrap();
    p.drive();
    let evs = p.take_server();
    let Some(Event::Request { id, deadline, .. }) = evs.first() else {
        panic!("{evs:?}")
    };
    assert_eq!(*deadline, Some(t0 + Duration::from_millis(50)));
    let rid = *id;
    p.advance_to(t0 + Duration::from_millis(50) - NS);
    assert!(p.take_server().is_empty());
    p.advance_to(t0 + Duration::from_millis(50));
    assert!(matches!(
        &p.take_server()[..],
        [Event::RequestEnded { id, why: RequestEnd::Timeout }] if *id == rid
    ));
    assert_eq!(answers(&p.client_events), [(1, Status::TIMEOUT)]);
    assert!(p
        .server
        .respond(rid, Frame::response(0, Status::OK, "late"))
        .is_err());
}

#[test]
fn a_request_whose_deadline_passed_before_it_left_is_withdrawn() {
    let mut p = Pair::connected();
    let t0 = p.now;
    let opts = CallOptions::new().timeout(Duration::from_millis(10));
    p.client.call(t0, req("x"), opts, 1).unwrap();
    // The driver has not taken it (a full socket): the deadline passes first.
    p.now = t0 + Duration::from_millis(10);
    p.client.handle_timeout(p.now);
    p.drive();
    assert!(p.sent(Dir::Up).is_empty(), "neither REQUEST nor CANCEL");
    assert_eq!(answers(&p.client_events), [(1, Status::TIMEOUT)]);
}

#[test]
fn a_request_with_no_time_left_is_answered_timeout_without_reaching_the_application() {
    let mut r = Raw::accepted_server(Config::server(crate::pair::offer("s", 0)));
    let h = Headers::builder().deadline(Duration::ZERO).build();
    r.send(&[req("x").with_id(3).with_headers(h)]);
    assert_eq!(brief(&r.out()), [(FrameType::Response, 3, Status::TIMEOUT)]);
    assert!(r.events().is_empty());
}

#[test]
fn deadlines_set_out_of_order_fire_in_order() {
    let mut p = Pair::connected();
    let t0 = p.now;
    p.hold(Dir::Up, true);
    for (ctx, ms) in [(30u64, 30u64), (10, 10), (20, 20), (31, 30), (5, 5)] {
        let opts = CallOptions::new().timeout(Duration::from_millis(ms));
        p.client.call(t0, req("x"), opts, ctx).unwrap();
    }
    p.run_until(t0 + Duration::from_millis(100));
    let order: Vec<u64> = answers(&p.client_events).iter().map(|a| a.0).collect();
    assert_eq!(order, [5, 10, 20, 30, 31]);
}

#[test]
fn a_subscribe_without_an_answer_times_out_and_is_undone() {
    let mut cfg = Config::client(crate::pair::offer("c", 0));
    cfg.op_timeout = Some(Duration::from_secs(2));
    let mut p = Pair::with(cfg, Config::server(crate::pair::offer("s", 0)));
    p.drive();
    p.take_client();
    p.take_server();
    let t0 = p.now;
    let (sid, _) = p
        .client
        .subscribe(
            t0,
            Subject::new("a").unwrap(),
            SubscribeOptions::default(),
            7,
        )
        .unwrap();
    p.advance_to(t0 + Duration::from_secs(2) - NS);
    assert!(answers(&p.client_events).is_empty());
    p.advance_to(t0 + Duration::from_secs(2));
    assert_eq!(answers(&p.client_events), [(7, Status::TIMEOUT)]);
    let got = frames(&p.take_server());
    assert_eq!(
        (got.last().unwrap().frame_type, got.last().unwrap().aux),
        (FrameType::Unsubscribe, sid)
    );
}
