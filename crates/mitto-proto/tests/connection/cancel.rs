//! Cancellation: a local cancel sends CANCEL once (or withdraws a REQUEST that never left),
//! an answer that crosses it is ignored, and a peer's CANCEL ends the call it names.

use crate::calls::req;
use crate::pair::{answers, brief, requests, Dir, Pair};
use mitto_proto::connection::{CallOptions, CommandError, Event, RequestEnd};
use mitto_proto::{Frame, FrameType, Status, Subject};

#[test]
fn a_request_cancelled_before_it_left_is_withdrawn_and_nothing_is_sent() {
    let mut p = Pair::connected();
    let id = p
        .client
        .call(p.now, req("x"), CallOptions::new(), 5)
        .unwrap();
    assert_eq!(p.client.cancel(id), Ok(Some(5)), "the context comes back");
    p.drive();
    assert!(p.sent(Dir::Up).is_empty());
    assert!(p.take_server().is_empty() && p.take_client().is_empty());
    assert_eq!(
        p.client.cancel(id),
        Err(CommandError::UnknownCall(id.get()))
    );
}

#[test]
fn a_cancel_after_the_request_left_is_sent_once_and_the_peers_answer_is_ignored() {
    let mut p = Pair::connected();
    let id = p
        .client
        .call(p.now, req("x"), CallOptions::new(), 5)
        .unwrap();
    p.drive();
    let (rid, _) = requests(&p.take_server())[0].clone();
    p.client.cancel(id).unwrap();
    assert!(p.client.cancel(id).is_err());
    p.drive();
    let cancels = p
        .sent(Dir::Up)
        .iter()
        .filter(|f| f.frame_type == FrameType::Cancel)
        .count();
    assert_eq!(cancels, 1);
    let evs = p.take_server();
    assert!(matches!(
        &evs[..],
        [Event::RequestEnded { id, why: RequestEnd::Cancelled }] if *id == rid
    ));
    assert_eq!(
        brief(p.sent(Dir::Down)),
        [(FrameType::Response, id.get(), Status::CANCELLED)],
        "the callee answers CANCELLED"
    );
    assert!(p.take_client().is_empty(), "the caller ignores it");
    assert_eq!(p.client.stats().late_answers, 1);
}

#[test]
fn a_cancel_crossing_the_answer_is_ignored_by_the_callee_and_the_answer_by_the_caller() {
    let mut p = Pair::connected();
    let id = p
        .client
        .call(p.now, req("x"), CallOptions::new(), 5)
        .unwrap();
    p.drive();
    let (rid, _) = requests(&p.take_server())[0].clone();
    // The answer leaves the server while the CANCEL leaves the client: they cross.
    p.hold(Dir::Down, true);
    p.server
        .respond(rid, Frame::response(0, Status::OK, "late"))
        .unwrap();
    p.drive();
    p.client.cancel(id).unwrap();
    p.drive();
    assert!(
        p.take_server().is_empty(),
        "CANCEL of an answered call: nothing"
    );
    p.hold(Dir::Down, false);
    p.drive();
    assert!(
        p.take_client().is_empty(),
        "the answer after CANCEL: nothing"
    );
    assert_eq!(
        brief(p.sent(Dir::Down)),
        [(FrameType::Response, id.get(), Status::OK)],
        "no second answer from the callee"
    );
}

#[test]
fn a_cancel_overtakes_what_was_queued_after_its_request_left() {
    let mut p = Pair::connected();
    let id = p
        .client
        .call(p.now, req("x"), CallOptions::new(), 5)
        .unwrap();
    p.drive();
    p.clear_log();
    for i in 0..3 {
        let f = Frame::publish(Subject::literal("p").unwrap(), format!("{i}"));
        p.client.publish(f).unwrap();
    }
    p.client.cancel(id).unwrap();
    p.drive();
    let sent = p.sent(Dir::Up);
    assert_eq!(sent[0].frame_type, FrameType::Cancel);
    assert!(sent[1..].iter().all(|f| f.frame_type == FrameType::Publish));
    assert_eq!(sent.len(), 4);
}

#[test]
fn other_operations_can_be_given_up_locally_too() {
    let mut p = Pair::connected();
    let id = p.client.query(p.now, true, 9).unwrap();
    assert_eq!(p.client.cancel(id), Ok(Some(9)));
    p.drive();
    assert!(answers(&p.client_events).is_empty());
}
