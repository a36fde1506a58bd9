//! Closing both ways: CLOSE goes after what is queued and is the last frame; operations in
//! flight get their one answer; a lost transport fails them with UNAVAILABLE.

use crate::calls::req;
use crate::pair::{answers, brief, requests, Dir, Pair, Raw};
use bytes::BytesMut;
use mitto_proto::connection::{CallOptions, Closer, CommandError, Config, Event, RequestEnd};
use mitto_proto::{Frame, FrameType, Status, Subject};

fn closed(evs: &[Event<u64>]) -> (Closer, Status) {
    match evs.last() {
        Some(Event::Closed(c)) => (c.by, c.status),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_local_close_cancels_calls_answers_the_peers_and_sends_close_last() {
    let mut p = Pair::connected();
    let pending = p
        .client
        .call(p.now, req("x"), CallOptions::new(), 1)
        .unwrap();
    p.server
        .call(p.now, req("y"), CallOptions::new(), 2)
        .unwrap();
    p.drive();
    p.take_client();
    p.take_server();
    p.clear_log();
    p.client
        .publish(Frame::publish(Subject::literal("last").unwrap(), "p"))
        .unwrap();
    p.client.close(Status::OK, "bye").unwrap();
    assert!(
        !p.client.is_closed(),
        "closed once the driver took the CLOSE"
    );
    assert_eq!(answers(&p.client_events), []);
    p.drive();
    let sent = brief(p.sent(Dir::Up));
    assert_eq!(sent[0], (FrameType::Cancel, pending.get(), Status::OK));
    assert_eq!(sent.last(), Some(&(FrameType::Close, 0, Status::OK)));
    assert!(
        sent.iter().any(|f| f.0 == FrameType::Publish),
        "what was queued goes before"
    );
    assert!(sent
        .iter()
        .any(|f| f.0 == FrameType::Response && f.2 == Status::UNAVAILABLE));
    assert_eq!(answers(&p.client_events), [(1, Status::UNAVAILABLE)]);
    assert!(p.client_events.iter().any(|e| matches!(
        e,
        Event::RequestEnded {
            why: RequestEnd::ConnectionLost,
            ..
        }
    )));
    assert_eq!(closed(&p.client_events), (Closer::Local, Status::OK));
    assert_eq!(closed(&p.server_events), (Closer::Peer, Status::OK));
    assert!(p.client.is_closed() && p.server.is_closed());
    assert_eq!(
        brief(p.sent(Dir::Down)).last(),
        Some(&(FrameType::Close, 0, Status::OK)),
        "the peer answers CLOSE with its own"
    );
    assert_eq!(
        p.client.call(p.now, req("z"), CallOptions::new(), 3),
        Err(CommandError::Closed)
    );
}

#[test]
fn the_peers_close_fails_what_waits_with_its_status() {
    let mut p = Pair::connected();
    p.client
        .call(p.now, req("x"), CallOptions::new(), 1)
        .unwrap();
    p.drive();
    requests(&p.take_server());
    p.server.close(Status::UNAVAILABLE, "draining").unwrap();
    p.drive();
    assert_eq!(answers(&p.client_events), [(1, Status::UNAVAILABLE)]);
    let Some(Event::Closed(c)) = p.client_events.last() else {
        panic!()
    };
    assert_eq!(
        (c.by, c.status, c.reason.as_str()),
        (Closer::Peer, Status::UNAVAILABLE, "draining")
    );
    // The server's call of the client's ended with UNAVAILABLE too, before its CLOSE.
    assert_eq!(
        brief(p.sent(Dir::Down))[..],
        [
            (
                FrameType::Response,
                brief(p.sent(Dir::Up))[0].1,
                Status::UNAVAILABLE
            ),
            (FrameType::Close, 0, Status::UNAVAILABLE)
        ]
    );
}

#[test]
fn a_cut_transport_fails_every_operation_with_unavailable_once() {
    let mut p = Pair::connected();
    for ctx in 0..5 {
        p.client
            .call(p.now, req("x"), CallOptions::new(), ctx)
            .unwrap();
    }
    p.drive();
    p.take_server();
    p.cut();
    let got = answers(&p.client_events);
    assert_eq!(got.len(), 5);
    assert!(got
        .iter()
        .all(|(_, s)| *s == Status::UNAVAILABLE && s.is_retryable()));
    assert_eq!(
        closed(&p.client_events),
        (Closer::Transport, Status::UNAVAILABLE)
    );
    let ended = p
        .server_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::RequestEnded {
                    why: RequestEnd::ConnectionLost,
                    ..
                }
            )
        })
        .count();
    assert_eq!(ended, 5);
    p.cut();
    assert_eq!(answers(&p.client_events).len(), 5, "nothing twice");
}

#[test]
fn an_end_of_stream_inside_a_frame_is_answered_before_the_connection_ends() {
    let mut r = Raw::accepted_server(Config::server(crate::pair::offer("s", 0)));
    let f = Frame::publish(Subject::literal("a").unwrap(), "abc")
        .to_bytes()
        .unwrap();
    let mut buf = BytesMut::from(&f[..f.len() - 1]);
    r.conn.handle_eof(r.now, &mut buf);
    assert_eq!(
        brief(&r.out()),
        [
            (FrameType::Error, 0, Status::PROTOCOL_ERROR),
            (FrameType::Close, 0, Status::PROTOCOL_ERROR)
        ]
    );
    assert_eq!(
        closed(&r.events()),
        (Closer::Protocol, Status::PROTOCOL_ERROR)
    );
    // A clean end without CLOSE.
    let mut r = Raw::accepted_server(Config::server(crate::pair::offer("s", 0)));
    r.conn.handle_eof(r.now, &mut BytesMut::new());
    assert!(r.out().is_empty());
    assert_eq!(
        closed(&r.events()),
        (Closer::Transport, Status::UNAVAILABLE)
    );
}
