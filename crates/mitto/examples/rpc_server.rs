//! An RPC server for other languages' clients to call (the TypeScript client's interop tests
//! use it): unary, server-streaming, client-streaming and bidirectional methods, and one that
//! waits until cancelled and counts the cancellations that reached it.
//!
//! ```text
//! cargo run -p mitto --example rpc_server [URL]     # prints the bound URL, runs until killed
//! ```

use mitto::{Codec, Error, Request, RequestStream, Response, Server, Status, StreamSender};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Calls of `test.wait` that started, and those that ended without completing (cancelled or
/// past their deadline).
static STARTED: AtomicU64 = AtomicU64::new(0);
static ABANDONED: AtomicU64 = AtomicU64::new(0);

/// Counts its call as abandoned unless disarmed: dropping the handler future drops it.
struct Abandoned(bool);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.0 {
            ABANDONED.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn server() -> Server {
    Server::new()
        .route("test.echo", |req: Request| async move {
            Ok(req.payload().clone())
        })
        .route_typed("calc.add", |(a, b): (f64, f64)| async move { Ok(a + b) })
        .route("test.fail", |_req: Request| async move {
            Err::<Response, _>(Error::execution("failed on purpose"))
        })
        .route("test.wait", |_req: Request| async move {
            let mut guard = Abandoned(false);
            STARTED.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(30)).await;
            guard.0 = true;
            Ok(Response::from("waited".to_owned()))
        })
        .route("test.started", |_req: Request| async move {
            Ok(Response::from(STARTED.load(Ordering::SeqCst).to_string()))
        })
        .route("test.abandoned", |_req: Request| async move {
            Ok(Response::from(ABANDONED.load(Ordering::SeqCst).to_string()))
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
            "calc.sum",
            |_req: Request, mut xs: RequestStream| async move {
                let (mut sum, mut n) = (0.0, 0u32);
                while let Some(x) = xs.next().await {
                    sum += Codec::Json.decode::<f64>(&x)?;
                    n += 1;
                }
                if n == 0 {
                    return Err(Error::new(Status::BAD_REQUEST, "no numbers"));
                }
                Response::encode(Codec::Json, &sum)
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
}

#[tokio::main]
async fn main() -> mitto::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:0".into());
    let running = server().bind(&url).await?;
    println!("{}", running.local_url());
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown().await;
    Ok(())
}
