//! The AMQP bridge against the real RabbitMQ, with `lapin` on the other side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mitto::{Client, Headers, PublishOptions, WellKnown};
use mitto_bridge::{BridgeConfig, Kind, ORIGIN_HEADER};
use std::time::Duration;
use support::*;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_both_ways_with_headers_and_no_echo() {
    if !up("RabbitMQ", 5672) {
        return;
    }
    let name = unique("amqp");
    let subject = format!("{name}.orders");
    let mut cfg = BridgeConfig::new(&name, Kind::Amqp, URL).map(&format!("{name}.>"), None, None);
    cfg.backoff_min_ms = 50;
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || {
        snap(&broker).state == mitto_bridge::State::Up
    })
    .await;

    // The other side: a queue of the test's own bound to the same routing keys.
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = format!("{name}.test");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
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
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let app = Client::connect(&url, client_opts()).await.unwrap();
    let mut sub = app.subscribe(&format!("{name}.>")).await.unwrap();

    // Out: mitto -> RabbitMQ, an acked publish with content type, correlation and a header.
    let h = Headers::builder()
        .insert(WellKnown::ContentType, "application/json")
        .unwrap()
        .insert(WellKnown::CorrelationId, "corr-1")
        .unwrap()
        .insert_custom("tenant", "acme")
        .unwrap()
        .build();
    app.publish_with(
        &subject,
        "{\"id\":1}",
        PublishOptions::new().headers(h).ack(),
    )
    .await
    .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("RabbitMQ delivers")
        .unwrap()
        .unwrap();
    assert_eq!(d.routing_key.as_str(), subject);
    assert_eq!(&d.data[..], b"{\"id\":1}");
    assert_eq!(
        d.properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        "corr-1"
    );
    let table = d.properties.headers().as_ref().unwrap().inner();
    assert!(
        matches!(table.get("tenant"), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"acme")
    );
    assert!(table.contains_key(ORIGIN_HEADER));
    d.ack(BasicAckOptions::default()).await.unwrap();
    // The local subscriber saw it once: the copy that came back through the bridge's own
    // queue was recognized by its origin and not published again.
    let m = sub.next().await.unwrap();
    assert_eq!(m.subject(), subject);
    wait_for("the echo to be cut", || snap(&broker).loops_prevented >= 1).await;

    // In: RabbitMQ -> mitto, from a lapin publisher with properties and headers.
    let mut table = FieldTable::default();
    table.insert("tenant".into(), AMQPValue::LongString("globex".into()));
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_correlation_id("corr-2".into())
        .with_headers(table);
    let sent = format!("{name}.in.x");
    ch.basic_publish(
        "amq.topic".into(),
        sent.as_str().into(),
        BasicPublishOptions::default(),
        b"hello",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("mitto delivers")
        .unwrap();
    assert_eq!(m.subject(), sent);
    assert_eq!(&m.payload()[..], b"hello");
    assert_eq!(m.headers().content_type(), Some("text/plain"));
    assert_eq!(
        m.headers().get(WellKnown::CorrelationId),
        Some(&b"corr-2"[..])
    );
    assert_eq!(m.headers().get_custom("tenant"), Some(&b"globex"[..]));
    // ... and it did not go back out to RabbitMQ: the test queue got only the lapin publish.
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.data[..], b"hello");
    d.ack(BasicAckOptions::default()).await.unwrap();
    wait_for("the counters", || {
        let s = snap(&broker);
        s.msgs_in >= 1 && s.msgs_out >= 1 && s.loops_prevented >= 2
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "nothing more came out: no echo"
    );
    let s = snap(&broker);
    assert_eq!((s.msgs_in, s.msgs_out, s.drops), (1, 1, 0), "{s:?}");

    // /bridgez shows the same.
    let addr = broker.monitor_addr().unwrap();
    let body = http_get(addr, "/bridgez").await;
    assert!(body.contains(&format!("\"name\": \"{name}\"")), "{body}");
    assert!(body.contains("\"msgs_out\": 1"), "{body}");
    assert!(body.contains("\"state\": \"up\""), "{body}");
    assert!(
        !body.contains("guest:guest"),
        "the password is hidden: {body}"
    );

    broker.shutdown().await;
    for q in [q, format!("mitto.bridge.{name}")] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
