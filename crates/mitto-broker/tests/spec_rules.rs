//! Rules of `spec/PROTOCOL.md` written in prose rather than bytes, checked against the broker
//! over a socket: a PING is a barrier for the frames before it (section 3.9), and a client id
//! the broker assigned gets no session (section 8.5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/raw.rs"]
mod raw;

use mitto::proto::negotiate::Features;
use mitto::proto::{Frame, FrameType, SubscribeOptions};
use mitto_broker::{Broker, BrokerConfig};
use raw::{offer, subject, Raw};

async fn broker() -> (Broker, String) {
    let b = Broker::start(BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

/// Reads until the PONG answering PING `id`; returns what came before it.
async fn until_pong(p: &mut Raw, id: u64) -> Vec<Frame> {
    let mut before = Vec::new();
    loop {
        let f = p.recv().await;
        if f.frame_type == FrameType::Pong && f.id == id {
            return before;
        }
        before.push(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_is_in_force_once_the_ping_after_it_is_answered() {
    let (_b, url) = broker().await;
    let mut sub = Raw::login(&url, "", "").await;
    let mut publisher = Raw::login(&url, "", "").await;
    // Many rounds, each on a fresh subject: a PONG that overtook its SUBSCRIBE would let some
    // publish find no subscription and vanish.
    for round in 0..100u32 {
        let s = format!("barrier.{round}");
        let f = Frame::subscribe(round + 1, subject(&s), &SubscribeOptions::default()).unwrap();
        sub.send(&f).await; // no ACK asked: the PING is the only barrier
        sub.send(&Frame::ping(1000 + u64::from(round))).await;
        let before = until_pong(&mut sub, 1000 + u64::from(round)).await;
        assert!(
            before.is_empty(),
            "nothing answers a plain SUBSCRIBE: {before:?}"
        );
        publisher
            .send(&Frame::publish(subject(&s), round.to_be_bytes().to_vec()))
            .await;
        let ev = sub.recv().await;
        assert_eq!(ev.frame_type, FrameType::Event, "round {round}: {ev:?}");
        assert_eq!(&ev.payload[..], &round.to_be_bytes(), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_the_broker_assigned_gets_no_session() {
    let (_b, url) = broker().await;
    let mut hello = offer("", "");
    assert!(hello.features.contains(Features::SESSION_RESUME));
    hello.client_id = String::new();
    let (_p, reply) = Raw::open(&url, &hello).await;
    assert!(
        !reply.client_id.is_empty(),
        "the broker names the connection"
    );
    assert!(reply.session.is_empty(), "but keeps no session for it");

    // The same HELLO with a client id of its own gets one.
    hello.client_id = "mine".into();
    let (_q, reply) = Raw::open(&url, &hello).await;
    assert_eq!(reply.client_id, "mine");
    assert!(!reply.session.is_empty());
}
