//! Headers through a broker, over the in-process bus and over TCP: request/reply with headers
//! both ways (a subscriber answers with `Client::respond_with`, the requester reads the reply's
//! headers with `Client::request_reply`), and a publish whose headers block is over the agreed
//! limit refused before it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mitto::{CallOptions, Client, ClientOptions, Headers, PublishOptions, Status, WellKnown};
use mitto_broker::{Broker, BrokerConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A broker listening on `inproc://` and `tcp://`; its URLs in that order.
async fn broker() -> (Broker, Vec<String>) {
    let name = format!(
        "reply-headers-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let cfg = BrokerConfig {
        listen: vec![format!("inproc://{name}"), "tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        ..BrokerConfig::default()
    };
    let b = Broker::start(cfg).await.unwrap();
    let urls = b.urls().to_vec();
    (b, urls)
}

async fn client(url: &str) -> Client {
    let opts = ClientOptions::new().timeout(Duration::from_secs(5));
    Client::connect(url, opts).await.unwrap()
}

async fn replies_carry_headers(url: &str) {
    let responder = client(url).await;
    let mut sub = responder.subscribe("inventory.count").await.unwrap();
    let r = responder.clone();
    let answering = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let mut h = Headers::new().with("warehouse", "north");
            if m.payload() == "own-id" {
                h = h.with(WellKnown::CorrelationId, "chosen");
            }
            r.respond_with(&m, "12", h).await.unwrap();
        }
    });
    let c = client(url).await;
    let reply = c
        .request_reply("inventory.count", "keyboard")
        .await
        .unwrap();
    assert_eq!(reply.payload, "12");
    assert_eq!(reply.headers.get_str("warehouse"), Some("north"));
    assert_eq!(reply.headers.correlation_id(), None);
    // The request's correlation-id comes back, unless the responder chose its own.
    let corr =
        || CallOptions::new().headers(Headers::new().with(WellKnown::CorrelationId, "order-7"));
    let reply = c
        .request_with("inventory.count", "keyboard", corr())
        .await
        .unwrap();
    assert_eq!(reply.headers.correlation_id(), Some("order-7"));
    assert_eq!(reply.headers.get_str("warehouse"), Some("north"));
    let reply = c
        .request_with("inventory.count", "own-id", corr())
        .await
        .unwrap();
    assert_eq!(reply.headers.correlation_id(), Some("chosen"));
    assert_eq!(reply.headers.get_all(WellKnown::CorrelationId).count(), 1);
    // `request` still answers the payload alone.
    assert_eq!(c.request("inventory.count", "x").await.unwrap(), "12");
    answering.abort();
}

async fn oversized_headers_are_not_published(url: &str) {
    let c = client(url).await;
    let mut sub = c.subscribe("big.headers").await.unwrap();
    let max = c.negotiated().unwrap().limits.max_headers as usize;
    let big = Headers::new()
        .with("a", vec![b'x'; max / 2])
        .with("b", vec![b'x'; max / 2]);
    for ack in [false, true] {
        let mut opts = PublishOptions::new().headers(big.clone());
        opts.ack = ack;
        let e = c.publish_with("big.headers", "x", opts).await.unwrap_err();
        assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE, "{e}");
        assert!(!e.is_remote(), "refused before it was sent: {e}");
    }
    let fits = Headers::new().with("a", vec![b'x'; max / 2]);
    c.publish_with("big.headers", "ok", PublishOptions::new().headers(fits))
        .await
        .unwrap();
    let m = sub.next().await.unwrap();
    assert_eq!(
        m.payload(),
        "ok",
        "the first message through is the one that fits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_not_published_inproc_and_tcp() {
    let (broker, urls) = broker().await;
    for url in &urls {
        tokio::time::timeout(
            Duration::from_secs(10),
            oversized_headers_are_not_published(url),
        )
        .await
        .unwrap_or_else(|_| panic!("{url}: timed out"));
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_carry_headers_inproc_and_tcp() {
    let (broker, urls) = broker().await;
    assert!(urls[0].starts_with("inproc://") && urls[1].starts_with("tcp://"));
    for url in &urls {
        tokio::time::timeout(Duration::from_secs(10), replies_carry_headers(url))
            .await
            .unwrap_or_else(|_| panic!("{url}: timed out"));
    }
    broker.shutdown().await;
}
