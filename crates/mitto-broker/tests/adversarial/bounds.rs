//! What the broker keeps for a peer besides its connection's queues: deliveries waiting for an
//! acknowledgement, sessions kept for a client that lost its connection, durable deliveries of
//! a subscription that ended, and the read buffers a waiting message could keep alive. Each
//! test asserts the bound through what the peer receives or a broker counter.

use crate::raw::{self, offer, Raw};
use mitto::proto::compress::compress;
use mitto::proto::{
    Delivery, Flags, Frame, FrameType, Hello, SlowConsumerPolicy, SubscribeOptions,
};
use mitto::{Client, ClientOptions, PublishOptions, Status};
use mitto_broker::{Broker, BrokerConfig};
use std::time::Duration;

/// A broker on loopback TCP, without monitoring, with `extra` (TOML) over the defaults.
async fn start(extra: &str) -> (Broker, String) {
    let text = format!("listen = [\"tcp://127.0.0.1:0\"]\nmonitor = \"\"\n{extra}");
    let b = Broker::start(BrokerConfig::from_toml(&text).unwrap())
        .await
        .unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn stat(b: &Broker, key: &str) -> u64 {
    b.stats().get(key).copied().unwrap_or(0)
}

/// Waits (at most 10 s) until counter `key` reaches `n`; returns it.
async fn counter(b: &Broker, key: &str, n: u64) -> u64 {
    for _ in 0..1000 {
        if stat(b, key) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stat(b, key)
}

async fn client(url: &str) -> Client {
    Client::connect(url, ClientOptions::new().timeout(Duration::from_secs(5)))
        .await
        .unwrap()
}

async fn publish_acked(c: &Client, subject: &str, payload: impl Into<bytes::Bytes>) {
    c.publish_with(subject, payload.into(), PublishOptions::new().ack())
        .await
        .unwrap();
}

fn at_least_once() -> SubscribeOptions {
    SubscribeOptions {
        delivery: Delivery::AtLeastOnce,
        ack_wait_ms: 60_000,
        ..SubscribeOptions::default()
    }
}

fn durable(name: &str) -> SubscribeOptions {
    SubscribeOptions {
        durable: Some(name.into()),
        ..at_least_once()
    }
}

/// The next frame within `d`, `None` if none came (a quiet window, not a speed assertion).
async fn within(r: &mut Raw, d: Duration) -> Option<Frame> {
    tokio::time::timeout(d, r.recv()).await.ok()
}

/// Every frame that comes before a quiet window.
async fn until_quiet(r: &mut Raw) -> Vec<Frame> {
    let mut got = Vec::new();
    while let Some(f) = within(r, Duration::from_millis(300)).await {
        got.push(f);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_stop_at_their_byte_bound_and_go_on_with_acks() {
    let (b, url) = start("max_unacked_bytes = 65536").await;
    let mut sub = Raw::login(&url, "", "").await;
    // No credit flow: only the unacknowledged bound holds the deliveries back.
    sub.join(false, 1, "work", &at_least_once()).await;
    let c = client(&url).await;
    const N: usize = 20;
    for i in 0..N {
        publish_acked(&c, "work", vec![i as u8; 10_000]).await;
    }
    let first = until_quiet(&mut sub).await;
    let len = first[0].encoded_len();
    // Sent while under the bound, the one that crossed it included: 7 of 10 KB for 64 KiB.
    assert_eq!(first.len(), 65_536usize.div_ceil(len), "{len}-byte events");
    // One acknowledgement makes room for one more, nothing else.
    sub.send(&Frame::ack(first[0].id, 1)).await;
    let next = sub.recv().await;
    assert_eq!(next.payload[0] as usize, first.len());
    assert!(within(&mut sub, Duration::from_millis(300)).await.is_none());
    // Acknowledged as they come, the rest follow in order: none was dropped for the bound.
    let mut got: Vec<u8> = first.iter().map(|e| e.payload[0]).collect();
    got.push(next.payload[0]);
    for e in first[1..].iter().chain([&next]) {
        sub.send(&Frame::ack(e.id, 1)).await;
    }
    while got.len() < N {
        let e = sub.recv().await;
        assert_eq!(e.frame_type, FrameType::Event, "{e:?}");
        got.push(e.payload[0]);
        sub.send(&Frame::ack(e.id, 1)).await;
    }
    assert_eq!(got, (0..N as u8).collect::<Vec<_>>());
    assert_eq!(counter(&b, "acks", N as u64).await, N as u64);
    assert_eq!(stat(&b, "slow_consumer_drops"), 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_leaves_its_durable_deliveries_for_the_next_subscriber() {
    let (b, url) = start("").await;
    let mut a = Raw::login(&url, "", "").await;
    a.join(false, 1, "bill.>", &durable("billing")).await;
    let c = client(&url).await;
    for i in 0..5 {
        publish_acked(&c, "bill.x", format!("{i}")).await;
    }
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(a.recv().await);
    }
    for e in &events[..2] {
        a.send(&Frame::ack(e.id, 1)).await;
    }
    a.sync().await;
    // A clean disconnect: CLOSE, the broker's CLOSE back, end of stream.
    a.send(&Frame::close(Status::OK, "bye")).await;
    while a.try_recv().await.is_some() {}
    assert_eq!(counter(&b, "acks", 2).await, 2);
    let mut next = Raw::login(&url, "", "").await;
    next.join(false, 2, "bill.>", &durable("billing")).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = next.recv().await;
        got.push((
            String::from_utf8(e.payload.to_vec()).unwrap(),
            e.headers.delivery_count().unwrap_or(1),
        ));
        next.send(&Frame::ack(e.id, 2)).await;
    }
    let expect: Vec<(String, u32)> = (2..5).map(|i| (format!("{i}"), 2)).collect();
    assert_eq!(got, expect, "the unacknowledged ones, redelivered");
    assert_eq!(stat(&b, "orphan_drops"), 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_ended_as_a_slow_consumer_keeps_its_messages() {
    let (b, url) = start("").await;
    let mut a = Raw::login(&url, "", "").await;
    let opts = SubscribeOptions {
        policy: SlowConsumerPolicy::Disconnect,
        max_pending: 6,
        credit: 2,
        ..durable("audit")
    };
    a.join(false, 1, "audit", &opts).await;
    let c = client(&url).await;
    // Two delivered (credit 2) and four queued make six (unacknowledged ones count): the
    // seventh finds it full and ends it.
    for i in 0..7 {
        publish_acked(&c, "audit", format!("{i}")).await;
    }
    let mut seen = Vec::new();
    loop {
        let f = a.recv().await;
        if f.frame_type == FrameType::Error {
            assert_eq!(f.status, Status::SLOW_CONSUMER, "{f:?}");
            break;
        }
        seen.push(f);
    }
    assert_eq!(seen.len(), 2);
    assert_eq!(stat(&b, "slow_consumer_disconnects"), 1);
    // Kept for the name, full: a kept queue has no subscriber to disconnect, so it refuses
    // what comes now (counted) and keeps what it holds.
    publish_acked(&c, "audit", "7").await;
    assert_eq!(stat(&b, "slow_consumer_drops"), 1);
    assert_eq!(stat(&b, "slow_consumer_disconnects"), 1);
    // What it held, the two delivered and never acknowledged first, and the message that
    // found it full wait for the name.
    a.join(false, 2, "audit", &durable("audit")).await;
    let mut got = Vec::new();
    for _ in 0..7 {
        let e = a.recv().await;
        got.push(String::from_utf8(e.payload.to_vec()).unwrap());
        a.send(&Frame::ack(e.id, 2)).await;
    }
    let expect: Vec<String> = (0..7).map(|i| format!("{i}")).collect();
    assert_eq!(got, expect);
    assert!(within(&mut a, Duration::from_millis(300)).await.is_none());
    assert_eq!(stat(&b, "orphan_drops"), 0);
    b.shutdown().await;
}

/// Connects with client id `id` (a session the broker keeps when the connection is lost),
/// subscribes to `filter`; returns the peer and its session id.
async fn with_session(url: &str, id: &str, filter: &str) -> (Raw, String) {
    let hello = Hello {
        client_id: id.into(),
        ..offer("", "")
    };
    let (mut r, reply) = Raw::open(url, &hello).await;
    r.join(false, 1, filter, &SubscribeOptions::default()).await;
    (r, reply.session)
}

/// Whether client `id` gets session `session` back.
async fn resumes(url: &str, id: &str, session: &str) -> bool {
    let hello = Hello {
        client_id: id.into(),
        session: session.into(),
        ..offer("", "")
    };
    let (_r, reply) = Raw::open(url, &hello).await;
    reply.flags & Hello::RESUMED != 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_their_count_bound_the_oldest_detached_sessions_end() {
    let (b, url) = start("max_detached_sessions_per_user = 2").await;
    let mut sessions = Vec::new();
    for id in ["s1", "s2", "s3"] {
        let (r, s) = with_session(&url, id, &format!("{id}.>")).await;
        drop(r);
        let n = sessions.len() as u64 + 1;
        assert_eq!(counter(&b, "sessions_detached", n).await, n);
        sessions.push((id, s));
    }
    assert_eq!(stat(&b, "sessions_evicted"), 1);
    // The oldest went (and its subscription with it); the two newest are kept. (Each try
    // leaves a session behind again when its connection drops: the oldest is tried last.)
    assert!(resumes(&url, sessions[2].0, &sessions[2].1).await);
    assert!(resumes(&url, sessions[1].0, &sessions[1].1).await);
    assert!(!resumes(&url, sessions[0].0, &sessions[0].1).await);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_their_byte_bound_the_oldest_detached_sessions_end() {
    let (b, url) = start("max_detached_bytes = 131072").await;
    let (r1, s1) = with_session(&url, "old", "old.>").await;
    let (r2, s2) = with_session(&url, "new", "new.>").await;
    drop(r1);
    assert_eq!(counter(&b, "sessions_detached", 1).await, 1);
    drop(r2);
    assert_eq!(counter(&b, "sessions_detached", 2).await, 2);
    let c = client(&url).await;
    // 80 KB each: together over the 128 KiB bound.
    for subject in ["old.x", "new.x"] {
        for _ in 0..8 {
            publish_acked(&c, subject, vec![0u8; 10_000]).await;
        }
    }
    assert_eq!(counter(&b, "sessions_evicted", 1).await, 1);
    assert!(stat(&b, "detached_session_bytes") <= 131_072);
    assert!(!resumes(&url, "old", &s1).await);
    let hello = Hello {
        client_id: "new".into(),
        session: s2,
        ..offer("", "")
    };
    let (mut back, reply) = Raw::open(&url, &hello).await;
    assert_ne!(reply.flags & Hello::RESUMED, 0);
    for _ in 0..8 {
        assert_eq!(back.recv().await.payload.len(), 10_000);
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_message_does_not_keep_its_publishers_read_buffer_alive() {
    let (b, url) = start("").await;
    let mut sub = Raw::login(&url, "", "").await;
    // Credit 1: one message goes, the rest wait in the broker.
    let one = SubscribeOptions {
        credit: 1,
        ..SubscribeOptions::default()
    };
    sub.join(false, 1, "rare", &one).await;
    sub.join(false, 2, "dense", &one).await;
    let c = client(&url).await;
    // A run of messages for one subscription shares its read buffer: nothing to copy.
    for _ in 0..200 {
        c.publish("dense", vec![1u8; 100]).await.unwrap();
    }
    publish_acked(&c, "dense", vec![1u8; 100]).await;
    let dense = stat(&b, "payload_copies");
    assert!(dense <= 4, "{dense} copies for a dense run");
    // One message in 60 for this subscription: each would keep a buffer of its own alive.
    for _ in 0..200 {
        c.publish("rare", vec![2u8; 100]).await.unwrap();
        for _ in 0..60 {
            c.publish("noise", vec![0u8; 100]).await.unwrap();
        }
    }
    publish_acked(&c, "rare", vec![2u8; 100]).await;
    let rare = stat(&b, "payload_copies") - dense;
    assert!(
        rare >= 190,
        "only {rare} of 200 scattered messages copied out"
    );
    // What waits is intact.
    sub.send(&Frame::credit_subscription(1, 1000)).await;
    let mut n = 0;
    while let Some(e) = within(&mut sub, Duration::from_millis(300)).await {
        if e.aux == 1 {
            assert_eq!(&e.payload[..], &[2u8; 100][..]);
            n += 1;
        }
    }
    assert_eq!(n, 201);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_publish_is_held_to_the_limit_its_connection_agreed() {
    let (b, url) = start("").await;
    let mut sub = Raw::login(&url, "", "").await;
    sub.join(false, 1, "z", &SubscribeOptions::default()).await;
    let small = Hello {
        max_payload: 1024,
        ..offer("", "")
    };
    let (mut p, reply) = Raw::open(&url, &small).await;
    assert_eq!(reply.max_payload, 1024);
    // 40 bytes on the wire, 64 KiB once decompressed: over what this publisher agreed.
    let block = compress(&[0u8; 65_536]);
    assert!(block.len() < 1024);
    let f = Frame::publish(raw::subject("z"), block)
        .with_id(7)
        .with_flags(Flags::COMPRESSED | Flags::ACK_REQUIRED);
    p.send(&f).await;
    let e = p.recv().await;
    assert_eq!(
        (e.frame_type, e.status, e.id),
        (FrameType::Error, Status::PAYLOAD_TOO_LARGE, 7),
        "{e:?}"
    );
    assert!(within(&mut sub, Duration::from_millis(300)).await.is_none());
    b.shutdown().await;
}
