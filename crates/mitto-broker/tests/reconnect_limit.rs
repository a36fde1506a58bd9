//! A client's limit on reconnect attempts (`ClientOptions::max_reconnects`), against a real
//! broker that goes away: for good (the client gives up, its calls fail with a typed error,
//! its subscriptions end) or for a while (the client comes back as without a limit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mitto::{Client, ClientOptions, CloseReason, Status, Subscription};
use mitto_broker::{Broker, BrokerConfig};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn config(listen: &str) -> BrokerConfig {
    BrokerConfig {
        listen: vec![listen.into()],
        monitor: String::new(),
        ..BrokerConfig::default()
    }
}

/// Starts a broker on `listen` (an `inproc://` name made unique to the test).
async fn start(listen: &str) -> (Broker, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let listen = match listen.strip_prefix("inproc://") {
        Some(name) => format!(
            "inproc://{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        None => listen.to_owned(),
    };
    let b = Broker::start(config(&listen)).await.unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

/// Attempts `every` apart (jitter adds up to half), at most `max` failed in a row.
fn opts(every: Duration, max: u32) -> ClientOptions {
    ClientOptions::new()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
        .backoff(every, every)
        .max_reconnects(Some(max))
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_within(sub: &mut Subscription, d: Duration) -> Option<mitto::Message> {
    tokio::time::timeout(d, sub.next())
        .await
        .expect("the subscription answers in time")
}

fn assert_exhausted(e: &mitto::Error) {
    assert_eq!(e.status(), Status::UNAVAILABLE, "{e:?}");
    assert_eq!(
        e.close_reason(),
        Some(CloseReason::ReconnectsExhausted),
        "{e:?}"
    );
}

async fn gives_up_after_the_limit(listen: &str) {
    let (b, url) = start(listen).await;
    // 4 attempts 150 ms apart: about half a second of trying, room to start a call meanwhile.
    let c = Client::connect(&url, opts(Duration::from_millis(150), 4))
        .await
        .unwrap();
    let mut sub = c.subscribe("news").await.unwrap();
    c.publish("news", "before").await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(
        next_within(&mut sub, Duration::from_secs(5))
            .await
            .unwrap()
            .payload(),
        "before"
    );
    let pending = tokio::spawn(async move {
        let m = sub.next().await;
        (m.is_none(), Instant::now())
    });
    b.shutdown().await;
    let gone = Instant::now();
    wait_until("the client to notice", Duration::from_secs(5), || {
        !c.is_connected()
    })
    .await;
    assert!(c.close_error().is_none(), "still trying, not closed");
    // A call made while it reconnects waits for the connection (its deadline is 30 s)...
    let c2 = c.clone();
    let call = tokio::spawn(async move { c2.call("svc.x", "hi").await });
    // ...until the client gives up, well within its deadline.
    let e = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the waiting call fails once the client gives up")
        .unwrap()
        .unwrap_err();
    assert_exhausted(&e);
    assert!(
        e.message().contains("4 failed reconnect attempts"),
        "{}",
        e.message()
    );
    // The pending `next()` ends, and the reason is there to read.
    let (ended, at) = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the subscription ends once the client gives up")
        .unwrap();
    assert!(ended, "next() returned None");
    assert!(at - gone < Duration::from_secs(10));
    assert_exhausted(&c.close_error().expect("closed for good"));
    assert_exhausted(&c.closed().await);
    assert!(!c.is_connected());
    // Every later call fails at once with the same error.
    let t0 = Instant::now();
    assert_exhausted(&c.call("svc.x", "again").await.unwrap_err());
    assert_exhausted(&c.publish("news", "late").await.unwrap_err());
    assert_exhausted(&c.subscribe("more").await.unwrap_err());
    assert!(t0.elapsed() < Duration::from_secs(1));
}

async fn resumes_when_the_broker_is_back_before_the_limit(listen: &str) {
    let (b, url) = start(listen).await;
    // At most 12 failed attempts 100 to 150 ms apart: giving up takes over 1.2 s of outage.
    let c = Client::connect(&url, opts(Duration::from_millis(100), 12))
        .await
        .unwrap();
    let mut sub = c.subscribe("news").await.unwrap();
    let mut b = b;
    // Three outages of about 0.7 s (some 6 failed attempts) each: each stays under the limit
    // only because a successful reconnect starts the count again (together they pass it).
    for round in 0..3 {
        b.shutdown().await;
        wait_until("the client to notice", Duration::from_secs(5), || {
            !c.is_connected()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            c.close_error().is_none(),
            "round {round}: gave up too early: {:?}",
            c.close_error()
        );
        b = Broker::start(config(&url)).await.unwrap();
        wait_until("the client to reconnect", Duration::from_secs(10), || {
            c.is_connected() && b.subscription_count() == 1
        })
        .await;
        let body = format!("back {round}");
        c.publish("news", body.clone()).await.unwrap();
        let m = next_within(&mut sub, Duration::from_secs(5))
            .await
            .expect("the subscription came back");
        assert_eq!(m.payload(), body.as_str());
    }
    assert!(c.close_error().is_none());
    c.close().await;
    b.shutdown().await;
}

/// `close()` ends the subscriptions too (`next()` returns `None`), with the caller's reason.
async fn close_ends_subscriptions(listen: &str) {
    let (b, url) = start(listen).await;
    let c = Client::connect(&url, ClientOptions::new()).await.unwrap();
    let mut sub = c.subscribe("news").await.unwrap();
    let pending = tokio::spawn(async move { sub.next().await.is_none() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.close().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the subscription ends with the client")
        .unwrap();
    assert!(ended);
    let e = c.call("svc.x", "hi").await.unwrap_err();
    assert_eq!(e.close_reason(), Some(CloseReason::ByCaller), "{e:?}");
    b.shutdown().await;
}

macro_rules! on_each_transport {
    ($($m:ident => $listen:expr),* $(,)?) => {$(
        mod $m {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gives_up_after_the_limit() {
                super::gives_up_after_the_limit($listen).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn resumes_when_the_broker_is_back_before_the_limit() {
                super::resumes_when_the_broker_is_back_before_the_limit($listen).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_ends_subscriptions() {
                super::close_ends_subscriptions($listen).await
            }
        }
    )*};
}

on_each_transport!(
    tcp => "tcp://127.0.0.1:0",
    inproc => "inproc://reconnect-limit",
);
