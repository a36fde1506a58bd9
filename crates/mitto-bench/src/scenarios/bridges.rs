//! `bridges`: what a bridge and the federation add beside the backend's own client, all on
//! nats-servers of the suite's own (skipped, with a note, without the binary).
//!
//! - `bridge`: a mitto client publishes 16 B messages to a broker whose NATS bridge carries
//!   them out (core NATS); an `async-nats` subscriber on the nats-server receives them. Beside
//!   it (`nats`): an `async-nats` publisher to the same nats-server, the same subscriber.
//! - `federation`: a mitto client on broker A publishes (or requests), a mitto subscriber (or
//!   responder) on broker B gets it, A and B federated over a two-node NATS cluster, each on a
//!   node of its own. Beside it (`nats-cluster`): `async-nats` clients on the two nodes.
//!
//! Cases: `1->1` (msgs/s delivered, from the first publish to the last receive, publishing as
//! fast as the publisher can; messages not delivered are counted in the notes), `latency` (one
//! message at a time, publish to receive: p50/p99) and, for the federation, `req` (sequential
//! request/reply across the two: p50/p99). The brokers run in this process (embedded, with
//! their bridges and federations); the nats-servers are processes of their own.

use crate::config::Config;
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, MITTO};
use crate::runtime::client_runtime;
use crate::systems::nats_peer::{self, ChildNats};
use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use mitto_broker::{Broker, BrokerConfig};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const NAME: &str = "bridges";
/// The backend's own client, beside the bridge.
pub const NATS: &str = "nats";
/// A nats-server cluster's own clients, beside the federation.
pub const CLUSTER: &str = "nats-cluster";
const PAYLOAD: usize = 16;
const SUBJECT: &str = "bench.bridge.x";

/// What one system did in one repetition.
#[derive(Default)]
struct Sample {
    msgs_per_s: f64,
    lost: u64,
    p50_us: f64,
    p99_us: f64,
}

/// Arrival times of what a subscriber receives, from a task of its own.
type Arrivals = mpsc::UnboundedReceiver<Instant>;

fn nats_arrivals(mut sub: async_nats::Subscriber) -> Arrivals {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while sub.next().await.is_some() {
            if tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    rx
}

fn mitto_arrivals(mut sub: mitto::Subscription) -> Arrivals {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while sub.next().await.is_some() {
            if tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Publishes until one arrives (interest has crossed), then lets the rest come and drops them.
async fn warm_up<F, Fut>(publish: &mut F, rx: &mut Arrivals) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for _ in 0..500 {
        publish().await?;
        if tokio::time::timeout(Duration::from_millis(20), rx.recv())
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            return Ok(());
        }
    }
    anyhow::bail!("nothing arrived within 10 s of publishing")
}

/// Publishes `config.throughput_count` (or for `throughput_time`), then counts arrivals until
/// all came or none for `config.stall`.
async fn throughput<F, Fut>(
    config: &Config,
    publish: &mut F,
    rx: &mut Arrivals,
) -> anyhow::Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < config.throughput_count && start.elapsed() < config.throughput_time {
        publish().await?;
        sent += 1;
    }
    let (mut got, mut last) = (0u64, start);
    while got < sent {
        match tokio::time::timeout(config.stall, rx.recv()).await {
            Ok(Some(t)) => {
                got += 1;
                last = t;
            }
            _ => break,
        }
    }
    let secs = (last - start).as_secs_f64();
    anyhow::ensure!(got > 0 && secs > 0.0, "nothing was delivered");
    Ok(Sample {
        msgs_per_s: got as f64 / secs,
        lost: sent - got,
        ..Sample::default()
    })
}

/// p50 and p99 of `samples`, microseconds.
fn percentiles(mut samples: Vec<Duration>) -> anyhow::Result<(f64, f64)> {
    anyhow::ensure!(!samples.is_empty(), "no round trip completed");
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Ok((at(0.50), at(0.99)))
}

/// One message at a time, publish to arrival, `latency_count` times (or for `latency_time`).
async fn latency<F, Fut>(
    config: &Config,
    publish: &mut F,
    rx: &mut Arrivals,
) -> anyhow::Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let mut samples = Vec::new();
    while (samples.len() as u64) < config.latency_count && start.elapsed() < config.latency_time {
        let t0 = Instant::now();
        publish().await?;
        let t = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .context("a message did not arrive within 5 s")?
            .context("the subscriber ended")?;
        samples.push(t - t0);
    }
    let (p50_us, p99_us) = percentiles(samples)?;
    Ok(Sample {
        p50_us,
        p99_us,
        ..Sample::default()
    })
}

/// Sequential requests, `latency_count` times (or for `latency_time`).
async fn requests<F, Fut>(config: &Config, request: &mut F) -> anyhow::Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let mut samples = Vec::new();
    while (samples.len() as u64) < config.latency_count && start.elapsed() < config.latency_time {
        let t0 = Instant::now();
        request().await?;
        samples.push(t0.elapsed());
    }
    let (p50_us, p99_us) = percentiles(samples)?;
    Ok(Sample {
        p50_us,
        p99_us,
        ..Sample::default()
    })
}

/// Throughput with `publish`, then latency with `flushed` (a publish that leaves at once).
async fn one_way<F, Fut, G, Gut>(
    config: &Config,
    publish: &mut F,
    flushed: &mut G,
    rx: &mut Arrivals,
) -> anyhow::Result<(Sample, Sample)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
    G: FnMut() -> Gut,
    Gut: Future<Output = anyhow::Result<()>>,
{
    warm_up(flushed, rx).await?;
    let tp = throughput(config, publish, rx).await?;
    tokio::time::sleep(config.stall).await;
    while rx.try_recv().is_ok() {}
    let lat = latency(config, flushed, rx).await?;
    Ok((tp, lat))
}

/// Sequential requests with `request` once one went through (interest has crossed).
async fn request_reply<F, Fut>(config: &Config, request: &mut F) -> anyhow::Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for _ in 0..500 {
        if request().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    requests(config, request).await
}

async fn broker(extra: &str) -> anyhow::Result<(Broker, mitto::Client)> {
    let cfg = BrokerConfig::from_toml(&format!(
        "listen = [\"tcp://127.0.0.1:0\"]\nmonitor = \"\"\n{extra}"
    ))
    .map_err(|e| anyhow::anyhow!("broker config: {e}"))?;
    let b = Broker::start(cfg).await.context("starting the broker")?;
    let c = mitto::Client::connect(&b.urls()[0], mitto::ClientOptions::new())
        .await
        .context("connecting to the broker")?;
    Ok((b, c))
}

/// Waits until a request nobody serves came back: the server has what was sent before.
async fn nats_sync(c: &async_nats::Client) {
    let _ = c.request("_BENCH.sync", Bytes::new()).await;
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; PAYLOAD])
}

/// A closure publishing the bench payload on [`SUBJECT`] from a mitto client.
fn mitto_publisher(
    c: &mitto::Client,
) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    let c = c.clone();
    move || {
        let c = c.clone();
        Box::pin(async move { Ok(c.publish(SUBJECT, payload()).await?) })
    }
}

/// A closure publishing the bench payload on [`SUBJECT`] with async-nats (`flush`: written at
/// once, for latency).
fn nats_publisher(
    c: &async_nats::Client,
    flush: bool,
) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    let c = c.clone();
    move || {
        let c = c.clone();
        Box::pin(async move {
            c.publish(SUBJECT, payload()).await?;
            if flush {
                c.flush().await?;
            }
            Ok(())
        })
    }
}

/// The bridge and the nats-server's own client: (mitto, nats) for throughput and latency.
async fn bridge_rep(
    config: &Config,
    exe: &std::path::Path,
) -> anyhow::Result<[(Sample, Sample); 2]> {
    let server = ChildNats::spawn(exe).await?;
    let (b, app) = broker(&format!(
        "[[bridge]]\nname = \"bench\"\nkind = \"nats\"\nurl = \"nats://{}\"\ndirection = \"out\"\n\
         [[bridge.map]]\nmitto = \"bench.>\"\n",
        server.addr
    ))
    .await?;
    let other = nats_peer::connect_with(&server.addr, Some(1 << 22)).await?;
    let sub = other.subscribe(SUBJECT).await?;
    nats_sync(&other).await;
    let mut rx = nats_arrivals(sub);
    let (m_tp, m_lat) = one_way(
        config,
        &mut mitto_publisher(&app),
        &mut mitto_publisher(&app),
        &mut rx,
    )
    .await?;
    let publisher = nats_peer::connect_to(&server.addr).await?;
    let (n_tp, n_lat) = one_way(
        config,
        &mut nats_publisher(&publisher, false),
        &mut nats_publisher(&publisher, true),
        &mut rx,
    )
    .await?;
    b.shutdown().await;
    Ok([(m_tp, n_tp), (m_lat, n_lat)])
}

/// The federation over a two-node cluster and the cluster's own clients: (mitto,
/// nats-cluster) for throughput, latency and request/reply.
async fn federation_rep(
    config: &Config,
    exe: &std::path::Path,
) -> anyhow::Result<[(Sample, Sample); 3]> {
    let nodes = nats_peer::spawn_cluster(exe, 2).await?;
    let fed = |i: usize| {
        format!(
            "[federation]\nurl = \"nats://{},nats://{}\"\nname = \"bench{i}\"\ninterest_ms = 20\n",
            nodes[i].addr,
            nodes[1 - i].addr
        )
    };
    let (ba, a) = broker(&fed(0)).await?;
    let (bb, b) = broker(&fed(1)).await?;
    let mut rx = mitto_arrivals(b.subscribe(SUBJECT).await?);
    let (m_tp, m_lat) = one_way(
        config,
        &mut mitto_publisher(&a),
        &mut mitto_publisher(&a),
        &mut rx,
    )
    .await?;
    let mut svc = b.subscribe("bench.svc").await?;
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let _ = b.respond(&m, payload()).await;
        }
    });
    let m_req = request_reply(config, &mut || {
        let a = a.clone();
        async move { Ok(a.request("bench.svc", payload()).await.map(|_| ())?) }
    })
    .await?;

    let n1 = nats_peer::connect_to(&nodes[0].addr).await?;
    let n2 = nats_peer::connect_with(&nodes[1].addr, Some(1 << 22)).await?;
    let mut nrx = nats_arrivals(n2.subscribe(SUBJECT).await?);
    let (n_tp, n_lat) = one_way(
        config,
        &mut nats_publisher(&n1, false),
        &mut nats_publisher(&n1, true),
        &mut nrx,
    )
    .await?;
    let mut nsvc = n2.subscribe("bench.svc").await?;
    tokio::spawn(async move {
        while let Some(m) = nsvc.next().await {
            if let Some(r) = m.reply {
                let _ = n2.publish(r, payload()).await;
            }
        }
    });
    let n_req = request_reply(config, &mut || {
        let c = n1.clone();
        async move { Ok(c.request("bench.svc", payload()).await.map(|_| ())?) }
    })
    .await?;
    ba.shutdown().await;
    bb.shutdown().await;
    Ok([(m_tp, n_tp), (m_lat, n_lat), (m_req, n_req)])
}

/// Values per (case, system, metric), over the repetitions.
#[derive(Default)]
struct Values(Vec<(String, &'static str, Metric, Vec<f64>)>);

impl Values {
    fn push(&mut self, case: &str, system: &'static str, metric: Metric, v: f64) {
        match self
            .0
            .iter_mut()
            .find(|(c, s, m, _)| c == case && *s == system && *m == metric)
        {
            Some((_, _, _, vs)) => vs.push(v),
            None => self.0.push((case.to_owned(), system, metric, vec![v])),
        }
    }

    fn throughput(&mut self, case: &str, system: &'static str, s: &Sample, lost: &mut Vec<String>) {
        self.push(case, system, Metric::MsgsPerS, s.msgs_per_s);
        if s.lost > 0 {
            lost.push(format!("{system} {case}: {} not delivered", s.lost));
        }
    }

    fn latency(&mut self, case: &str, system: &'static str, s: &Sample) {
        self.push(case, system, Metric::P50Us, s.p50_us);
        self.push(case, system, Metric::P99Us, s.p99_us);
    }
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport {
        scenario: NAME.to_owned(),
        ..ScenarioReport::default()
    };
    let Some(exe) = nats_peer::find_binary() else {
        for s in [MITTO, NATS, CLUSTER] {
            report
                .notes
                .push(format!("{s}: skipped, no nats-server binary found"));
        }
        return Ok(report);
    };
    let rt = client_runtime()?;
    let mut values = Values::default();
    let mut lost = Vec::new();
    for rep in 0..config.reps {
        progress.step(format!("bridges bridge rep {}/{}", rep + 1, config.reps));
        let [(m_tp, n_tp), (m_lat, n_lat)] = rt.block_on(bridge_rep(config, &exe))?;
        values.throughput("bridge 1->1", MITTO, &m_tp, &mut lost);
        values.throughput("bridge 1->1", NATS, &n_tp, &mut lost);
        values.latency("bridge latency", MITTO, &m_lat);
        values.latency("bridge latency", NATS, &n_lat);
        progress.step(format!(
            "bridges federation rep {}/{}",
            rep + 1,
            config.reps
        ));
        let [(m_tp, n_tp), (m_lat, n_lat), (m_req, n_req)] =
            rt.block_on(federation_rep(config, &exe))?;
        values.throughput("federation 1->1", MITTO, &m_tp, &mut lost);
        values.throughput("federation 1->1", CLUSTER, &n_tp, &mut lost);
        values.latency("federation latency", MITTO, &m_lat);
        values.latency("federation latency", CLUSTER, &n_lat);
        values.latency("federation req", MITTO, &m_req);
        values.latency("federation req", CLUSTER, &n_req);
    }
    for (case, system, metric, vs) in &values.0 {
        report
            .rows
            .push(super::row_from(NAME, case, system, *metric, PAYLOAD, vs));
    }
    report.notes.push(
        "mitto: broker(s) embedded in the bench process with their NATS bridge / federation; \
         nats-servers of the suite's own as processes"
            .to_owned(),
    );
    report.notes.extend(lost);
    Ok(report)
}
