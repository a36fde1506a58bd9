//! The in-process bus in its simplest shape, beside a tokio channel doing the same work:
//! one publishing task and one subscribing task, 3,000,000 messages of 16 bytes, every queue
//! bounded at 1,024 (the publisher waits when it is full), on a 2-worker tokio runtime.
//!
//! ```text
//! cargo run --release -p mitto-broker --example bus_loop [-- ROUNDS [mitto|mpsc|typed]]
//! ```
//!
//! With `mitto` or `mpsc` after the rounds only that system runs (for `perf`/`callgrind`);
//! `typed` runs mitto's typed events instead (`publish_shared` of an `Arc<Tick>`,
//! `subscribe_typed::<Tick>`: the value itself travels, never serialized).
//!
//! Prints messages per second for mitto (`inproc://`, `Policy::Block`) and for
//! `tokio::sync::mpsc`, and their ratio, for each round. The comparison suite
//! (`cargo run --release -p mitto-bench -- bus`) measures the same with repetitions, slices
//! and more peers; this loop has no harness in between.

use bytes::Bytes;
use mitto::{Client, ClientOptions, Policy, SubscribeOptions};
use std::sync::Arc;
use std::time::Instant;

/// The typed event: 16 bytes, like the byte payload.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Tick {
    seq: u64,
    at: u64,
}

const MESSAGES: u64 = 3_000_000;
const CAPACITY: u32 = 1024;

async fn mitto_round(publisher: &Client, subscriber: &Client) -> Result<f64, mitto::Error> {
    let opts = SubscribeOptions {
        policy: Policy::Block,
        max_pending: CAPACITY,
        ..SubscribeOptions::default()
    };
    let mut sub = subscriber.subscribe_with("loop.bench", opts).await?;
    let payload = Bytes::from(vec![7u8; 16]);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while n < MESSAGES {
            if sub.next().await.is_none() {
                break;
            }
            n += 1;
        }
        n
    });
    let p = publisher.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            p.publish("loop.bench", payload.clone()).await?;
        }
        Ok(())
    });
    rate(start, reader, writer).await
}

/// Waits for the publishing task, then for the reading one, which must have received every
/// message; returns messages per second since `start`.
async fn rate(
    start: Instant,
    reader: tokio::task::JoinHandle<u64>,
    writer: tokio::task::JoinHandle<Result<(), mitto::Error>>,
) -> Result<f64, mitto::Error> {
    let lost =
        |e: tokio::task::JoinError| mitto::Error::new(mitto::Status::INTERNAL, e.to_string());
    writer.await.map_err(lost)??;
    let got = reader.await.map_err(lost)?;
    assert_eq!(got, MESSAGES, "every message arrives");
    Ok(MESSAGES as f64 / start.elapsed().as_secs_f64())
}

async fn typed_round(publisher: &Client, subscriber: &Client) -> Result<f64, mitto::Error> {
    let mut sub = subscriber.subscribe_typed::<Tick>("loop.typed").await?;
    let tick = Arc::new(Tick { seq: 1, at: 2 });
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while n < MESSAGES {
            match sub.next().await {
                Some(Ok(ev)) if ev.value().seq == 1 => n += 1,
                _ => break,
            }
        }
        n
    });
    let p = publisher.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            p.publish_shared("loop.typed", tick.clone()).await?;
        }
        Ok(())
    });
    rate(start, reader, writer).await
}

async fn mpsc_round() -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(CAPACITY as usize);
    let payload = Bytes::from(vec![7u8; 16]);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while n < MESSAGES && rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let writer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            if tx.send(payload.clone()).await.is_err() {
                break;
            }
        }
    });
    let _ = writer.await;
    let got = reader.await.unwrap_or(0);
    assert_eq!(got, MESSAGES, "every message arrives");
    MESSAGES as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: u32 = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(3);
    let only = std::env::args().nth(2);
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cfg = mitto_broker::BrokerConfig {
            listen: vec!["inproc://bus-loop".into()],
            monitor: String::new(),
            // What a typed subscription (which takes no options) gets: the same bound and
            // policy as the byte loop's.
            max_pending_msgs: CAPACITY,
            slow_consumer: mitto_broker::PolicyName::Block,
            ..Default::default()
        };
        let broker = mitto_broker::Broker::start(cfg).await?;
        let publisher = Client::connect("inproc://bus-loop", ClientOptions::new()).await?;
        let subscriber = Client::connect("inproc://bus-loop", ClientOptions::new()).await?;
        for round in 1..=rounds {
            let m = if only.as_deref() == Some("typed") {
                typed_round(&publisher, &subscriber).await?
            } else if run("mitto") {
                mitto_round(&publisher, &subscriber).await?
            } else {
                f64::NAN
            };
            let c = if run("mpsc") { mpsc_round().await } else { f64::NAN };
            let name = if only.as_deref() == Some("typed") {
                "mitto-typed"
            } else {
                "mitto"
            };
            println!(
                "round {round}: {name} {m:>12.0} msgs/s   tokio-mpsc {c:>12.0} msgs/s   mitto/mpsc {:.2}x",
                m / c
            );
        }
        broker.shutdown().await;
        Ok(())
    })
}
