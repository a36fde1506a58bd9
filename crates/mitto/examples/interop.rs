//! The Rust side of the other languages' interop tests: an RPC server with every streaming
//! kind, served on a URL or attached to a broker as a service, and a caller of every kind.
//!
//! ```text
//! cargo run -p mitto --example interop -- serve tcp://127.0.0.1:0     # prints "listening on URL"
//! cargo run -p mitto --example interop -- attach tcp://127.0.0.1:4747 # prints "attached"
//! cargo run -p mitto --example interop -- call URL METHOD unary|server|client|bidi [ITEM...]
//! ```
//!
//! `serve` and `attach` run until standard input closes. `call` sends its items as UTF-8
//! payloads (the first one as the request of a unary or server-streaming call) and prints one
//! line per item received (`item TEXT`), then `response TEXT` or `error STATUS MESSAGE`.

use bytes::Bytes;
use mitto::{
    Client, ClientOptions, Codec, Error, Request, RequestStream, Response, Server, StreamSender,
};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct Pair {
    a: f64,
    b: f64,
}

/// Counts the `test.sleep` handlers dropped before they finished (cancelled by the caller or
/// their deadline).
struct Unfinished(Arc<AtomicU64>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn server() -> Server {
    let cancelled = Arc::new(AtomicU64::new(0));
    let counter = cancelled.clone();
    Server::new()
        .route_typed("calc.add", |p: Pair| async move { Ok(p.a + p.b) })
        .route_typed("calc.div", |p: Pair| async move {
            if p.b == 0.0 {
                return Err(Error::execution("division by zero"));
            }
            Ok(p.a / p.b)
        })
        .route_server_stream("calc.fib", |req: Request, out: StreamSender| async move {
            let n: u32 = req.decode()?;
            let (mut a, mut b) = (0u64, 1u64);
            for _ in 0..n {
                out.send_typed(Codec::Json, &a).await?;
                (a, b) = (b, a.saturating_add(b));
            }
            Ok(())
        })
        .route_client_stream(
            "calc.mean",
            |_req: Request, mut xs: RequestStream| async move {
                let (mut sum, mut n) = (0.0, 0u32);
                while let Some(x) = xs.next().await {
                    sum += Codec::Json.decode::<f64>(&x)?;
                    n += 1;
                }
                if n == 0 {
                    return Err(Error::new(mitto::Status::BAD_REQUEST, "no numbers"));
                }
                Response::encode(Codec::Json, &(sum / f64::from(n)))
            },
        )
        .route_bidi(
            "calc.running_total",
            |_req: Request, mut xs: RequestStream, out: StreamSender| async move {
                let mut total = 0.0;
                while let Some(x) = xs.next().await {
                    total += Codec::Json.decode::<f64>(&x)?;
                    out.send_typed(Codec::Json, &total).await?;
                }
                Ok(())
            },
        )
        // Sleeps for the JSON number of milliseconds it is sent.
        .route("test.sleep", move |req: Request| {
            let counter = counter.clone();
            async move {
                let ms: u64 = req.decode()?;
                let mut guard = Unfinished(counter, false);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                guard.1 = true;
                Ok("slept")
            }
        })
        .route("test.cancelled", move |_req: Request| {
            let n = cancelled.load(Ordering::SeqCst);
            async move { Response::encode(Codec::Json, &n) }
        })
        // The milliseconds left before the caller's deadline, as the server saw it.
        .route("test.deadline", |req: Request| async move {
            let left = req.deadline().map(|d| {
                d.saturating_duration_since(tokio::time::Instant::now())
                    .as_millis() as u64
            });
            Response::encode(Codec::Json, &left)
        })
        // The payload and the headers, as they came.
        .route("test.echo", |req: Request| async move {
            Ok(Response::new(req.payload().clone()).with_headers(req.headers().clone()))
        })
}

async fn until_stdin_closes() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    })
    .await;
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn call(url: &str, method: &str, shape: &str, items: &[String]) -> mitto::Result<()> {
    let c = Client::connect(url, ClientOptions::new().reconnect(false)).await?;
    let first = items.first().cloned().unwrap_or_default();
    match shape {
        "unary" => {
            let r = c.call(method, Bytes::from(first)).await?;
            println!("response {}", text(&r));
        }
        "server" => {
            let mut s = c.server_stream(method, Bytes::from(first)).await?;
            while let Some(x) = s.next().await {
                println!("item {}", text(&x?));
            }
            println!("response ");
        }
        "client" => {
            let (mut sink, reply) = c.client_stream(method).await?;
            for x in items {
                sink.send(Bytes::from(x.clone())).await?;
            }
            sink.finish().await?;
            println!("response {}", text(&reply.await?.payload));
        }
        "bidi" => {
            let (mut sink, mut out) = c.bidi(method).await?;
            for x in items {
                sink.send(Bytes::from(x.clone())).await?;
                if let Some(y) = out.next().await {
                    println!("item {}", text(&y?));
                }
            }
            sink.finish().await?;
            while let Some(y) = out.next().await {
                println!("item {}", text(&y?));
            }
            println!("response ");
        }
        other => {
            return Err(Error::new(
                mitto::Status::BAD_REQUEST,
                format!("unknown call shape {other:?}"),
            ))
        }
    }
    c.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", url] => match server().bind(url).await {
            Ok(running) => {
                println!("listening on {}", running.local_url());
                until_stdin_closes().await;
                running.shutdown().await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        ["attach", url] => match server().attach(url, ClientOptions::new()).await {
            Ok(running) => {
                println!("attached");
                until_stdin_closes().await;
                running.shutdown().await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        ["call", url, method, shape, ..] => call(url, method, shape, &args[4..]).await,
        _ => Err(Error::new(
            mitto::Status::BAD_REQUEST,
            "usage: interop serve URL | attach BROKER_URL | call URL METHOD SHAPE [ITEM...]",
        )),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("error {} {}", e.status().0, e.message());
            std::process::ExitCode::FAILURE
        }
    }
}
