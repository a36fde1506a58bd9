//! Session resume: the client id and token of the last reply go in the next HELLO; without
//! RESUMED the subscriptions are made again with their ids and the credit the application
//! can still take, with RESUMED nothing is sent for them; registrations are always made
//! again; calls never are.

use crate::calls::req;
use crate::pair::{answers, frames, offer, Pair};
use mitto_proto::connection::{CallOptions, Config, Connection, Event, Session};
use mitto_proto::{Delivery, Flags, Frame, FrameType, Status, Subject, SubscribeOptions};

/// A pair whose client has two subscriptions (credit 10, 4 events taken, 1 consumed) and a
/// registration, then loses its transport with a call in flight; the session it keeps.
fn lost_session() -> Session {
    let mut p = Pair::connected();
    let opts = SubscribeOptions {
        credit: 10,
        delivery: Delivery::AtLeastOnce,
        ..Default::default()
    };
    let (a, _) = p
        .client
        .subscribe(p.now, Subject::new("a.>").unwrap(), opts.clone(), 1)
        .unwrap();
    let (b, _) = p
        .client
        .subscribe(
            p.now,
            Subject::new("b").unwrap(),
            SubscribeOptions::default(),
            2,
        )
        .unwrap();
    p.client
        .register(
            p.now,
            Subject::new("svc.*").unwrap(),
            SubscribeOptions::default(),
            3,
        )
        .unwrap();
    p.drive();
    for f in frames(&p.take_server()) {
        p.server.send_frame(Frame::ack(f.id, 0)).unwrap();
    }
    for id in 1..=4 {
        let e = Frame::event(a, id, Subject::literal("a.x").unwrap(), "m")
            .with_flags(Flags::ACK_REQUIRED);
        p.server.send_frame(e).unwrap();
    }
    p.drive();
    p.client.ack(a, 1).unwrap();
    p.client.consumed(a, 1).unwrap();
    p.client
        .call(p.now, req("x"), CallOptions::new(), 4)
        .unwrap();
    p.drive();
    p.take_client();
    p.cut();
    assert_eq!(
        answers(&p.client_events),
        [(4, Status::UNAVAILABLE)],
        "never carried over"
    );
    let s = p.client.session();
    assert_eq!((s.client_id.as_str(), s.token.as_str()), ("c-1", "s-1"));
    let sids: Vec<u32> = s.subscriptions.iter().map(|x| x.sid).collect();
    assert_eq!(sids.len(), 3);
    assert!(sids.contains(&a) && sids.contains(&b));
    let sa = s.subscriptions.iter().find(|x| x.sid == a).unwrap();
    assert_eq!(sa.room, 7, "10 granted, 4 taken, 1 consumed");
    assert_eq!(sa.unacked.len(), 3);
    s
}

/// A pair whose client resumes `session`, the server saying RESUMED or not.
fn resumed_pair(session: Session, resumed: bool) -> Pair {
    let mut p = Pair::new();
    p.client = Connection::resume(Config::client(offer("client", 0)), p.now, session);
    p.resumed = resumed;
    p.drive();
    p
}

#[test]
fn without_resumed_subscriptions_are_made_again_with_their_ids_and_remaining_credit() {
    let s = lost_session();
    let mut p = resumed_pair(s.clone(), false);
    let hello = match &p.server_events[0] {
        Event::Hello(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (hello.client_id.as_str(), hello.session.as_str()),
        ("c-1", "s-1")
    );
    assert!(matches!(
        p.client_events[0],
        Event::Connected { resumed: false, .. }
    ));
    let got = frames(&p.server_events);
    let kinds: Vec<(FrameType, u32)> = got.iter().map(|f| (f.frame_type, f.aux)).collect();
    let mut want: Vec<(FrameType, u32)> = s
        .subscriptions
        .iter()
        .map(|x| {
            (
                if x.registration {
                    FrameType::Register
                } else {
                    FrameType::Subscribe
                },
                x.sid,
            )
        })
        .collect();
    want.sort_by_key(|w| w.1);
    assert_eq!(kinds, want);
    let a = s
        .subscriptions
        .iter()
        .find(|x| x.options.credit == 10)
        .unwrap();
    let sub = got.iter().find(|f| f.aux == a.sid).unwrap();
    let opts = SubscribeOptions::decode(&sub.payload, "SUBSCRIBE").unwrap();
    assert_eq!(opts.credit, 7);
    // The server acknowledges them: no answer events (the application asked for none), and
    // the restored subscription delivers.
    for f in &got {
        p.server.send_frame(Frame::ack(f.id, 0)).unwrap();
    }
    p.server
        .send_frame(
            Frame::event(a.sid, 50, Subject::literal("a.y").unwrap(), "m")
                .with_flags(Flags::ACK_REQUIRED),
        )
        .unwrap();
    p.drive();
    let evs = p.take_client();
    assert!(answers(&evs).is_empty());
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::Message { sid, .. } if *sid == a.sid)));
    assert!(
        p.client.ack(a.sid, 2).is_err(),
        "deliveries of the old subscription are gone"
    );
}

#[test]
fn with_resumed_only_the_registrations_are_made_again() {
    let s = lost_session();
    let mut p = resumed_pair(s.clone(), true);
    assert!(matches!(
        p.client_events[0],
        Event::Connected { resumed: true, .. }
    ));
    let got = frames(&p.take_server());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].frame_type, FrameType::Register);
    let a = s
        .subscriptions
        .iter()
        .find(|x| x.options.credit == 10)
        .unwrap();
    // The server kept them: its EVENTs reach them, within the credit left, and their
    // unacknowledged deliveries can still be acknowledged.
    p.client.ack(a.sid, 2).unwrap();
    p.server
        .send_frame(
            Frame::event(a.sid, 9, Subject::literal("a.z").unwrap(), "m")
                .with_flags(Flags::ACK_REQUIRED),
        )
        .unwrap();
    p.drive();
    assert!(p
        .take_client()
        .iter()
        .any(|e| matches!(e, Event::Message { sid, .. } if *sid == a.sid)));
}

#[test]
fn a_refused_resubscription_ends_that_subscription() {
    let s = lost_session();
    let mut p = resumed_pair(s, false);
    let got = frames(&p.take_server());
    let sub = got
        .iter()
        .find(|f| f.frame_type == FrameType::Subscribe)
        .unwrap();
    p.server
        .send_frame(Frame::error(sub.id, Status::FORBIDDEN, "no longer"))
        .unwrap();
    p.drive();
    assert!(p.take_client().iter().any(
        |e| matches!(e, Event::SubscriptionEnded { sid, status: Status::FORBIDDEN } if *sid == sub.aux)
    ));
    assert!(p
        .client
        .session()
        .subscriptions
        .iter()
        .all(|x| x.sid != sub.aux));
}
