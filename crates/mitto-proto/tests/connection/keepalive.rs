//! Keepalive in virtual time: a PING every interval whatever the traffic, PONG answered, and a
//! peer silent for more than two intervals is gone.

use crate::calls::req;
use crate::pair::{answers, offer, Dir, Pair};
use mitto_proto::connection::{CallOptions, Closer, Config, Event};
use mitto_proto::{Frame, FrameType, Status};
use std::time::Duration;

fn pair(ms: u32) -> Pair {
    let mut p = Pair::with(
        Config::client(offer("c", ms)),
        Config::server(offer("s", 0)),
    );
    p.drive();
    p.take_client();
    p.take_server();
    p.clear_log();
    p
}

#[test]
fn pings_go_every_interval_and_are_answered() {
    let mut p = pair(1000);
    let t0 = p.now;
    p.advance_to(t0 + Duration::from_millis(999));
    assert!(p.sent(Dir::Up).is_empty() && p.sent(Dir::Down).is_empty());
    p.advance_to(t0 + Duration::from_millis(1000));
    let kinds = |fs: &[Frame]| fs.iter().map(|f| (f.frame_type, f.id)).collect::<Vec<_>>();
    assert_eq!(
        kinds(p.sent(Dir::Up)),
        [(FrameType::Ping, 1), (FrameType::Pong, 1)]
    );
    assert_eq!(
        kinds(p.sent(Dir::Down)),
        [(FrameType::Ping, 1), (FrameType::Pong, 1)]
    );
    p.run_until(t0 + Duration::from_secs(10));
    let pings = p
        .sent(Dir::Up)
        .iter()
        .filter(|f| f.frame_type == FrameType::Ping)
        .count();
    assert_eq!(pings, 10, "one a second, the peers alive all along");
    assert!(p.client.is_open() && p.server.is_open());
}

#[test]
fn a_pong_echoes_the_pings_payload() {
    let mut p = pair(0);
    let ping = Frame::ping(42).with_payload("t=17");
    assert!(p.client.handle_frame(p.now, ping).is_none());
    p.drive();
    let pong = &p.sent(Dir::Up)[0];
    assert_eq!(
        (pong.frame_type, pong.id, &pong.payload[..]),
        (FrameType::Pong, 42, &b"t=17"[..])
    );
}

#[test]
fn a_peer_silent_for_more_than_two_intervals_is_gone_and_calls_fail_unavailable() {
    let mut p = pair(1000);
    let t0 = p.now;
    p.client.call(t0, req("x"), CallOptions::new(), 3).unwrap();
    p.hold(Dir::Down, true);
    p.advance_to(t0 + Duration::from_millis(2000));
    assert!(
        p.client.is_open(),
        "silent for exactly two intervals: not yet"
    );
    p.advance_to(t0 + Duration::from_millis(2000) + Duration::from_nanos(1));
    assert_eq!(answers(&p.client_events), [(3, Status::UNAVAILABLE)]);
    match p.client_events.last() {
        Some(Event::Closed(c)) => {
            assert_eq!((c.by, c.status), (Closer::Transport, Status::UNAVAILABLE))
        }
        other => panic!("{other:?}"),
    }
    assert!(p.client.is_closed());
    assert_eq!(
        p.sent(Dir::Up)
            .iter()
            .filter(|f| f.frame_type == FrameType::Close)
            .count(),
        0,
        "no CLOSE to a peer presumed gone"
    );
}
