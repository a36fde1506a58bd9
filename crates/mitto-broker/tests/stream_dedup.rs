//! A retried acknowledged publish with the same `mitto-msg-id` is stored once (PROTOCOL.md
//! 19.1), also across a broker restart; live subscribers still get every publish.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mitto::streams::{StreamConfig, MSG_ID_HEADER};
use mitto::{Client, ClientOptions, Headers, PublishOptions};
use mitto_broker::{Broker, BrokerConfig, StreamSpec};
use std::path::Path;
use std::time::Duration;

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: "127.0.0.1:0".into(),
        data_dir: Some(dir.to_owned()),
        streams: vec![StreamSpec {
            name: "orders".into(),
            subjects: vec!["orders.>".into()],
            ..StreamSpec::default()
        }],
        ..BrokerConfig::default()
    }
}

async fn client(b: &Broker) -> Client {
    let o = ClientOptions::new().timeout(Duration::from_secs(5));
    Client::connect(&b.urls()[0], o).await.unwrap()
}

async fn publish(c: &Client, subject: &str, id: &str, payload: &str) -> mitto::Result<()> {
    let h = Headers::new().with(MSG_ID_HEADER, id);
    c.publish_with(
        subject,
        payload.to_owned(),
        PublishOptions::new().ack().headers(h),
    )
    .await
}

async fn msgs(c: &Client, stream: &str) -> u64 {
    c.stream(stream).info().await.unwrap().state.msgs
}

#[tokio::test]
async fn a_retried_publish_is_acknowledged_and_stored_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(dir.path())).await.unwrap();
    let c = client(&b).await;
    let mut live = c.subscribe("orders.>").await.unwrap();
    publish(&c, "orders.created", "order-1", "first")
        .await
        .unwrap();
    publish(&c, "orders.created", "order-2", "second")
        .await
        .unwrap();
    publish(&c, "orders.created", "order-1", "retry")
        .await
        .unwrap();
    assert_eq!(msgs(&c, "orders").await, 2);
    // Live subscribers get every publish, repeats included.
    for want in ["first", "second", "retry"] {
        let m = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload(), want.as_bytes());
    }
    c.close().await;
    b.shutdown().await;

    let b = Broker::start(config(dir.path())).await.unwrap();
    let c = client(&b).await;
    publish(&c, "orders.created", "order-2", "retry after restart")
        .await
        .unwrap();
    assert_eq!(msgs(&c, "orders").await, 2);
    publish(&c, "orders.created", "order-3", "third")
        .await
        .unwrap();
    assert_eq!(msgs(&c, "orders").await, 3);
    c.close().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_stream_created_without_a_window_stores_every_publish() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(dir.path())).await.unwrap();
    let c = client(&b).await;
    let info = c
        .stream("events")
        .create(StreamConfig::new(["events.>"]).duplicate_window(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(info.config["duplicate_window"], "0s");
    let orders = c.stream("orders").info().await.unwrap();
    assert_eq!(orders.config["duplicate_window"], "2m");
    for _ in 0..3 {
        publish(&c, "events.x", "same", "m").await.unwrap();
    }
    assert_eq!(msgs(&c, "events").await, 3);
    c.close().await;
    b.shutdown().await;
}
