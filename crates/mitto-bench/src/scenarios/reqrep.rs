//! `reqrep`: request/reply through a broker, sequential, 32 B each way, one requester
//! connection and one responder connection. mitto: the responder subscribes to the subject and
//! answers with `Client::respond`, the requester calls `Client::request` (the broker routes
//! both ways). nats: the responder subscribes and publishes the payload to each message's reply
//! subject, the requester calls `async-nats`' `Client::request` (its shared reply inbox).
//! Both clients run on the client runtime (the responder as a task), mitto's broker on the
//! server thread; the two systems take turns slice by slice.

use crate::config::Config;
use crate::measure::{sequential, slice, LatencyAcc, LatencySample};
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, MITTO, MITTO_BUSY_POLL};
use crate::runtime::{client_runtime, ServerRuntime};
use crate::systems::broker_sys::InProcBroker;
use crate::systems::nats_peer;
use bytes::Bytes;
use futures::StreamExt as _;
use std::time::Duration;
use tokio::task::JoinHandle;

const NAME: &str = "reqrep";
const NATS: &str = "nats";
/// The latency mode's polling window, microseconds.
const BUSY_POLL_US: u64 = crate::report::BUSY_POLL.as_micros() as u64;
/// The target stated beside the ratio: mitto's p50 round trip at most this times nats'.
pub const TARGET_VS_NATS: f64 = 0.5;

/// A requester connection, with its responder (another connection, answering in a task).
enum Requester {
    Mitto {
        name: &'static str,
        /// Latency mode's poller on this (the clients') runtime.
        poller: Option<std::sync::Arc<mitto::BusyPoll>>,
        client: mitto::Client,
        responder_client: mitto::Client,
        responder: JoinHandle<()>,
        subject: String,
    },
    Nats {
        client: async_nats::Client,
        responder: JoinHandle<()>,
        subject: async_nats::Subject,
    },
}

impl Requester {
    fn name(&self) -> &'static str {
        match self {
            Requester::Mitto { name, .. } => name,
            Requester::Nats { .. } => NATS,
        }
    }

    async fn mitto(
        name: &'static str,
        url: &str,
        subject: &str,
        poller: Option<std::sync::Arc<mitto::BusyPoll>>,
    ) -> anyhow::Result<Requester> {
        let opts = || match &poller {
            Some(p) => mitto::ClientOptions::new().busy_poll(p.clone()),
            None => mitto::ClientOptions::new(),
        };
        if let Some(p) = &poller {
            tokio::spawn(p.clone().run());
        }
        let responder_client = mitto::Client::connect(url, opts()).await?;
        let mut sub = responder_client.subscribe(subject).await?;
        let rc = responder_client.clone();
        let responder = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if rc.respond(&m, m.payload().clone()).await.is_err() {
                    break;
                }
            }
        });
        let client = mitto::Client::connect(url, opts()).await?;
        Ok(Requester::Mitto {
            name,
            poller,
            client,
            responder_client,
            responder,
            subject: subject.to_owned(),
        })
    }

    async fn nats(subject: &str) -> anyhow::Result<Requester> {
        nats_peer::reachable(nats_peer::ADDR).await?;
        let rc = nats_peer::connect().await?;
        let mut sub = rc.subscribe(subject.to_owned()).await?;
        rc.flush().await?;
        let responder = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    if rc.publish(reply, m.payload).await.is_err() {
                        break;
                    }
                }
            }
        });
        let client = nats_peer::connect().await?;
        Ok(Requester::Nats {
            client,
            responder,
            subject: async_nats::Subject::from(subject),
        })
    }

    /// One request, checking the reply's length.
    async fn request(&self, payload: &Bytes) -> anyhow::Result<()> {
        let n = match self {
            Requester::Mitto {
                client, subject, ..
            } => client.request(subject, payload.clone()).await?.len(),
            Requester::Nats {
                client, subject, ..
            } => client
                .request(subject.clone(), payload.clone())
                .await?
                .payload
                .len(),
        };
        anyhow::ensure!(
            n == payload.len(),
            "{} replied {n} of {} bytes",
            self.name(),
            payload.len()
        );
        Ok(())
    }

    async fn measure(
        &self,
        payload: &Bytes,
        acc: &mut LatencyAcc,
        count: u64,
        max: Duration,
    ) -> anyhow::Result<()> {
        sequential(acc, count, max, async || self.request(payload).await).await
    }

    async fn close(self) {
        match self {
            Requester::Mitto {
                client,
                responder_client,
                responder,
                poller,
                ..
            } => {
                client.close().await;
                responder.abort();
                responder_client.close().await;
                if let Some(p) = poller {
                    p.stop();
                }
            }
            Requester::Nats { responder, .. } => responder.abort(),
        }
    }
}

#[derive(Default)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    rate: Vec<f64>,
}

impl Samples {
    fn push(&mut self, s: LatencySample) {
        self.p50.push(s.p50_us);
        self.p99.push(s.p99_us);
        self.rate.push(s.msgs_per_s);
    }

    fn of(&self, metric: Metric) -> &[f64] {
        match metric {
            Metric::P50Us => &self.p50,
            Metric::P99Us => &self.p99,
            _ => &self.rate,
        }
    }
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let srt = ServerRuntime::start()?;
    let rt = client_runtime()?;
    let mut report = ScenarioReport {
        scenario: NAME.to_owned(),
        ..ScenarioReport::default()
    };
    let payload = Bytes::from(vec![0x5Au8; config.rpc_payload]);
    let samples = rt.block_on(async {
        progress.step("reqrep: connecting");
        let broker = InProcBroker::start(&srt).await?;
        let spinning = InProcBroker::start_busy_poll(&srt, BUSY_POLL_US).await?;
        let subject = format!("bench.{}.echo", std::process::id());
        let mut systems = vec![
            Requester::mitto(MITTO, &broker.url, &subject, None).await?,
            Requester::mitto(
                MITTO_BUSY_POLL,
                &spinning.url,
                &subject,
                Some(mitto::BusyPoll::new(Duration::from_micros(BUSY_POLL_US))),
            )
            .await?,
        ];
        match tokio::time::timeout(Duration::from_secs(30), Requester::nats(&subject)).await {
            Ok(Ok(r)) => systems.push(r),
            Ok(Err(e)) => report.notes.push(format!("{NATS}: skipped, {e:#}")),
            Err(_) => report
                .notes
                .push(format!("{NATS}: skipped, connecting took over 30 s")),
        }
        let mut failed: Vec<Option<String>> = systems.iter().map(|_| None).collect();
        for (s, f) in systems.iter().zip(failed.iter_mut()) {
            progress.step(format!("reqrep {} warm-up", s.name()));
            let (n, max) = (config.latency_warmup, config.latency_time);
            if let Err(e) = s.measure(&payload, &mut LatencyAcc::new()?, n, max).await {
                if s.name() == MITTO {
                    return Err(e);
                }
                *f = Some(format!("{e:#}"));
            }
        }
        let (n, max) = slice(config.latency_count, config.latency_time, config.slices);
        let mut samples: Vec<Samples> = systems.iter().map(|_| Samples::default()).collect();
        for rep in 0..config.reps {
            progress.step(format!("reqrep rep {}/{}", rep + 1, config.reps));
            let mut accs = Vec::new();
            for _ in &systems {
                accs.push(LatencyAcc::new()?);
            }
            for _ in 0..config.slices.max(1) {
                for ((s, acc), f) in systems.iter().zip(accs.iter_mut()).zip(failed.iter_mut()) {
                    if f.is_some() {
                        continue;
                    }
                    if let Err(e) = s.measure(&payload, acc, n, max).await {
                        if s.name() == MITTO {
                            return Err(e);
                        }
                        *f = Some(format!("{e:#}"));
                    }
                }
            }
            for ((out, acc), f) in samples.iter_mut().zip(&accs).zip(&failed) {
                if f.is_none() {
                    out.push(acc.sample()?);
                }
            }
        }
        let mut out = Vec::new();
        for ((s, smp), f) in systems.into_iter().zip(samples).zip(failed) {
            match f {
                None => out.push((s.name(), smp)),
                Some(why) => report.notes.push(format!("{}: left out, {why}", s.name())),
            }
            s.close().await;
        }
        broker.stop(&srt).await?;
        spinning.stop(&srt).await?;
        anyhow::Ok(out)
    })?;
    for metric in [Metric::P50Us, Metric::P99Us, Metric::MsgsPerS] {
        for (system, s) in &samples {
            report.rows.push(super::row_from(
                NAME,
                "sequential",
                system,
                metric,
                config.rpc_payload,
                s.of(metric),
            ));
        }
    }
    let mut head = Vec::new();
    let p50 = super::pubsub::ratios(&report, NATS, Metric::P50Us, Some(TARGET_VS_NATS));
    head.push(format!(
        "mitto p50 / nats p50 (target ≤ {TARGET_VS_NATS}x): {}",
        if p50.is_empty() {
            "no nats rows".to_owned()
        } else {
            p50.join(", ")
        }
    ));
    let spin = |m: Metric| {
        let of = |sys: &str| {
            report
                .rows
                .iter()
                .find(|r| r.system == sys && r.metric == m)
                .map(|r| r.value)
        };
        of(MITTO_BUSY_POLL).zip(of(NATS)).map(|(a, b)| a / b)
    };
    if let Some(x) = spin(Metric::P50Us) {
        let verdict = if x <= TARGET_VS_NATS { "met" } else { "MISSED" };
        head.push(format!(
            "{MITTO_BUSY_POLL} p50 / nats p50 (target ≤ {TARGET_VS_NATS}x): {x:.2}x ({verdict}); \
             p99 {:.2}x. {MITTO_BUSY_POLL} is the same broker in latency mode \
             with its clients too (busy_poll_us = {BUSY_POLL_US} on the broker, \
             ClientOptions::busy_poll on the clients' runtime: each thread keeps polling its \
             sockets {BUSY_POLL_US} µs after each read instead of sleeping, so both CPUs stay busy \
             while requests flow); nats-server and async-nats have no such mode.",
            spin(Metric::P99Us).unwrap_or(f64::NAN)
        ));
    }
    head.push(format!(
        "one request at a time, {} B each way, requester and responder on separate \
         connections through the broker; mitto and nats take turns in {} slices per repetition.",
        config.rpc_payload, config.slices
    ));
    report.notes.splice(0..0, head);
    Ok(report)
}
