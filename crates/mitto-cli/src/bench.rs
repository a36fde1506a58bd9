//! `mitto bench`: load against a broker, with latency percentiles from hdrhistogram, as
//! `nats bench` does for NATS.

use crate::{connect, ClientArgs};
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use mitto::{CallOptions, Client, PublishOptions};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Subcommand, Debug)]
enum Kind {
    /// Publishers (and, with --subs, subscribers in the same process measuring end to end).
    #[command(
        after_help = "Examples:\n  mitto bench pub bench.demo --size 128 --count 1000000\n  mitto bench pub bench.demo --clients 4 --subs 2\n  mitto bench pub bench.demo --ack --count 20000"
    )]
    Pub(PubBench),
    /// Subscribers only: waits for --count messages each and reports the rate.
    #[command(after_help = "Example:\n  mitto bench sub bench.demo --count 1000000 --clients 2")]
    Sub(SubBench),
    /// Requesters: sequential requests per client, with round-trip percentiles. Needs a
    /// responder (`mitto reply SUBJECT --echo`, or --serve).
    #[command(
        after_help = "Examples:\n  mitto bench req bench.echo --serve --count 20000\n  mitto bench req svc.echo --clients 8 --size 256"
    )]
    Req(ReqBench),
}

#[derive(Args, Debug)]
struct Common {
    /// Subject.
    subject: String,
    /// Payload size, bytes.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Messages (requests) in all, shared by the clients.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Stop after this long even if the count is not reached.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    max_time: Duration,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
struct PubBench {
    #[command(flatten)]
    c: Common,
    /// Wait for the broker's ACK of every message (and report ack latency percentiles).
    #[arg(long)]
    ack: bool,
    /// Subscribers to run in this process, each expecting every message.
    #[arg(long, default_value_t = 0)]
    subs: usize,
}

#[derive(Args, Debug)]
struct SubBench {
    #[command(flatten)]
    c: Common,
}

#[derive(Args, Debug)]
struct ReqBench {
    #[command(flatten)]
    c: Common,
    /// Also run an echo responder on the subject in this process.
    #[arg(long)]
    serve: bool,
}

/// Results, printed for people or as JSON.
struct Outcome {
    what: &'static str,
    msgs: u64,
    elapsed: Duration,
    size: usize,
    hist: Option<Histogram<u64>>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn print(&self, json: bool) {
        let pct = |q: f64| {
            self.hist
                .as_ref()
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "kind": self.what, "msgs": self.msgs, "seconds": self.elapsed.as_secs_f64(),
                    "msgs_per_s": self.rate(), "bytes_per_s": self.rate() * self.size as f64,
                    "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99),
                    "max_us": self.hist.as_ref().map(|h| h.max() as f64 / 1000.0),
                })
            );
            return;
        }
        println!(
            "{:<4} {:>10} msgs in {:>8.3} s  {:>12.0} msgs/s  {:>8.2} MB/s",
            self.what,
            self.msgs,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.rate() * self.size as f64 / 1e6
        );
        if let Some(h) = &self.hist {
            println!(
                "     latency p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.9) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            );
        }
    }
}

/// A subscriber that got messages and then none for this long is done.
const IDLE: Duration = Duration::from_secs(2);

fn histogram() -> mitto::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| mitto::Error::new(mitto::Status::INTERNAL, format!("histogram: {e}")))
}

fn shares(total: u64, n: usize) -> Vec<u64> {
    let n = n.max(1) as u64;
    (0..n)
        .map(|i| total / n + u64::from(i < total % n))
        .collect()
}

async fn clients(c: &Common, n: usize, name: &str) -> mitto::Result<Vec<Client>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        v.push(connect(&c.client, name).await?);
    }
    Ok(v)
}

async fn subscribe_all(
    c: &Common,
    n: usize,
) -> mitto::Result<Vec<tokio::task::JoinHandle<mitto::Result<Outcome>>>> {
    let mut handles = Vec::new();
    for client in clients(c, n, "mitto-bench-sub").await? {
        let mut sub = client.subscribe(&c.subject).await?;
        let (count, max, size) = (c.count, c.max_time, c.size);
        handles.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut start = None;
            let deadline = Instant::now() + max;
            while got < count {
                let mut left = deadline.saturating_duration_since(Instant::now());
                if got > 0 {
                    // Messages dropped for a slow consumer never come: stop when the flow stops.
                    left = left.min(IDLE);
                }
                match tokio::time::timeout(left, sub.next()).await {
                    Ok(Some(_)) => {
                        start.get_or_insert_with(Instant::now);
                        got += 1;
                    }
                    _ => break,
                }
            }
            let elapsed = start.map(|s| s.elapsed()).unwrap_or_default();
            drop(sub);
            client.close().await;
            Ok(Outcome {
                what: "sub",
                msgs: got,
                elapsed,
                size,
                hist: None,
            })
        }));
    }
    Ok(handles)
}

async fn publish(p: &PubBench) -> mitto::Result<Vec<Outcome>> {
    let c = &p.c;
    let subs = subscribe_all(c, p.subs).await?;
    let subs = if p.subs == 0 { Vec::new() } else { subs };
    let payload = Bytes::from(vec![b'x'; c.size]);
    let pubs = clients(c, c.clients, "mitto-bench-pub").await?;
    let start = Instant::now();
    let deadline = start + c.max_time;
    let mut tasks = Vec::new();
    for (client, n) in pubs.into_iter().zip(shares(c.count, c.clients)) {
        let (subject, payload, ack) = (c.subject.clone(), payload.clone(), p.ack);
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram()?;
            let opts = if ack {
                PublishOptions::new().ack()
            } else {
                PublishOptions::new()
            };
            let mut sent = 0;
            while sent < n && Instant::now() < deadline {
                let t0 = Instant::now();
                client
                    .publish_with(&subject, payload.clone(), opts.clone())
                    .await?;
                if ack {
                    let _ = hist.record(t0.elapsed().as_nanos().max(1) as u64);
                }
                sent += 1;
            }
            client.flush().await?;
            client.close().await;
            Ok::<_, mitto::Error>((sent, hist))
        }));
    }
    let mut total = 0;
    let mut hist = histogram()?;
    for t in tasks {
        let (n, h) = t
            .await
            .map_err(|e| mitto::Error::execution(e.to_string()))??;
        total += n;
        let _ = hist.add(&h);
    }
    let mut out = vec![Outcome {
        what: "pub",
        msgs: total,
        elapsed: start.elapsed(),
        size: c.size,
        hist: p.ack.then_some(hist),
    }];
    for s in subs {
        out.push(
            s.await
                .map_err(|e| mitto::Error::execution(e.to_string()))??,
        );
    }
    if let Some(sub) = out.iter().skip(1).find(|o| o.msgs < total) {
        eprintln!(
            "note: a subscriber got {} of {total} messages; the rest were dropped for a slow \
             consumer (see `mitto stats`: slow_consumer_drops)",
            sub.msgs
        );
    }
    Ok(out)
}

async fn subscribe(s: &SubBench) -> mitto::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for h in subscribe_all(&s.c, s.c.clients).await? {
        out.push(
            h.await
                .map_err(|e| mitto::Error::execution(e.to_string()))??,
        );
    }
    Ok(out)
}

async fn request(r: &ReqBench) -> mitto::Result<Vec<Outcome>> {
    let c = &r.c;
    let responder = if r.serve {
        let client = connect(&c.client, "mitto-bench-reply").await?;
        let mut sub = client.queue_subscribe(&c.subject, "mitto-bench").await?;
        client.flush().await?;
        Some(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if client.respond(&m, m.payload().clone()).await.is_err() {
                    break;
                }
            }
        }))
    } else {
        None
    };
    let payload = Bytes::from(vec![b'x'; c.size]);
    let reqs = clients(c, c.clients, "mitto-bench-req").await?;
    let start = Instant::now();
    let deadline = start + c.max_time;
    let mut tasks = Vec::new();
    for (client, n) in reqs.into_iter().zip(shares(c.count, c.clients)) {
        let (subject, payload, timeout) = (c.subject.clone(), payload.clone(), c.client.timeout);
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram()?;
            let mut done = 0;
            while done < n && Instant::now() < deadline {
                let t0 = Instant::now();
                client
                    .request_with(
                        &subject,
                        payload.clone(),
                        CallOptions::new().timeout(timeout),
                    )
                    .await?;
                let _ = hist.record(t0.elapsed().as_nanos().max(1) as u64);
                done += 1;
            }
            client.close().await;
            Ok::<_, mitto::Error>((done, hist))
        }));
    }
    let mut total = 0;
    let mut hist = histogram()?;
    for t in tasks {
        let (n, h) = t
            .await
            .map_err(|e| mitto::Error::execution(e.to_string()))??;
        total += n;
        let _ = hist.add(&h);
    }
    let elapsed = start.elapsed();
    if let Some(r) = responder {
        r.abort();
    }
    Ok(vec![Outcome {
        what: "req",
        msgs: total,
        elapsed,
        size: c.size,
        hist: Some(hist),
    }])
}

pub(crate) async fn run(a: BenchArgs) -> mitto::Result<()> {
    let (json, outcomes) = match &a.kind {
        Kind::Pub(p) => (p.c.client.json, publish(p).await?),
        Kind::Sub(s) => (s.c.client.json, subscribe(s).await?),
        Kind::Req(r) => (r.c.client.json, request(r).await?),
    };
    for o in &outcomes {
        o.print(json);
    }
    Ok(())
}
