//! Backends lost mid-stream: RabbitMQ behind a proxy the test cuts and restores, NATS servers
//! of the test's own killed (SIGKILL) and started again. Acked messages held while the backend
//! is away reach it afterwards; past the buffer's bound the oldest are given up, counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use async_nats::jetstream::{self, stream::StorageType};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mitto::{Client, PublishOptions};
use mitto_bridge::{BridgeConfig, Direction, Kind, State};
use std::collections::BTreeSet;
use std::time::Duration;
use support::nats_server::{self, NatsServer};
use support::proxy::Proxy;
use support::*;

/// Publishes `range` to `subject` with the broker's ACK, one at a time.
async fn send(app: &Client, subject: &str, range: std::ops::Range<u32>) {
    for i in range {
        app.publish_with(subject, i.to_string(), PublishOptions::new().ack())
            .await
            .unwrap();
    }
}

fn quick(mut cfg: BridgeConfig) -> BridgeConfig {
    cfg.backoff_min_ms = 50;
    cfg.backoff_max_ms = 200;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_cut_mid_stream_loses_no_acked_message() {
    if !up("RabbitMQ", 5672) {
        return;
    }
    let proxy = Proxy::start(5672).await;
    let name = unique("amqpcut");
    let cfg = quick(
        BridgeConfig::new(
            &name,
            Kind::Amqp,
            &format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port),
        )
        .map(&format!("{name}.>"), None, Some(Direction::Out)),
    );
    // The other side: a durable queue of the test's own, straight on RabbitMQ.
    let conn = Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = format!("{name}.test");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(q.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        q.as_str().into(),
        "amq.topic".into(),
        format!("{name}.#").into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    let subject = format!("{name}.n");

    send(&app, &subject, 0..50).await;
    wait_for("the first half confirmed", || snap(&broker).msgs_out == 50).await;
    proxy.cut();
    wait_for("the bridge to see the loss", || {
        snap(&broker).state != State::Up
    })
    .await;
    send(&app, &subject, 50..100).await;
    wait_for("the second half held", || snap(&broker).buffered_msgs == 50).await;
    let s = snap(&broker);
    assert_eq!(s.msgs_out, 50, "nothing confirmed while cut off: {s:?}");
    proxy.restore();
    wait_for("every message confirmed after the cut", || {
        let s = snap(&broker);
        s.msgs_out == 100 && s.buffered_msgs == 0
    })
    .await;
    let s = snap(&broker);
    assert!(s.reconnects >= 1 && s.drops == 0, "{s:?}");

    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 100 {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of 100 in the queue", seen.len()))
            .unwrap()
            .unwrap();
        seen.insert(String::from_utf8_lossy(&d.data).parse::<u32>().unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(seen, (0..100).collect());
    broker.shutdown().await;
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// A JetStream server of the test's own with a file stream `name` taking `name.>`.
async fn jetstream_server(name: &str) -> (NatsServer, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(unique("mitto-js-"));
    std::fs::create_dir_all(&dir).unwrap();
    let server = NatsServer::start(Some(&dir));
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    (server, dir)
}

/// The payloads of stream `name`, read by a JetStream consumer once it holds `want` messages.
async fn stream_payloads(url: &str, name: &str, want: u64) -> Vec<u32> {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream(name).await.unwrap();
    for _ in 0..200 {
        if stream.info().await.unwrap().state.messages >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), msgs.next()).await {
        let m = m.unwrap();
        out.push(String::from_utf8_lossy(&m.payload).parse().unwrap());
        m.ack().await.unwrap();
    }
    out
}

fn jetstream_bridge(name: &str, url: &str, buffer_msgs: u32) -> BridgeConfig {
    let mut cfg = quick(BridgeConfig::new(name, Kind::Nats, url).map(
        &format!("{name}.>"),
        None,
        Some(Direction::Out),
    ));
    cfg.jetstream = true;
    cfg.buffer_msgs = buffer_msgs;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_stream_loses_no_acked_message() {
    if !nats_server::available() {
        return;
    }
    let name = unique("jsr");
    let (mut server, dir) = jetstream_server(&name).await;
    let (broker, url) = broker(vec![jetstream_bridge(&name, &server.url(), 10_000)]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    let subject = format!("{name}.n");

    send(&app, &subject, 0..50).await;
    wait_for("the first half stored", || snap(&broker).msgs_out == 50).await;
    server.kill();
    wait_for("the bridge to see the loss", || {
        snap(&broker).state != State::Up
    })
    .await;
    send(&app, &subject, 50..100).await;
    wait_for("the second half held", || snap(&broker).buffered_msgs == 50).await;
    let s = snap(&broker);
    assert_eq!(
        s.msgs_out, 50,
        "nothing confirmed while NATS is down: {s:?}"
    );
    server.restart();
    wait_for("every message stored after the restart", || {
        let s = snap(&broker);
        s.msgs_out == 100 && s.buffered_msgs == 0
    })
    .await;
    let s = snap(&broker);
    assert!(s.reconnects >= 1 && s.drops == 0, "{s:?}");
    let got: BTreeSet<u32> = stream_payloads(&server.url(), &name, 100)
        .await
        .into_iter()
        .collect();
    assert_eq!(got, (0..100).collect());
    broker.shutdown().await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_past_the_buffer_gives_up_the_oldest_counted() {
    if !nats_server::available() {
        return;
    }
    let name = unique("jsb");
    let (mut server, dir) = jetstream_server(&name).await;
    let (broker, url) = broker(vec![jetstream_bridge(&name, &server.url(), 10)]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    let subject = format!("{name}.n");

    send(&app, &subject, 0..5).await;
    wait_for("the first ones stored", || snap(&broker).msgs_out == 5).await;
    server.kill();
    wait_for("the bridge to see the loss", || {
        snap(&broker).state != State::Up
    })
    .await;
    send(&app, &subject, 5..35).await;
    wait_for("the bound to hold", || {
        let s = snap(&broker);
        s.buffered_msgs == 10 && s.drops == 20
    })
    .await;
    server.restart();
    wait_for("the ten held ones stored", || {
        let s = snap(&broker);
        s.msgs_out == 15 && s.buffered_msgs == 0
    })
    .await;
    assert_eq!(snap(&broker).drops, 20);
    let got: BTreeSet<u32> = stream_payloads(&server.url(), &name, 15)
        .await
        .into_iter()
        .collect();
    let want: BTreeSet<u32> = (0..5).chain(25..35).collect();
    assert_eq!(got, want, "the oldest held ones were given up");
    broker.shutdown().await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
