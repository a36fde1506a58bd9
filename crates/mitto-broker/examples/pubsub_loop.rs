//! Broker pub -> sub over TCP in its simplest shape, the way the comparison suite's `pubsub`
//! scenario runs mitto: the broker on a thread of its own (a current-thread runtime), one
//! publishing and one subscribing client on the main thread's current-thread runtime,
//! 2,000,000 fire-and-forget messages, the subscription with the block policy (lossless).
//!
//! ```text
//! cargo run --release -p mitto-broker --example pubsub_loop [-- ROUNDS [SIZE]]
//! ```
//!
//! Prints messages per second received for each round; made for `perf` and `callgrind`
//! (the suite, `cargo run --release -p mitto-bench -- pubsub`, puts nats-server beside it).

use bytes::Bytes;
use mitto::{Client, ClientOptions, Policy, SubscribeOptions};
use std::time::Instant;

const MESSAGES: u64 = 2_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: u32 = args.next().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let size: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(16);
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let cfg = mitto_broker::BrokerConfig {
                    listen: vec!["tcp://127.0.0.1:0".into()],
                    monitor: String::new(),
                    ..Default::default()
                };
                let broker = mitto_broker::Broker::start(cfg).await?;
                let _ = url_tx.send(broker.urls()[0].clone());
                let _ = stop_rx.await;
                broker.shutdown().await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .map_err(|e| e.to_string())
        })?;
    let url = url_rx.recv()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let subscriber = Client::connect(&url, ClientOptions::new()).await?;
        let publisher = Client::connect(&url, ClientOptions::new()).await?;
        let payload = Bytes::from(vec![7u8; size]);
        for round in 1..=rounds {
            let opts = SubscribeOptions {
                policy: Policy::Block,
                ..SubscribeOptions::default()
            };
            let mut sub = subscriber.subscribe_with("loop.ps", opts).await?;
            publisher.flush().await?;
            let start = Instant::now();
            let reader = tokio::spawn(async move {
                let mut n = 0u64;
                while n < MESSAGES && sub.next().await.is_some() {
                    n += 1;
                }
                n
            });
            for _ in 0..MESSAGES {
                publisher.publish("loop.ps", payload.clone()).await?;
            }
            publisher.flush().await?;
            let got = reader
                .await
                .map_err(|e| mitto::Error::new(mitto::Status::INTERNAL, e.to_string()))?;
            assert_eq!(got, MESSAGES, "every message arrives");
            let rate = MESSAGES as f64 / start.elapsed().as_secs_f64();
            println!("round {round}: {rate:>12.0} msgs/s ({size} B)");
        }
        Ok::<_, mitto::Error>(())
    })?;
    let _ = stop_tx.send(());
    server.join().map_err(|_| "server thread panicked")??;
    Ok(())
}
