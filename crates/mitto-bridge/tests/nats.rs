//! The NATS bridge against the real nats-server, with `async-nats` on the other side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures_util::StreamExt;
use mitto::{Client, Headers, PublishOptions, WellKnown};
use mitto_bridge::{BridgeConfig, Kind, State, ORIGIN_HEADER};
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_both_ways_with_headers_and_no_echo() {
    if !up("NATS", 4222) {
        return;
    }
    let name = unique("nats");
    let cfg = BridgeConfig::new(&name, Kind::Nats, "nats://127.0.0.1:4222").map(
        &format!("{name}.>"),
        None,
        None,
    );
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let other = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let mut got = other.subscribe(format!("{name}.>")).await.unwrap();
    nats_sync(&other).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    let mut sub = app.subscribe(&format!("{name}.>")).await.unwrap();

    let h = Headers::builder()
        .insert(WellKnown::ContentType, "application/json")
        .unwrap()
        .insert(WellKnown::CorrelationId, "c-1")
        .unwrap()
        .insert_custom("tenant", "acme")
        .unwrap()
        .build();
    app.publish_with(
        &format!("{name}.a"),
        "{}",
        PublishOptions::new().headers(h).ack(),
    )
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), got.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.subject.as_str(), format!("{name}.a"));
    let h = m.headers.unwrap();
    assert_eq!(h.get("content-type").unwrap().as_str(), "application/json");
    assert_eq!(h.get("correlation-id").unwrap().as_str(), "c-1");
    assert_eq!(h.get("tenant").unwrap().as_str(), "acme");
    assert!(h.get(ORIGIN_HEADER).is_some());
    assert_eq!(sub.next().await.unwrap().subject(), format!("{name}.a"));

    let mut h = async_nats::HeaderMap::new();
    h.insert("content-type", "text/plain");
    h.insert("tenant", "globex");
    other
        .publish_with_headers(format!("{name}.in"), h, "hi".into())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.subject(), format!("{name}.in"));
    assert_eq!(m.headers().content_type(), Some("text/plain"));
    assert_eq!(m.headers().get_custom("tenant"), Some(&b"globex"[..]));
    let m = tokio::time::timeout(Duration::from_secs(10), got.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"hi");
    wait_for("the counters", || {
        let s = snap(&broker);
        s.msgs_in >= 1 && s.msgs_out >= 1 && s.loops_prevented >= 2
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), got.next())
            .await
            .is_err(),
        "no echo"
    );
    let s = snap(&broker);
    assert_eq!((s.msgs_in, s.msgs_out, s.drops), (1, 1, 0), "{s:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_out_confirmed_only_once_a_stream_stored_it() {
    if !up("NATS", 4222) {
        return;
    }
    use async_nats::jetstream;
    let name = unique("js");
    let mut cfg = BridgeConfig::new(&name, Kind::Nats, "nats://127.0.0.1:4222").map(
        &format!("{name}.>"),
        None,
        Some(mitto_bridge::Direction::Out),
    );
    cfg.jetstream = true;
    cfg.backoff_min_ms = 50;
    cfg.backoff_max_ms = 200;
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    let h = Headers::builder()
        .insert(WellKnown::ContentType, "text/plain")
        .unwrap()
        .build();
    app.publish_with(
        &format!("{name}.a"),
        "stored",
        PublishOptions::new().headers(h).ack(),
    )
    .await
    .unwrap();
    // No stream takes the subject yet: JetStream does not ack, so the bridge holds it.
    wait_for("a refused publish", || snap(&broker).errors >= 2).await;
    let s = snap(&broker);
    assert_eq!((s.msgs_out, s.buffered_msgs), (0, 1), "{s:?}");

    let js = jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap());
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for("the stream's ack", || {
        let s = snap(&broker);
        s.msgs_out == 1 && s.buffered_msgs == 0
    })
    .await;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.subject.as_str(), format!("{name}.a"));
    assert_eq!(&m.payload[..], b"stored");
    let h = m.headers.as_ref().unwrap();
    assert_eq!(h.get("content-type").unwrap().as_str(), "text/plain");
    m.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), msgs.next())
            .await
            .is_err(),
        "stored once"
    );
    broker.shutdown().await;
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_out_arrives_whole_in_order_and_unmarked_when_nothing_comes_back() {
    if !up("NATS", 4222) {
        return;
    }
    let name = unique("natsout");
    let cfg = BridgeConfig::new(&name, Kind::Nats, "nats://127.0.0.1:4222").map(
        &format!("{name}.>"),
        None,
        Some(mitto_bridge::Direction::Out),
    );
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let other = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 16)
        .connect("127.0.0.1:4222")
        .await
        .unwrap();
    let mut got = other.subscribe(format!("{name}.>")).await.unwrap();
    nats_sync(&other).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();

    // Another bridge's mark on the way in is not passed on; the other headers are.
    let h = Headers::builder()
        .insert_custom(ORIGIN_HEADER, "another-bridge.1")
        .unwrap()
        .insert_custom("tenant", "acme")
        .unwrap()
        .build();
    app.publish_with(
        &format!("{name}.h"),
        "h",
        PublishOptions::new().headers(h).ack(),
    )
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), got.next())
        .await
        .unwrap()
        .unwrap();
    let h = m.headers.unwrap();
    assert_eq!(h.get("tenant").unwrap().as_str(), "acme");
    assert!(h.get(ORIGIN_HEADER).is_none(), "{h:?}");

    // A burst: every message, once, in the order published (batches settle in order).
    const N: u32 = 5_000;
    for i in 0..N {
        app.publish(&format!("{name}.n"), i.to_string())
            .await
            .unwrap();
    }
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(10), got.next())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {N} arrived"))
            .unwrap();
        assert_eq!(std::str::from_utf8(&m.payload).unwrap(), i.to_string());
        assert!(m.headers.is_none(), "no mark, no headers");
    }
    wait_for("every confirm", || {
        let s = snap(&broker);
        s.msgs_out == u64::from(N) + 1 && s.buffered_msgs == 0
    })
    .await;
    let s = snap(&broker);
    assert_eq!((s.drops, s.errors), (0, 0), "{s:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_subscriber_on_the_server_holds_back_no_confirm() {
    if !support::nats_server::available() {
        return;
    }
    // A server of the test's own: a `>` subscriber there sees everything, the bridge's own way
    // in included.
    let server = support::nats_server::NatsServer::start(None);
    let name = unique("natsall");
    let mut cfg = BridgeConfig::new(&name, Kind::Nats, &server.url()).map(">", None, None);
    cfg.confirm_timeout_ms = 2_000;
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let other = async_nats::connect(server.url()).await.unwrap();
    let mut everything = other.subscribe(">").await.unwrap();
    // In place once its own publish comes back (a request would find a responder: itself).
    other.publish("sync", "".into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), everything.next())
        .await
        .unwrap()
        .unwrap();
    let app = Client::connect(&url, client_opts()).await.unwrap();
    let mut confirm_names = app.subscribe("_MITTO.>").await.unwrap();
    for i in 0..3 {
        app.publish_with(&format!("{name}.{i}"), "x", PublishOptions::new().ack())
            .await
            .unwrap();
    }
    // Confirmed well within the confirm timeout: nothing waits for an answer nobody gives.
    let t0 = std::time::Instant::now();
    while snap(&broker).msgs_out < 3 {
        assert!(
            t0.elapsed() < Duration::from_millis(1_500),
            "not confirmed: {:?}",
            snap(&broker)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), everything.next())
            .await
            .unwrap()
            .unwrap();
        if m.subject.starts_with(&name) {
            seen.push(m.subject.to_string());
        }
    }
    assert_eq!(seen, [0, 1, 2].map(|i| format!("{name}.{i}")));
    // The bridge's confirm markers are not carried into mitto.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), confirm_names.next())
            .await
            .is_err(),
        "a marker crossed"
    );
    let s = snap(&broker);
    assert_eq!((s.errors, s.reconnects, s.drops), (0, 0, 0), "{s:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_bridge_buffer_waits_at_the_broker_not_dropped() {
    if !up("NATS", 4222) {
        return;
    }
    let name = unique("natsburst");
    let mut cfg = BridgeConfig::new(&name, Kind::Nats, "nats://127.0.0.1:4222").map(
        &format!("{name}.>"),
        None,
        Some(mitto_bridge::Direction::Out),
    );
    // A bridge that holds little and sends little at a time: the burst outruns it.
    cfg.buffer_msgs = 8;
    cfg.window = 8;
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let other = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 16)
        .connect("127.0.0.1:4222")
        .await
        .unwrap();
    let mut got = other.subscribe(format!("{name}.>")).await.unwrap();
    nats_sync(&other).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    const N: u32 = 20_000;
    for i in 0..N {
        app.publish(&format!("{name}.n"), i.to_string())
            .await
            .unwrap();
    }
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(20), got.next())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {N}: {:?}", broker.stats()))
            .unwrap();
        assert_eq!(std::str::from_utf8(&m.payload).unwrap(), i.to_string());
    }
    assert_eq!(broker.stats()["slow_consumer_drops"], 0);
    assert_eq!(snap(&broker).drops, 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_one_by_one_share_confirm_markers() {
    if !support::nats_server::available() {
        return;
    }
    let server = support::nats_server::NatsServer::start(None);
    let name = unique("natsmark");
    let cfg = BridgeConfig::new(&name, Kind::Nats, &server.url()).map(
        &format!("{name}.>"),
        None,
        Some(mitto_bridge::Direction::Out),
    );
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let other = async_nats::connect(server.url()).await.unwrap();
    let mut markers = other.subscribe("_MITTO.confirm.>").await.unwrap();
    let mut got = other.subscribe(format!("{name}.>")).await.unwrap();
    nats_sync(&other).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    // Each is published once the one before reached NATS: the bridge sends them one at a time,
    // a batch each, well within a marker's wait of each other.
    const N: u64 = 20;
    for i in 0..N {
        app.publish(&format!("{name}.{i}"), "x").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), got.next())
            .await
            .unwrap()
            .unwrap();
    }
    wait_for("every confirm", || snap(&broker).msgs_out == N).await;
    let mut seen = 0;
    while tokio::time::timeout(Duration::from_millis(300), markers.next())
        .await
        .is_ok()
    {
        seen += 1;
    }
    assert!(
        (1..N).contains(&seen),
        "{seen} markers for {N} single messages"
    );
    broker.shutdown().await;
}
