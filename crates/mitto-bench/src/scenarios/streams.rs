//! `streams`: durable streams beside NATS JetStream (file storage, the nats-server at
//! 127.0.0.1:4222): acknowledged publishes of 128 B from 1 and from 8 publishers (each
//! publisher a connection of its own, one publish in flight at a time), the publish-ack round
//! trip's p50/p99 (1 publisher), and a consumer's replay of everything stored (msgs/s, each
//! message acknowledged).
//!
//! Durability, stated on both sides: nats-server's file store writes each message before its
//! ack and `fsync`s every 2 minutes by default (`sync_interval`; a server started with
//! `sync_always` fsyncs each one: this suite cannot see which, the note says what it assumes).
//! `mitto` runs its stream with the same policy (`fsync = "interval"`, 2 min), so the ratios
//! compare equal durability; `mitto-fsync-always` acknowledges only after an `fsync` (group
//! commit), stronger than JetStream's default. The mitto broker runs inside the benchmark
//! process (its data directory on a disk, chosen as `store-engines` does: `MITTO_BENCH_DIR`,
//! else the temporary folder unless it is in memory, else the current folder); its clients
//! connect over TCP on loopback, as JetStream's do. A note gives how many appends shared each
//! fsync with 8 publishers under `mitto-fsync-always` (from the broker's `/streamz`).

use super::row_from;
use crate::config::{Config, Mode};
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, MITTO};
use anyhow::Context as _;
use futures::future::BoxFuture;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "streams";
const PAYLOAD: usize = 128;
const NATS_URL: &str = "127.0.0.1:4222";
/// The stronger mitto row.
const ALWAYS: &str = "mitto-fsync-always";
const JETSTREAM: &str = "jetstream";
/// Publishers of the concurrent case.
const MANY: usize = 8;

/// One repetition of one system.
#[derive(Default)]
struct Sample {
    one: f64,
    many: f64,
    p50: f64,
    p99: f64,
    replay: f64,
    /// Appends per fsync of the stream with `MANY` publishers (from the broker's `/streamz`).
    per_sync: f64,
}

#[derive(Default)]
struct Samples(Vec<Sample>);

impl Samples {
    fn rows(&self, system: &str, out: &mut ScenarioReport) {
        if self.0.is_empty() {
            return;
        }
        let col = |f: fn(&Sample) -> f64| self.0.iter().map(f).collect::<Vec<f64>>();
        let cases: [(&str, Metric, Vec<f64>); 5] = [
            ("acked-publish-1", Metric::MsgsPerS, col(|s| s.one)),
            ("acked-publish-8", Metric::MsgsPerS, col(|s| s.many)),
            ("publish-ack", Metric::P50Us, col(|s| s.p50)),
            ("publish-ack", Metric::P99Us, col(|s| s.p99)),
            ("replay", Metric::MsgsPerS, col(|s| s.replay)),
        ];
        for (case, metric, values) in cases {
            out.rows
                .push(row_from(NAME, case, system, metric, PAYLOAD, &values));
        }
    }
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_all(config, progress))
}

async fn run_all(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport {
        scenario: NAME.into(),
        ..ScenarioReport::default()
    };
    let (mut equal, mut always, mut js) =
        (Samples::default(), Samples::default(), Samples::default());
    let mut js_failed = None;
    for rep in 0..config.reps {
        progress.step(format!("streams rep {}/{}: mitto", rep + 1, config.reps));
        if config.runs(MITTO) {
            let interval = mitto::streams::Fsync::Interval(Duration::from_secs(120));
            equal
                .0
                .push(mitto_rep(config, interval).await.context(MITTO)?);
        }
        if config.runs(ALWAYS) {
            let always_policy = mitto::streams::Fsync::Always;
            always
                .0
                .push(mitto_rep(config, always_policy).await.context(ALWAYS)?);
        }
        if js_failed.is_none() && config.runs(JETSTREAM) {
            progress.step(format!(
                "streams rep {}/{}: jetstream",
                rep + 1,
                config.reps
            ));
            match nats_rep(config).await {
                Ok(s) => js.0.push(s),
                Err(e) => js_failed = Some(format!("{e:#}")),
            }
        }
    }
    equal.rows(MITTO, &mut report);
    always.rows(ALWAYS, &mut report);
    if !always.0.is_empty() {
        let v: Vec<f64> = always.0.iter().map(|s| s.per_sync).collect();
        report.notes.push(format!(
            "{ALWAYS}: {:.1} appends per fsync with {MANY} publishers (group commit; {MANY} at \
             best)",
            crate::measure::spread(&v).median
        ));
    }
    js.rows(JETSTREAM, &mut report);
    if let Some(why) = js_failed {
        report.notes.push(format!(
            "{JETSTREAM}: left out: {why} (nats-server with JetStream at {NATS_URL})"
        ));
    }
    report.notes.push(
        "durability: mitto fsync every 2 min (interval), as nats-server's default sync_interval; \
         mitto-fsync-always acknowledges after fsync (group commit). Each acked publish waits \
         for its ack before the next (per publisher); replay acknowledges every message."
            .into(),
    );
    report.notes.push(
        "goal (issue 20): acked publishes >= 2x JetStream, publish-ack p50 <= 0.5x, replay >= 3x"
            .into(),
    );
    Ok(report)
}

type PublishFn = Arc<dyn Fn(usize) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// `publishers` tasks, each publishing (one at a time, waiting for the ack) until the total
/// reaches `count` or `time` runs out: acked publishes per second, and each publish-ack round
/// trip in microseconds.
async fn acked(
    publishers: usize,
    count: u64,
    time: Duration,
    publish: PublishFn,
) -> anyhow::Result<(u64, f64, Histogram<u64>)> {
    let per = (count / publishers as u64).max(1);
    let start = Instant::now();
    let deadline = start + time;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let publish = publish.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut n = 0u64;
            while n < per && Instant::now() < deadline {
                let t0 = Instant::now();
                publish(p).await?;
                h.record(t0.elapsed().as_micros().max(1) as u64)?;
                n += 1;
            }
            anyhow::Ok((n, h))
        }));
    }
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        hist.add(h)?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok((total, total as f64 / secs, hist))
}

fn counts(config: &Config) -> (u64, Duration) {
    match config.mode {
        // Acked publishes wait for the disk: a few hundred are enough to check it runs.
        Mode::Tiny => (200, config.throughput_time),
        _ => (config.throughput_count, config.throughput_time),
    }
}

async fn mitto_rep(config: &Config, fsync: mitto::streams::Fsync) -> anyhow::Result<Sample> {
    use mitto::streams::{ConsumerConfig, StreamConfig};
    // On a disk: in memory (tmpfs) an fsync costs nothing.
    let dir = super::store_engines::data_root()?.path.join(format!(
        "mitto-bench-streams-{}-{:x}",
        std::process::id(),
        rand_suffix()
    ));
    let cfg = mitto_broker::BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: "127.0.0.1:0".into(),
        data_dir: Some(dir.clone()),
        ..mitto_broker::BrokerConfig::default()
    };
    let broker = mitto_broker::Broker::start(cfg).await?;
    let url = broker.urls()[0].clone();
    let opts = mitto::ClientOptions::new().timeout(Duration::from_secs(10));
    let mut clients = Vec::new();
    for _ in 0..MANY {
        clients.push(mitto::Client::connect(&url, opts.clone()).await?);
    }
    clients[0]
        .stream("bench")
        .create(StreamConfig::new(["bench.>"]).fsync(fsync))
        .await?;
    let clients = Arc::new(clients);
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let publish: PublishFn = Arc::new(move |p| {
        let (c, body) = (clients.clone(), payload.clone());
        Box::pin(async move {
            let ack = mitto::PublishOptions::new().ack();
            Ok(c[p].publish_with("bench.x", body, ack).await?)
        })
    });
    let (count, time) = counts(config);
    let (n1, one, h) = acked(1, count, time, publish.clone()).await?;
    let monitor = broker.monitor_addr().context("monitor address")?;
    let syncs = fsyncs(monitor).await?;
    let (n8, many, _) = acked(MANY, count, time, publish).await?;
    let per_sync = n8 as f64 / (fsyncs(monitor).await? - syncs).max(1) as f64;
    let stored = n1 + n8;
    let c = mitto::Client::connect(&url, opts).await?;
    let start = Instant::now();
    let mut con = c.consumer("bench", "replay", ConsumerConfig::new()).await?;
    let mut got = 0u64;
    while got < stored {
        let m = tokio::time::timeout(Duration::from_secs(10), con.next())
            .await
            .context("replay stalled")?
            .context("consumer ended")?;
        con.ack(&m);
        got += 1;
    }
    let replay = got as f64 / start.elapsed().as_secs_f64().max(1e-9);
    drop(con);
    c.close().await;
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Sample {
        one,
        many,
        p50: h.value_at_quantile(0.5) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        replay,
        per_sync,
    })
}

/// The fsyncs of the (one) stream so far, from the broker's `/streamz`.
async fn fsyncs(monitor: std::net::SocketAddr) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(monitor).await?;
    let req = "GET /streamz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let body = out.split("\r\n\r\n").nth(1).context("no body")?;
    let v: serde_json::Value = serde_json::from_str(body)?;
    v["list"][0]["fsyncs"]
        .as_u64()
        .context("no fsyncs on /streamz")
}

fn rand_suffix() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64
}

async fn nats_rep(config: &Config) -> anyhow::Result<Sample> {
    use async_nats::jetstream::{self, consumer, stream};
    let connect = || async_nats::connect(NATS_URL);
    let first = tokio::time::timeout(Duration::from_secs(2), connect())
        .await
        .context("no answer")??;
    let js = jetstream::new(first.clone());
    let name = format!("MITTO_BENCH_{:x}", rand_suffix());
    let subject = format!("mittobench.{name}");
    let s = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("JetStream stream")?;
    let mut contexts = vec![js.clone()];
    for _ in 1..MANY {
        contexts.push(jetstream::new(connect().await?));
    }
    let contexts = Arc::new(contexts);
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let subj = subject.clone();
    let publish: PublishFn = Arc::new(move |p| {
        let (c, body, subj) = (contexts.clone(), payload.clone(), subj.clone());
        Box::pin(async move {
            c[p].publish(subj, body).await?.await?;
            Ok(())
        })
    });
    let (count, time) = counts(config);
    let result = async {
        let (n1, one, h) = acked(1, count, time, publish.clone()).await?;
        let (n8, many, _) = acked(MANY, count, time, publish).await?;
        let stored = n1 + n8;
        let start = Instant::now();
        let c = s
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let mut msgs = c.messages().await?;
        let mut got = 0u64;
        while got < stored {
            let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
                .await
                .context("replay stalled")?
                .context("consumer ended")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            got += 1;
        }
        let replay = got as f64 / start.elapsed().as_secs_f64().max(1e-9);
        anyhow::Ok(Sample {
            one,
            many,
            p50: h.value_at_quantile(0.5) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            replay,
            ..Sample::default()
        })
    }
    .await;
    let _ = js.delete_stream(&name).await;
    result
}
