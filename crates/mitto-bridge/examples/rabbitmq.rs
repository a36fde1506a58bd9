//! A broker with a RabbitMQ bridge, against the RabbitMQ on this machine
//! (`amqp://guest:guest@127.0.0.1:5672`):
//!
//! ```sh
//! cargo run -p mitto-bridge --example rabbitmq
//! ```
//!
//! It starts a broker whose `[[bridge]]` carries `shop.>` both ways through RabbitMQ's
//! `amq.topic` exchange, then:
//! 1. a mitto client publishes `shop.orders.created` with the broker's ACK; a RabbitMQ consumer
//!    (`lapin`, bound to `shop.#`) receives it with its content type;
//! 2. a RabbitMQ publisher sends `shop.stock.low`; the mitto subscriber receives it;
//! 3. `/bridgez`'s counters are printed.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mitto::{Client, ClientOptions, Headers, PublishOptions, WellKnown};
use mitto_broker::{Broker, BrokerConfig};
use std::time::Duration;

const RABBIT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The same as `mitto server --config broker.toml` with this file.
    let cfg = BrokerConfig::from_toml(&format!(
        r#"
        listen = ["tcp://127.0.0.1:0"]
        monitor = ""
        [[bridge]]
        name = "rabbit"
        kind = "amqp"
        url = "{RABBIT}"
        queue = "mitto.example.rabbit"
        [[bridge.map]]
        mitto = "shop.>"
        "#
    ))?;
    let broker = Broker::start(cfg).await?;
    let url = broker.urls()[0].clone();
    println!("broker on {url}");

    // The RabbitMQ side: a queue of its own bound to shop.#.
    let conn = Connection::connect(RABBIT, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let q = "mitto.example.consumer";
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        q.into(),
        "amq.topic".into(),
        "shop.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut rabbit_in = ch
        .basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let app = Client::connect(&url, ClientOptions::new()).await?;
    let mut sub = app.subscribe("shop.stock.*").await?;
    wait_up(&broker).await?;

    // 1. mitto -> RabbitMQ.
    let h = Headers::builder()
        .insert(WellKnown::ContentType, "application/json")?
        .build();
    app.publish_with(
        "shop.orders.created",
        r#"{"order":17}"#,
        PublishOptions::new().headers(h).ack(),
    )
    .await?;
    let d = tokio::time::timeout(Duration::from_secs(10), rabbit_in.next())
        .await?
        .ok_or("the consumer ended")??;
    println!(
        "RabbitMQ got {} {} ({:?})",
        d.routing_key,
        String::from_utf8_lossy(&d.data),
        d.properties.content_type().as_ref().map(|c| c.as_str())
    );
    d.ack(BasicAckOptions::default()).await?;

    // 2. RabbitMQ -> mitto.
    ch.basic_publish(
        "amq.topic".into(),
        "shop.stock.low".into(),
        BasicPublishOptions::default(),
        b"sku-42",
        BasicProperties::default(),
    )
    .await?;
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await?
        .ok_or("the subscription ended")?;
    println!(
        "mitto got {} {}",
        m.subject(),
        String::from_utf8_lossy(m.payload())
    );

    // 3. What /bridgez shows.
    for s in broker.bridges() {
        println!(
            "bridge {}: {:?}, in {}, out {}, drops {}",
            s.name, s.state, s.msgs_in, s.msgs_out, s.drops
        );
    }
    broker.shutdown().await;
    for q in [q, "mitto.example.rabbit"] {
        ch.queue_delete(q.into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}

/// Waits (at most 10 s) until the bridge is connected to RabbitMQ.
async fn wait_up(broker: &Broker) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..1000 {
        if broker
            .bridges()
            .iter()
            .all(|s| s.state == mitto_bridge::State::Up)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the bridge did not connect to RabbitMQ (is it running on 127.0.0.1:5672?)".into())
}
