//! Subscription credit across session resumption (PROTOCOL.md 8.5, 11.3): EVENTs the broker
//! wrote to a connection that was then lost used credit that the client, never having received
//! them, never grants back. On resumption the broker sets each kept subscription's credit back
//! to its window, so that a subscriber cut off again and again never stalls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/raw.rs"]
mod raw;
#[path = "support/relay.rs"]
mod relay;

use mitto::proto::{Delivery, Frame, FrameType, Hello, SubscribeOptions};
use mitto::{Client, ClientOptions};
use mitto_broker::{Broker, BrokerConfig};
use raw::{offer, Raw};
use relay::relay;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

async fn start() -> (Broker, String) {
    let b = Broker::start(BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: "127.0.0.1:0".into(),
        // Messages left beyond a raw subscriber's credit would hold the shutdown up.
        shutdown_drain_ms: 100,
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn opts() -> ClientOptions {
    ClientOptions::new()
        .timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

/// A raw session as client `id`, resuming `session` when not empty.
async fn session(url: &str, id: &str, session: &str) -> (Raw, Hello) {
    let mut h = offer("", "");
    h.client_id = id.into();
    h.session = session.into();
    Raw::open(url, &h).await
}

/// The next EVENT's payload, or `None` if none comes within a short while.
async fn event(s: &mut Raw, within: Duration) -> Option<(String, Frame)> {
    let f = tokio::time::timeout(within, s.recv()).await.ok()?;
    assert_eq!(f.frame_type, FrameType::Event, "{f:?}");
    Some((String::from_utf8_lossy(&f.payload).into_owned(), f))
}

async fn publish(p: &Client, payload: &str) {
    p.publish("t.a", payload.to_owned()).await.unwrap();
    p.flush().await.unwrap();
}

/// The subscriber's connection is lost with EVENTs written to it that it never read; waits
/// until the broker keeps the session.
async fn lose(b: &Broker, s: Raw, detached: u64) {
    drop(s);
    until("the session is detached", || {
        b.stats()["sessions_detached"] == detached
    })
    .await;
}

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_spent_on_a_lost_connection_is_the_window_again_after_resuming() {
    let (b, url) = start().await;
    let p = Client::connect(&url, opts()).await.unwrap();
    let (mut s, reply) = session(&url, "sub-1", "").await;
    let sub = SubscribeOptions {
        credit: 2,
        ..SubscribeOptions::default()
    };
    s.join(false, 1, "t.>", &sub).await;
    // Both credits spent on EVENTs the client never reads.
    publish(&p, "1").await;
    publish(&p, "2").await;
    until("both written", || b.stats()["msgs_out"] == 2).await;
    lose(&b, s, 1).await;
    publish(&p, "3").await;

    let (mut s, back) = session(&url, "sub-1", &reply.session).await;
    assert_ne!(back.flags & Hello::RESUMED, 0, "resumed");
    assert_eq!(event(&mut s, LONG).await.map(|e| e.0).as_deref(), Some("3"));
    publish(&p, "4").await;
    publish(&p, "5").await;
    assert_eq!(event(&mut s, LONG).await.map(|e| e.0).as_deref(), Some("4"));
    // The window (2) is set again, not added to what was left: no third EVENT without CREDIT.
    assert!(event(&mut s, SHORT).await.is_none(), "beyond the window");
    s.send(&Frame::credit_subscription(1, 1)).await;
    assert_eq!(event(&mut s, LONG).await.map(|e| e.0).as_deref(), Some("5"));

    // Resumed with credit left (one of two): set to the window again, not raised above it.
    s.send(&Frame::credit_subscription(1, 1)).await;
    s.sync().await;
    lose(&b, s, 2).await;
    let (mut s, _) = session(&url, "sub-1", &reply.session).await;
    for n in ["6", "7", "8"] {
        publish(&p, n).await;
    }
    assert_eq!(event(&mut s, LONG).await.map(|e| e.0).as_deref(), Some("6"));
    assert_eq!(event(&mut s, LONG).await.map(|e| e.0).as_deref(), Some("7"));
    assert!(event(&mut s, SHORT).await.is_none(), "beyond the window");
    assert_eq!(b.stats()["sessions_resumed"], 2);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_come_again_within_the_window_after_resuming() {
    let (b, url) = start().await;
    let p = Client::connect(&url, opts()).await.unwrap();
    let (mut s, reply) = session(&url, "sub-2", "").await;
    let sub = SubscribeOptions {
        credit: 2,
        delivery: Delivery::AtLeastOnce,
        ack_wait_ms: 60_000,
        ..SubscribeOptions::default()
    };
    s.join(false, 1, "t.>", &sub).await;
    publish(&p, "1").await;
    publish(&p, "2").await;
    until("both written", || b.stats()["msgs_out"] == 2).await;
    lose(&b, s, 1).await;
    publish(&p, "3").await;

    // Sent again at once, marked, without waiting for ack_wait; then the window is spent.
    let (mut s, _) = session(&url, "sub-2", &reply.session).await;
    for want in ["1", "2"] {
        let (got, f) = event(&mut s, LONG).await.expect("redelivered");
        assert_eq!(got, want);
        assert_eq!(f.headers.delivery_count(), Some(2));
        s.send(&Frame::ack(f.id, 1)).await;
    }
    assert!(event(&mut s, SHORT).await.is_none(), "beyond the window");
    s.send(&Frame::credit_subscription(1, 2)).await;
    let (got, f) = event(&mut s, LONG).await.expect("after CREDIT");
    assert_eq!((got.as_str(), f.headers.delivery_count()), ("3", None));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_off_again_and_again_keeps_receiving() {
    const CUTS: u64 = 30;
    let (b, url) = start().await;
    let r = relay(&url).await;
    let s = Client::connect(&r.url, opts().client_id("steady-1"))
        .await
        .unwrap();
    let sub_opts = SubscribeOptions {
        credit: 4,
        ..SubscribeOptions::default()
    };
    let mut sub = s.subscribe_with("t.>", sub_opts).await.unwrap();
    let p = Client::connect(&url, opts()).await.unwrap();
    let publishing = tokio::spawn(async move {
        for i in 0u64.. {
            if p.publish("t.a", i.to_string()).await.is_err() {
                return;
            }
            if i % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let reading = tokio::spawn(async move {
        while sub.next().await.is_some() {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    for cut in 0..=CUTS {
        // Receiving before each cut (EVENTs are on their way when it comes) and after the last.
        let seen = received.load(Ordering::Relaxed);
        for _ in 0..500 {
            if received.load(Ordering::Relaxed) >= seen + 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            received.load(Ordering::Relaxed) >= seen + 20,
            "stalled after {cut} resumptions: {} received, stats {:?}",
            received.load(Ordering::Relaxed),
            b.stats()
        );
        if cut == CUTS {
            break;
        }
        // The client comes back only once the broker keeps its session (a HELLO that comes
        // before the broker saw the connection go starts a new session).
        r.shut.store(true, Ordering::SeqCst);
        r.cut.notify_waiters();
        until("the session is detached", || {
            b.stats()["sessions_detached"] == cut + 1
        })
        .await;
        r.shut.store(false, Ordering::SeqCst);
        until("the session is resumed", || {
            b.stats()["sessions_resumed"] == cut + 1
        })
        .await;
    }
    publishing.abort();
    reading.abort();
    b.shutdown().await;
}
