//! One program, in-process or networked: only the URL changes.
//!
//! ```text
//! cargo run -p mitto-broker --example orders                          # inproc://orders (embedded broker)
//! cargo run -p mitto-cli --release -- server &                         # a broker on tcp://127.0.0.1:4747
//! cargo run -p mitto-broker --example orders -- tcp://127.0.0.1:4747  # the same code over TCP
//! ```
//!
//! The code below publishes typed events, runs a queue group of workers, and answers requests.
//! With an `inproc://` URL the program embeds the broker: events reach local subscribers as the
//! publisher's own `Arc<OrderPlaced>`, never serialized. With a `tcp://` URL everything goes
//! through the broker at that address, encoded as JSON.

use mitto::{Client, ClientOptions};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Serialize, Deserialize, Debug)]
struct OrderPlaced {
    id: u32,
    item: String,
    quantity: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "inproc://orders".to_owned());
    // The one place that knows about the deployment: an in-process URL embeds the broker.
    let _broker = match url.split_once("://") {
        Some(("inproc" | "mem", _)) => {
            let cfg = mitto_broker::BrokerConfig {
                listen: vec![url.clone()],
                monitor: String::new(),
                ..Default::default()
            };
            Some(mitto_broker::Broker::start(cfg).await?)
        }
        _ => None,
    };

    // From here on, nothing depends on the transport.
    let app = Client::connect(&url, ClientOptions::new().name("orders-example")).await?;

    // An audit log that sees every order, and two workers sharing the orders between them.
    let mut audit = app.subscribe_typed::<OrderPlaced>("orders.placed").await?;
    let mut workers = Vec::new();
    for w in 0..2 {
        let mut sub = app.queue_subscribe("orders.placed", "workers").await?;
        workers.push(tokio::spawn(async move {
            let mut handled = 0;
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                handled += 1;
            }
            (w, handled)
        }));
    }

    // A stock service answering requests.
    let mut stock = app.subscribe("stock.check").await?;
    let responder = app.clone();
    tokio::spawn(async move {
        while let Some(req) = stock.next().await {
            let item = String::from_utf8_lossy(req.payload()).into_owned();
            let _ = responder
                .respond(&req, format!("{item}: 12 in stock"))
                .await;
        }
    });

    let first = Arc::new(OrderPlaced {
        id: 1,
        item: "keyboard".into(),
        quantity: 2,
    });
    app.publish_shared("orders.placed", first.clone()).await?;
    for id in 2..=10 {
        let order = OrderPlaced {
            id,
            item: "mouse".into(),
            quantity: 1,
        };
        app.publish_typed("orders.placed", order).await?;
    }

    let event = audit.next().await.ok_or("subscription ended")??;
    println!(
        "audit: order {} ({} x {}), same allocation as the publisher's: {}",
        event.id,
        event.quantity,
        event.item,
        Arc::ptr_eq(event.value(), &first)
    );
    let answer = app.request("stock.check", "keyboard").await?;
    println!("stock: {}", String::from_utf8_lossy(&answer));

    for w in workers {
        let (w, handled) = w.await?;
        println!("worker {w} handled {handled} orders");
    }
    app.drain().await?;
    Ok(())
}
