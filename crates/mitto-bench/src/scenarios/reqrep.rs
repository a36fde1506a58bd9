//! `reqrep`: request/reply through a broker, sequential (one request at a time), 32 B each
//! way: p50/p99 round trip, round trips per second and CPU per round trip of all the system's
//! processes. Deployed layout: the broker in a process of its own, a responder process
//! answering with the payload and a requester process timing each round trip (see
//! `reqrep_systems`); mitto: `Client::respond` / `Client::request`; nats: a subscription
//! publishing to each message's reply subject / async-nats' `Client::request` (its shared reply
//! inbox); Zenoh: a queryable's callback replying / `get` on a querier. The embedded layout's
//! `mitto-embedded` row runs the broker inside the benchmark process. The systems take turns
//! slice by slice.

use super::reqrep_systems::{DeployedReq, EmbeddedReq, ReqSystem, EMBEDDED};
use super::{goals, row_from};
use crate::config::Config;
use crate::measure::{slice, LatencySample};
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport};
use crate::systems::deployed::{self, Deployed};

const NAME: &str = "reqrep";
/// The deployed systems, in row order.
const SYSTEMS: &[Deployed] = &[
    Deployed::Mitto,
    Deployed::MittoBusyPoll,
    Deployed::Nats,
    Deployed::ZenohRouter,
    Deployed::ZenohPeer,
];

#[derive(Default)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    rate: Vec<f64>,
    cpu: Vec<f64>,
}

impl Samples {
    fn push(&mut self, s: LatencySample) {
        self.p50.push(s.p50_us);
        self.p99.push(s.p99_us);
        self.rate.push(s.msgs_per_s);
        self.cpu.push(s.cpu_us);
    }

    fn of(&self, metric: Metric) -> &[f64] {
        match metric {
            Metric::P50Us => &self.p50,
            Metric::P99Us => &self.p99,
            Metric::CpuUsPerMsg => &self.cpu,
            _ => &self.rate,
        }
    }
}

/// A system, its samples, and why it was left out if it was.
struct Entry {
    name: &'static str,
    mitto: bool,
    system: Option<ReqSystem>,
    samples: Samples,
    failed: Option<String>,
}

impl Entry {
    /// Runs `f` on the system; a peer's failure takes it out (with a note), mitto's fails the
    /// scenario.
    fn attempt<T>(
        &mut self,
        f: impl FnOnce(&mut ReqSystem) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        let Some(s) = self.system.as_mut() else {
            return Ok(None);
        };
        match f(s) {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.mitto => Err(e.context(self.name)),
            Err(e) => {
                self.failed = Some(format!("{e:#}"));
                self.system = None;
                Ok(None)
            }
        }
    }
}

fn start(
    config: &Config,
    report: &mut ScenarioReport,
    progress: &Progress,
) -> anyhow::Result<Vec<Entry>> {
    let exes = deployed::exes(Some(&config.bench_exe()?), config.mitto_exe.as_deref())?;
    let subject = format!("bench.{}.echo", std::process::id());
    let mut entries = Vec::new();
    for &kind in SYSTEMS.iter().filter(|k| config.runs(k.name())) {
        progress.step(format!("reqrep {}: starting", kind.name()));
        match DeployedReq::start(kind, &exes, &subject, config.rpc_payload) {
            Ok(d) => entries.push(Entry {
                name: kind.name(),
                mitto: kind.is_mitto(),
                system: Some(ReqSystem::Deployed(Box::new(d))),
                samples: Samples::default(),
                failed: None,
            }),
            Err(e) if kind.is_mitto() => return Err(e.context(kind.name())),
            Err(e) => report
                .notes
                .push(format!("{}: skipped, {e:#}", kind.name())),
        }
    }
    if config.runs(EMBEDDED) {
        progress.step(format!("reqrep {EMBEDDED}: starting"));
        let e = EmbeddedReq::start(&subject, config.rpc_payload)?;
        entries.push(Entry {
            name: EMBEDDED,
            mitto: true,
            system: Some(ReqSystem::Embedded(Box::new(e))),
            samples: Samples::default(),
            failed: None,
        });
    }
    Ok(entries)
}

/// A warm-up per system, then the repetitions, the systems taking turns slice by slice.
fn measure(entries: &mut [Entry], config: &Config, progress: &Progress) -> anyhow::Result<()> {
    for e in entries.iter_mut() {
        progress.step(format!("reqrep {} warm-up", e.name));
        let (n, max) = (config.latency_warmup, config.latency_time);
        e.attempt(|s| {
            s.run(n, max)?;
            s.sample()
        })?;
    }
    let (n, max) = slice(config.latency_count, config.latency_time, config.slices);
    for rep in 0..config.reps {
        progress.step(format!("reqrep rep {}/{}", rep + 1, config.reps));
        for _ in 0..config.slices.max(1) {
            for e in entries.iter_mut() {
                e.attempt(|s| s.run(n, max))?;
            }
        }
        for e in entries.iter_mut() {
            if let Some(s) = e.attempt(ReqSystem::sample)? {
                e.samples.push(s);
            }
        }
    }
    Ok(())
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport {
        scenario: NAME.to_owned(),
        ..ScenarioReport::default()
    };
    let mut entries = start(config, &mut report, progress)?;
    measure(&mut entries, config, progress)?;
    for metric in [
        Metric::P50Us,
        Metric::P99Us,
        Metric::MsgsPerS,
        Metric::CpuUsPerMsg,
    ] {
        for e in entries.iter().filter(|e| e.system.is_some()) {
            let values = e.samples.of(metric);
            if values.iter().all(|v| v.is_finite()) {
                report.rows.push(row_from(
                    NAME,
                    "sequential",
                    e.name,
                    metric,
                    config.rpc_payload,
                    values,
                ));
            }
        }
    }
    for e in entries {
        if let Some(why) = &e.failed {
            report.notes.push(format!("{}: left out, {why}", e.name));
        }
        if let Some(s) = e.system {
            s.stop()?;
        }
    }
    let mut head = goals::lines(&report, goals::REQUEST_REPLY);
    head.extend(
        SYSTEMS
            .iter()
            .filter(|s| config.runs(s.name()))
            .map(|s| s.describe()),
    );
    head.push(format!(
        "{EMBEDDED}: the broker inside the benchmark process, requester and responder on \
         another thread of it"
    ));
    head.push(format!(
        "one request at a time, {} B each way, requester and responder on separate \
         connections (processes, in the deployed layout) through the broker (Zenoh peers: \
         directly); a Zenoh get's round trip ends at its reply; CPU µs/msg = CPU time of every \
         process of the system per round trip; the systems take turns in {} slices per \
         repetition.",
        config.rpc_payload, config.slices
    ));
    report.notes.splice(0..0, head);
    Ok(report)
}
