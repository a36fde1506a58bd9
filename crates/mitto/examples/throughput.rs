//! Pipelined throughput of one connection: N calls in flight, 32 B echoed, for a quick look at
//! the runtime's cost per call (`perf record` friendly). The comparison with other systems is
//! `cargo run --release -p mitto-bench -- rpc-throughput`.
//!
//! ```text
//! cargo run --release -p mitto --example throughput -- [calls] [in-flight] [url]
//! ```

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use mitto::{Client, ClientOptions, Request, Server};
use std::time::Instant;

fn main() -> mitto::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let calls: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let in_flight: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let url = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "tcp://127.0.0.1:0".into());
    // The server on its own thread, the client on this one, as the comparison suite does.
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::Builder::new().name("server".into());
    server.spawn(move || {
        server_rt.block_on(async move {
            let s = Server::new()
                .route("echo", |r: Request| async move { Ok(r.payload().clone()) })
                .bind(&url)
                .await;
            match s {
                Ok(s) => {
                    let _ = tx.send(Ok(s.local_url().to_owned()));
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
    })?;
    let url = rx
        .recv()
        .map_err(|_| mitto::Error::execution("server thread died"))??;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let c = Client::connect(&url, ClientOptions::new()).await?;
        let payload = Bytes::from(vec![0x5Au8; 32]);
        let t0 = Instant::now();
        let mut running = FuturesUnordered::new();
        let mut started = 0u64;
        let mut done = 0u64;
        while done < calls {
            while running.len() < in_flight && started < calls {
                let c = c.clone();
                let p = payload.clone();
                running.push(async move { c.call("echo", p).await });
                started += 1;
            }
            if let Some(r) = running.next().await {
                r?;
                done += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{done} calls, {in_flight} in flight: {:.0} calls/s",
            done as f64 / secs
        );
        Ok(())
    })
}
