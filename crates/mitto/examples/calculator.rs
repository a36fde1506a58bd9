//! A typed calculator service with unary, server-streaming, client-streaming and bidirectional
//! methods, served and called over one URL (any transport: `mem://`, `tcp://`, `unix://`).
//!
//! ```text
//! cargo run -p mitto --example calculator [URL]
//! ```

use mitto::StreamSender;
use mitto::{Client, ClientOptions, Codec, Error, Request, RequestStream, Response, Server};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct Pair {
    a: f64,
    b: f64,
}

fn calculator() -> Server {
    Server::new()
        .route_typed("calc.add", |p: Pair| async move { Ok(p.a + p.b) })
        .route_typed("calc.div", |p: Pair| async move {
            if p.b == 0.0 {
                return Err(Error::execution("division by zero"));
            }
            Ok(p.a / p.b)
        })
        // Server streaming: the first n Fibonacci numbers.
        .route_server_stream("calc.fib", |req: Request, out: StreamSender| async move {
            let n: u32 = req.decode()?;
            let (mut a, mut b) = (0u64, 1u64);
            for _ in 0..n {
                out.send_typed(Codec::Json, &a).await?;
                (a, b) = (b, a.saturating_add(b));
            }
            Ok(())
        })
        // Client streaming: the mean of the numbers sent.
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
        // Bidirectional: a running total, one answer per number.
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
        .unwrap_or_else(|| "mem://calculator".into());
    let running = calculator().bind(&url).await?;
    let c = Client::connect(running.local_url(), ClientOptions::new()).await?;

    let sum: f64 = c.call_typed("calc.add", Pair { a: 2.0, b: 40.0 }).await?;
    println!("2 + 40 = {sum}");
    match c
        .call_typed::<_, f64>("calc.div", Pair { a: 1.0, b: 0.0 })
        .await
    {
        Ok(q) => println!("1 / 0 = {q}?"),
        Err(e) => println!("1 / 0 fails with {} ({})", e.status(), e.message()),
    }

    let mut fib = c
        .server_stream("calc.fib", Codec::Json.encode(&10u32)?)
        .await?;
    let mut seq = Vec::new();
    while let Some(x) = fib.next().await {
        seq.push(Codec::Json.decode::<u64>(&x?)?);
    }
    println!("fib(10) = {seq:?}");

    let (mut sink, mean) = c.client_stream("calc.mean").await?;
    for x in [1.0, 2.0, 3.0, 4.0] {
        sink.send(Codec::Json.encode(&x)?).await?;
    }
    sink.finish().await?;
    let mean: f64 = Codec::Json.decode(&mean.await?.payload)?;
    println!("mean(1, 2, 3, 4) = {mean}");

    let (mut sink, mut totals) = c.bidi("calc.running_total").await?;
    for x in [5.0, 10.0, 20.0] {
        sink.send(Codec::Json.encode(&x)?).await?;
        let t: f64 = Codec::Json.decode(&totals.next().await.transpose()?.unwrap_or_default())?;
        println!("running total after {x}: {t}");
    }
    sink.finish().await?;
    while totals.next().await.is_some() {}

    c.close().await;
    running.shutdown().await;
    Ok(())
}
