//! Ping/pong: a client sends a typed `Ping` request and gets a `Pong` back.
//!
//! ```text
//! cargo run -p mitto --example ping_pong                      # server and client in one process
//! cargo run -p mitto --example ping_pong -- server tcp://127.0.0.1:4848
//! cargo run -p mitto --example ping_pong -- client tcp://127.0.0.1:4848
//! ```

use mitto::{Client, ClientOptions, Server};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, Debug)]
struct Ping {
    seq: u64,
}

#[derive(Serialize, Deserialize, Debug)]
struct Pong {
    seq: u64,
}

fn server() -> Server {
    Server::new().route_typed(
        "base.ping",
        |p: Ping| async move { Ok(Pong { seq: p.seq }) },
    )
}

async fn client(url: &str, count: u64) -> mitto::Result<()> {
    let c = Client::connect(url, ClientOptions::new().name("ping-pong-example")).await?;
    let t0 = Instant::now();
    for seq in 0..count {
        let pong: Pong = c.call_typed("base.ping", Ping { seq }).await?;
        assert_eq!(pong.seq, seq, "pong answers its ping");
    }
    let per = t0.elapsed() / count.max(1) as u32;
    println!("{count} pings answered over {url}, {per:?} per round trip");
    c.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> mitto::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("tcp://127.0.0.1:4848");
    match args.first().map(String::as_str) {
        Some("server") => {
            let running = server().bind(url).await?;
            println!("answering pings on {}; Ctrl-C stops", running.local_url());
            let _ = tokio::signal::ctrl_c().await;
            running.shutdown().await;
        }
        Some("client") => client(url, 1000).await?,
        Some(other) => {
            eprintln!("unknown mode {other:?}: use `server URL`, `client URL`, or nothing");
            std::process::exit(2);
        }
        None => {
            let running = server().bind("tcp://127.0.0.1:0").await?;
            let url = running.local_url().to_owned();
            client(&url, 1000).await?;
            tokio::time::timeout(Duration::from_secs(5), running.shutdown())
                .await
                .map_err(|_| mitto::Error::new(mitto::Status::TIMEOUT, "shutdown"))?;
        }
    }
    Ok(())
}
