//! The client side of pub/sub against a server that plays the broker by hand (its frames
//! reach the test as `Event::Frame`, its answers go with `send_frame`): subscription credit,
//! at-least-once ACK / NACK, unsubscribe, subscription errors, acknowledged publishes,
//! registrations and the calls routed to them, queries.

use crate::pair::{answers, brief, frames, requests, Dir, Pair};
use mitto_proto::connection::{CallOptions, CommandError, Event};
use mitto_proto::{
    Delivery, Flags, Frame, FrameType, HealthReport, HealthState, Status, Subject, SubscribeOptions,
};

fn opts(credit: u32, delivery: Delivery) -> SubscribeOptions {
    SubscribeOptions {
        credit,
        delivery,
        ..Default::default()
    }
}

/// Subscribes and has the "broker" acknowledge it; the sid.
fn subscribed(p: &mut Pair, filter: &str, o: SubscribeOptions) -> u32 {
    let (sid, op) = p
        .client
        .subscribe(p.now, Subject::new(filter).unwrap(), o, 100)
        .unwrap();
    p.drive();
    let got = frames(&p.take_server());
    assert_eq!(
        (got[0].frame_type, got[0].aux, got[0].id),
        (FrameType::Subscribe, sid, op.get())
    );
    assert!(got[0].flags.contains(Flags::ACK_REQUIRED));
    p.server.send_frame(Frame::ack(op.get(), 0)).unwrap();
    p.drive();
    assert_eq!(answers(&p.take_client()), [(100, Status::OK)]);
    sid
}

fn deliver(p: &mut Pair, sid: u32, id: u64, ack: bool) {
    let mut e = Frame::event(
        sid,
        id,
        Subject::literal("orders.eu").unwrap(),
        format!("m{id}"),
    );
    if ack {
        e.flags.insert(Flags::ACK_REQUIRED);
    }
    p.server.send_frame(e).unwrap();
}

fn messages(evs: &[Event<u64>]) -> Vec<(u32, u64)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Message { sid, frame } => Some((*sid, frame.id)),
            _ => None,
        })
        .collect()
}

#[test]
fn events_reach_their_subscription_within_its_credit_and_credit_is_granted_as_consumed() {
    let mut p = Pair::connected();
    let sid = subscribed(&mut p, "orders.>", opts(4, Delivery::AtMostOnce));
    for id in 1..=5 {
        deliver(&mut p, sid, id, false);
    }
    p.drive();
    assert_eq!(
        messages(&p.take_client()),
        [(sid, 1), (sid, 2), (sid, 3), (sid, 4)]
    );
    assert_eq!(
        p.client.stats().events_over_credit,
        1,
        "the fifth had no credit"
    );
    p.clear_log();
    p.client.consumed(sid, 1).unwrap();
    p.drive();
    assert!(
        p.sent(Dir::Up).is_empty(),
        "granted once half the credit was taken"
    );
    p.client.consumed(sid, 1).unwrap();
    p.drive();
    let c = &p.sent(Dir::Up)[0];
    assert_eq!(
        (c.frame_type, c.aux, &c.payload[..]),
        (FrameType::Credit, sid, &2u32.to_be_bytes()[..])
    );
    deliver(&mut p, sid, 6, false);
    p.drive();
    assert_eq!(messages(&p.take_client()), [(sid, 6)]);
}

#[test]
fn at_least_once_deliveries_are_acknowledged_or_refused_once_each() {
    let mut p = Pair::connected();
    let sid = subscribed(&mut p, "orders.*", opts(10, Delivery::AtLeastOnce));
    deliver(&mut p, sid, 7, true);
    deliver(&mut p, sid, 8, true);
    p.drive();
    assert_eq!(messages(&p.take_client()).len(), 2);
    p.client.ack(sid, 7).unwrap();
    assert_eq!(
        p.client.ack(sid, 7),
        Err(CommandError::UnknownDelivery { sid, delivery: 7 }),
        "acknowledged once"
    );
    assert!(p.client.ack(sid, 99).is_err(), "never delivered");
    p.client.nack(sid, 8, Some(250)).unwrap();
    p.drive();
    let got = frames(&p.take_server());
    assert_eq!(
        brief(&got),
        [
            (FrameType::Ack, 7, Status::OK),
            (FrameType::Nack, 8, Status::OK)
        ]
    );
    assert_eq!((got[0].aux, got[1].aux), (sid, sid));
    assert_eq!(&got[1].payload[..], &250u32.to_be_bytes());
}

#[test]
fn after_unsubscribe_events_are_discarded_and_unsubscribe_after_counts_them() {
    let mut p = Pair::connected();
    let a = subscribed(&mut p, "a.>", SubscribeOptions::default());
    let b = subscribed(&mut p, "b.>", SubscribeOptions::default());
    p.client.unsubscribe(a).unwrap();
    p.client.unsubscribe_after(b, 2).unwrap();
    p.drive();
    let got = frames(&p.take_server());
    assert_eq!(
        brief(&got).iter().map(|f| f.0).collect::<Vec<_>>(),
        [FrameType::Unsubscribe; 2]
    );
    assert_eq!((got[0].aux, got[0].payload.len()), (a, 0));
    assert_eq!(
        (got[1].aux, &got[1].payload[..]),
        (b, &2u32.to_be_bytes()[..])
    );
    for id in 1..=3 {
        deliver(&mut p, a, id, false);
        deliver(&mut p, b, id, false);
    }
    p.drive();
    let evs = p.take_client();
    assert_eq!(messages(&evs), [(b, 1), (b, 2)]);
    assert!(
        matches!(evs.last(), Some(Event::SubscriptionEnded { sid, status: Status::OK }) if *sid == b)
    );
    assert_eq!(p.client.stats().events_unknown_sid, 4);
    assert_eq!(
        p.client.unsubscribe(a),
        Err(CommandError::UnknownSubscription(a))
    );
}

#[test]
fn a_subscription_the_broker_ends_or_refuses_is_gone() {
    let mut p = Pair::connected();
    let sid = subscribed(&mut p, "a", SubscribeOptions::default());
    let mut e = Frame::error(0, Status::SLOW_CONSUMER, "too slow");
    e.aux = sid;
    p.server.send_frame(e).unwrap();
    p.drive();
    assert!(
        matches!(&p.take_client()[..], [Event::SubscriptionEnded { sid: s, status: Status::SLOW_CONSUMER }] if *s == sid)
    );
    let (sid, op) = p
        .client
        .subscribe(
            p.now,
            Subject::new("secret.>").unwrap(),
            SubscribeOptions::default(),
            5,
        )
        .unwrap();
    p.drive();
    p.server
        .send_frame(Frame::error(op.get(), Status::FORBIDDEN, "no"))
        .unwrap();
    deliver(&mut p, sid, 1, false);
    p.drive();
    let evs = p.take_client();
    assert_eq!(answers(&evs), [(5, Status::FORBIDDEN)]);
    assert!(messages(&evs).is_empty());
}

#[test]
fn publishes_requests_and_subscriptions_reach_the_peer_in_the_order_issued() {
    let mut p = Pair::connected();
    let publish = |s: &str| Frame::publish(Subject::literal(s).unwrap(), "p");
    p.client.publish(publish("one")).unwrap();
    p.client
        .call(
            p.now,
            Frame::request(0, Subject::literal("two").unwrap(), ""),
            CallOptions::new(),
            1,
        )
        .unwrap();
    p.client
        .subscribe(
            p.now,
            Subject::new("three").unwrap(),
            SubscribeOptions::default(),
            2,
        )
        .unwrap();
    p.client
        .publish_acked(p.now, publish("four"), None, 3)
        .unwrap();
    p.client.publish(publish("five")).unwrap();
    p.drive();
    let got: Vec<(FrameType, String)> = p
        .sent(Dir::Up)
        .iter()
        .map(|f| (f.frame_type, f.subject.as_str().to_owned()))
        .collect();
    assert_eq!(
        got,
        [
            (FrameType::Publish, "one".into()),
            (FrameType::Request, "two".into()),
            (FrameType::Subscribe, "three".into()),
            (FrameType::Publish, "four".into()),
            (FrameType::Publish, "five".into()),
        ]
    );
}

#[test]
fn an_acknowledged_publish_completes_with_the_brokers_ack_or_error() {
    let mut p = Pair::connected();
    let f = |s: &str| Frame::publish(Subject::literal(s).unwrap(), "p");
    let a = p.client.publish_acked(p.now, f("a"), None, 1).unwrap();
    let b = p.client.publish_acked(p.now, f("b"), None, 2).unwrap();
    assert_ne!(a, b);
    assert!(matches!(
        p.client.publish(f("c").with_flags(Flags::ACK_REQUIRED)),
        Err(CommandError::Misuse(_))
    ));
    assert!(
        p.client
            .publish(Frame::publish(Subject::new("a.*").unwrap(), ""))
            .is_err(),
        "a literal subject only"
    );
    p.drive();
    p.server.send_frame(Frame::ack(a.get(), 0)).unwrap();
    p.server
        .send_frame(Frame::error(
            b.get(),
            Status::BACKPRESSURE_REJECTION,
            "full",
        ))
        .unwrap();
    p.drive();
    assert_eq!(
        answers(&p.client_events),
        [(1, Status::OK), (2, Status::BACKPRESSURE_REJECTION)]
    );
}

#[test]
fn a_registered_instance_answers_the_calls_the_broker_routes_to_it() {
    let mut p = Pair::connected();
    let (sid, op) = p
        .client
        .register(
            p.now,
            Subject::new("calc.*").unwrap(),
            SubscribeOptions::default(),
            4,
        )
        .unwrap();
    p.drive();
    let got = frames(&p.take_server());
    assert_eq!((got[0].frame_type, got[0].aux), (FrameType::Register, sid));
    p.server.send_frame(Frame::ack(op.get(), 0)).unwrap();
    // The broker forwards a call under an id of its own (bit 63 set).
    let fwd = p
        .server
        .call(
            p.now,
            Frame::request(0, Subject::literal("calc.add").unwrap(), "[1,2]"),
            CallOptions::new(),
            9,
        )
        .unwrap();
    assert_eq!(fwd.get() >> 63, 1);
    p.drive();
    let evs = p.take_client();
    assert_eq!(answers(&evs), [(4, Status::OK)]);
    let (rid, _) = requests(&evs)[0].clone();
    assert_eq!(rid.0, fwd.get());
    p.client
        .respond(rid, Frame::response(0, Status::OK, "3"))
        .unwrap();
    p.client.unregister(sid).unwrap();
    p.drive();
    assert_eq!(answers(&p.server_events), [(9, Status::OK)]);
    assert!(frames(&p.server_events)
        .iter()
        .any(|f| f.frame_type == FrameType::Unregister));
}

#[test]
fn a_query_is_answered_by_its_report_and_a_second_report_is_ignored() {
    let mut p = Pair::connected();
    let q = p.client.query(p.now, false, 6).unwrap();
    p.drive();
    let got = frames(&p.take_server());
    assert_eq!((got[0].frame_type, got[0].id), (FrameType::Health, q.get()));
    let report = HealthReport {
        state: HealthState::Serving,
        uptime_ms: 5,
        server: "s".into(),
        detail: None,
    };
    p.server
        .send_frame(Frame::health_reply(q.get(), &report).unwrap())
        .unwrap();
    p.drive();
    let evs = p.take_client();
    let Some(Event::Answer {
        ctx: 6,
        answer: Ok(f),
        ..
    }) = evs.first()
    else {
        panic!("{evs:?}")
    };
    assert_eq!(HealthReport::decode(&f.payload).unwrap(), report);
    // A second reply to the same query is one given up on: ignored, not refused.
    p.server
        .send_frame(Frame::health_reply(q.get(), &report).unwrap())
        .unwrap();
    p.drive();
    assert!(p.take_client().is_empty());
}
