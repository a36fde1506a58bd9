//! The systems of `reqrep`: in the deployed layout a broker process, a responder process and a
//! requester process that times its own round trips (`mitto-bench child requester`), the
//! CPU time read for all three; in the embedded layout (`mitto-embedded`) mitto's broker on
//! the benchmark process's server thread, requester and responder on its client runtime.

use super::fan_deployed::word;
use crate::measure::{sequential, LatencyAcc, LatencySample};
use crate::runtime::{client_runtime, ServerRuntime};
use crate::systems::broker_sys::InProcBroker;
use crate::systems::deployed::{group_cpu, Backend, Deployed};
use crate::systems::procs::{Exes, Proc};
use bytes::Bytes;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The embedded layout's rows.
pub(crate) const EMBEDDED: &str = "mitto-embedded";
/// Slack on every answer's time bound for a loaded machine.
const SLACK: Duration = Duration::from_secs(10);
/// How long a system may take to start and answer its first request.
const START: Duration = Duration::from_secs(40);

/// A deployed system's processes.
pub(crate) struct DeployedReq {
    // Field order is drop order: the clients before their broker.
    requester: Proc,
    responder: Proc,
    backend: Backend,
    cpu: Duration,
    cpu_known: bool,
}

impl DeployedReq {
    pub(crate) fn start(
        kind: Deployed,
        exes: &Exes,
        subject: &str,
        payload: usize,
    ) -> anyhow::Result<DeployedReq> {
        let backend = Backend::start(kind, exes)?;
        let name = kind.name();
        // The responder first: a Zenoh peer responder is what the requester connects to.
        let mut responder = Proc::role(
            format!("{name} responder"),
            &exes.bench,
            "responder",
            &backend.client_args(subject, true),
        )?;
        responder.expect("ready", START)?;
        let mut args = backend.client_args(subject, false);
        args.extend(["--payload".into(), payload.to_string()]);
        let mut requester =
            Proc::role(format!("{name} requester"), &exes.bench, "requester", &args)?;
        requester.expect("ready", START)?;
        Ok(DeployedReq {
            requester,
            responder,
            backend,
            cpu: Duration::ZERO,
            cpu_known: true,
        })
    }

    fn run(&mut self, n: u64, max: Duration) -> anyhow::Result<()> {
        let cpu0 = group_cpu(&self.backend, &[&self.requester, &self.responder]);
        self.requester
            .ask(&format!("run {n} {}", max.as_millis()), "ok", max + SLACK)?;
        let cpu1 = group_cpu(&self.backend, &[&self.requester, &self.responder]);
        match cpu0.zip(cpu1) {
            Some((a, b)) => self.cpu += b.saturating_sub(a),
            None => self.cpu_known = false,
        }
        Ok(())
    }

    fn sample(&mut self) -> anyhow::Result<LatencySample> {
        let w = self.requester.ask("sample", "sample", SLACK)?;
        let done: u64 = word(&w, 3)?;
        let cpu_us = if self.cpu_known && done > 0 {
            self.cpu.as_secs_f64() * 1e6 / done as f64
        } else {
            f64::NAN
        };
        self.cpu = Duration::ZERO;
        Ok(LatencySample {
            p50_us: word(&w, 0)?,
            p99_us: word(&w, 1)?,
            msgs_per_s: word(&w, 2)?,
            cpu_us,
        })
    }
}

/// The embedded layout: broker, requester and responder in this process.
pub(crate) struct EmbeddedReq {
    // Field order is drop order.
    client: Option<mitto::Client>,
    responder_client: Option<mitto::Client>,
    responder: Option<JoinHandle<()>>,
    broker: Option<InProcBroker>,
    subject: String,
    payload: Bytes,
    acc: LatencyAcc,
    rt: tokio::runtime::Runtime,
    srt: ServerRuntime,
}

impl EmbeddedReq {
    pub(crate) fn start(subject: &str, payload: usize) -> anyhow::Result<EmbeddedReq> {
        let srt = ServerRuntime::start()?;
        let rt = client_runtime()?;
        let (broker, client, responder_client, responder) = rt.block_on(async {
            let broker = InProcBroker::start(&srt).await?;
            let rc = mitto::Client::connect(&broker.url, mitto::ClientOptions::new()).await?;
            let mut sub = rc.subscribe(subject).await?;
            let rc2 = rc.clone();
            let responder = tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if rc2.respond(&m, m.payload().clone()).await.is_err() {
                        break;
                    }
                }
            });
            let client = mitto::Client::connect(&broker.url, mitto::ClientOptions::new()).await?;
            anyhow::Ok((broker, client, rc, responder))
        })?;
        Ok(EmbeddedReq {
            client: Some(client),
            responder_client: Some(responder_client),
            responder: Some(responder),
            broker: Some(broker),
            subject: subject.to_owned(),
            payload: Bytes::from(vec![0x5Au8; payload.max(1)]),
            acc: LatencyAcc::new()?,
            rt,
            srt,
        })
    }

    fn run(&mut self, n: u64, max: Duration) -> anyhow::Result<()> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{EMBEDDED} is stopped"))?;
        let (subject, payload, acc) = (&self.subject, &self.payload, &mut self.acc);
        self.rt.block_on(sequential(acc, n, max, async || {
            let r = client.request(subject, payload.clone()).await?;
            anyhow::ensure!(r.len() == payload.len(), "mitto replied {} bytes", r.len());
            Ok(())
        }))
    }

    fn sample(&mut self) -> anyhow::Result<LatencySample> {
        let s = self.acc.sample()?;
        self.acc = LatencyAcc::new()?;
        Ok(s)
    }

    /// Closes the clients and stops the broker.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let (c, rc, r, b) = (
            self.client.take(),
            self.responder_client.take(),
            self.responder.take(),
            self.broker.take(),
        );
        let srt = &self.srt;
        self.rt.block_on(async {
            if let Some(c) = c {
                c.close().await;
            }
            if let Some(r) = r {
                r.abort();
            }
            if let Some(rc) = rc {
                rc.close().await;
            }
            if let Some(b) = b {
                b.stop(srt).await?;
            }
            anyhow::Ok(())
        })
    }
}

/// A system of `reqrep`, in either layout.
pub(crate) enum ReqSystem {
    Deployed(Box<DeployedReq>),
    Embedded(Box<EmbeddedReq>),
}

impl ReqSystem {
    /// Up to `n` sequential round trips, for at most `max`, added to this repetition.
    pub(crate) fn run(&mut self, n: u64, max: Duration) -> anyhow::Result<()> {
        match self {
            ReqSystem::Deployed(d) => d.run(n, max),
            ReqSystem::Embedded(e) => e.run(n, max),
        }
    }

    /// What this repetition measured; the next one starts from nothing.
    pub(crate) fn sample(&mut self) -> anyhow::Result<LatencySample> {
        match self {
            ReqSystem::Deployed(d) => d.sample(),
            ReqSystem::Embedded(e) => e.sample(),
        }
    }

    /// Stops it.
    pub(crate) fn stop(self) -> anyhow::Result<()> {
        match self {
            ReqSystem::Deployed(_) => Ok(()),
            ReqSystem::Embedded(e) => e.stop(),
        }
    }
}
