//! The broker throughput scenarios (`pubsub`, `fanout`) in the deployed layout: for every
//! system a broker process (see `systems::deployed`), one publisher process and one process
//! per subscriber (`mitto-bench child pub|sub`), beside the embedded layout's `mitto-embedded`.
//! The systems take turns burst by burst. A burst: every subscriber is told the burst's tag
//! and count, the publisher publishes, every subscriber counts what arrives until it has
//! everything or nothing came for `Config::stall` (500 ms); the rate is what the subscribers received over the
//! time from the first publish to the last receive (one monotonic clock for every process),
//! and the CPU time is that of every process of the system (`/proc/PID/stat`), before and
//! after the burst.

use super::fan::{Burst, FanSpec, Measured};
use super::fan_embedded::{self, EmbeddedFan};
use crate::config::Config;
use crate::measure::{slice, ThroughputAcc};
use crate::progress::Progress;
use crate::report::ScenarioReport;
use crate::systems::deployed::{self, group_cpu, Backend, Deployed};
use crate::systems::procs::{Exes, Proc};
use std::time::{Duration, Instant};

/// How long after the publishing time bound a burst may still take to deliver.
const DRAIN: Duration = Duration::from_secs(5);
/// Slack on every answer's time bound for a loaded machine.
const SLACK: Duration = Duration::from_secs(10);
/// How long a system may take to start and have its path from publisher to every subscriber
/// in place.
const START: Duration = Duration::from_secs(30);

/// One system's processes between bursts.
struct DeployedFan {
    // Field order is drop order: the clients before their broker.
    publisher: Proc,
    subscribers: Vec<Proc>,
    backend: Backend,
    next_tag: u8,
}

impl DeployedFan {
    fn start(
        kind: Deployed,
        exes: &Exes,
        subject: &str,
        subscribers: usize,
    ) -> anyhow::Result<DeployedFan> {
        let backend = Backend::start(kind, exes)?;
        let name = kind.name();
        // The publisher first: a Zenoh peer publisher is what the subscribers connect to.
        let pub_args = backend.client_args(subject, true);
        let mut publisher = Proc::role(format!("{name} pub"), &exes.bench, "pub", &pub_args)?;
        publisher.expect("ready", START)?;
        let sub_args = backend.client_args(subject, false);
        let mut subs = Vec::with_capacity(subscribers);
        for i in 0..subscribers {
            subs.push(Proc::role(
                format!("{name} sub {i}"),
                &exes.bench,
                "sub",
                &sub_args,
            )?);
        }
        for s in &mut subs {
            s.expect("ready", START)?;
        }
        let mut me = DeployedFan {
            publisher,
            subscribers: subs,
            backend,
            next_tag: 0,
        };
        me.probe()?;
        Ok(me)
    }

    /// Publishes probe messages until every subscriber has seen one: with Zenoh a
    /// subscriber's interest reaches the publisher a moment after it is declared.
    fn probe(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START;
        let mut waiting: Vec<usize> = (0..self.subscribers.len()).collect();
        while !waiting.is_empty() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {} subscribers got no probe message within {} s",
                waiting.len(),
                self.subscribers.len(),
                START.as_secs()
            );
            self.publisher.ask("probe", "ok", SLACK)?;
            std::thread::sleep(Duration::from_millis(10));
            let mut still = Vec::new();
            for i in waiting {
                let w = self.subscribers[i].ask("probed?", "probed", SLACK)?;
                if w.first().map(String::as_str) != Some("yes") {
                    still.push(i);
                }
            }
            waiting = still;
        }
        Ok(())
    }

    fn cpu(&self) -> Option<Duration> {
        let mut clients: Vec<&Proc> = self.subscribers.iter().collect();
        clients.push(&self.publisher);
        group_cpu(&self.backend, &clients)
    }

    /// One burst: up to `n` messages of `size` bytes, for at most `max`.
    fn burst(
        &mut self,
        n: u64,
        max: Duration,
        size: usize,
        stall: Duration,
    ) -> anyhow::Result<Burst> {
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        let tag = self.next_tag;
        let hard = max + DRAIN.max(stall);
        let cpu0 = self.cpu();
        for s in &mut self.subscribers {
            s.send(&format!(
                "burst {tag} {n} {size} {} {}",
                hard.as_millis(),
                stall.as_millis()
            ))?;
        }
        for s in &mut self.subscribers {
            s.expect("ok", SLACK)?;
        }
        let w = self.publisher.ask(
            &format!("burst {tag} {n} {size} {}", max.as_millis()),
            "done",
            hard + SLACK,
        )?;
        let sent: u64 = word(&w, 0)?;
        let first_ns: u64 = word(&w, 1)?;
        let blocked = word::<u8>(&w, 2)? != 0;
        for s in &mut self.subscribers {
            s.send(&format!("end {sent}"))?;
        }
        let mut out = Burst {
            published: sent,
            blocked,
            ..Burst::default()
        };
        let mut last_ns = 0u64;
        for s in &mut self.subscribers {
            let w = s.expect("done", hard + SLACK)?;
            out.delivered += word::<u64>(&w, 0)?;
            out.stale += word::<u64>(&w, 1)?;
            last_ns = last_ns.max(word(&w, 2)?);
        }
        out.cpu = cpu0.zip(self.cpu()).map(|(a, b)| b.saturating_sub(a));
        out.elapsed = Duration::from_nanos(last_ns.saturating_sub(first_ns));
        Ok(out)
    }
}

/// Word `i` of an answer.
pub(crate) fn word<T: std::str::FromStr>(words: &[String], i: usize) -> anyhow::Result<T> {
    words
        .get(i)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("answer {words:?}: no value at {i}"))
}

/// A system of the scenario, in either layout.
enum FanSystem {
    Deployed(Box<DeployedFan>),
    Embedded(Box<EmbeddedFan>),
}

/// A system and what it measured.
struct Entry {
    name: &'static str,
    mitto: bool,
    system: Option<FanSystem>,
    failed: Option<String>,
    measured: Vec<(usize, Measured)>,
}

impl Entry {
    fn new(name: &'static str, mitto: bool, system: FanSystem) -> Entry {
        Entry {
            name,
            mitto,
            system: Some(system),
            failed: None,
            measured: Vec::new(),
        }
    }

    /// One burst; a peer's failure takes it out of the run (with a note), mitto's fails it.
    fn burst(
        &mut self,
        n: u64,
        max: Duration,
        size: usize,
        stall: Duration,
    ) -> anyhow::Result<Option<Burst>> {
        let r = match &mut self.system {
            None => return Ok(None),
            Some(FanSystem::Deployed(d)) => d.burst(n, max, size, stall),
            Some(FanSystem::Embedded(e)) => e.burst(n, max, size, stall),
        };
        let why = match r {
            Ok(b) if b.delivered > 0 => return Ok(Some(b)),
            Ok(b) => format!("{size} B: none of {} messages arrived", b.published),
            Err(e) => format!("{size} B: {e:#}"),
        };
        anyhow::ensure!(!self.mitto, "{}: {why}", self.name);
        self.failed = Some(why);
        self.system = None;
        Ok(None)
    }
}

/// Starts `systems` deployed (those `config` selects), then `mitto-embedded`; a peer that
/// cannot start is left out with a note in `report`.
fn start(
    spec: &FanSpec,
    systems: &[Deployed],
    config: &Config,
    progress: &Progress,
    report: &mut ScenarioReport,
) -> anyhow::Result<Vec<Entry>> {
    let name = spec.scenario;
    let exes = deployed::exes(Some(&config.bench_exe()?), config.mitto_exe.as_deref())?;
    let subject = format!("bench.{}.{name}", std::process::id());
    let mut entries = Vec::new();
    for &kind in systems.iter().filter(|k| config.runs(k.name())) {
        progress.step(format!("{name} {}: starting", kind.name()));
        let system = match DeployedFan::start(kind, &exes, &subject, spec.subscribers) {
            Ok(d) => FanSystem::Deployed(Box::new(d)),
            Err(e) if kind.is_mitto() => return Err(e.context(kind.name())),
            Err(e) => {
                report
                    .notes
                    .push(format!("{}: skipped, {e:#}", kind.name()));
                continue;
            }
        };
        entries.push(Entry::new(kind.name(), kind.is_mitto(), system));
    }
    if config.runs(fan_embedded::SYSTEM) {
        progress.step(format!("{name} {}: starting", fan_embedded::SYSTEM));
        let e = EmbeddedFan::start(&subject, spec.subscribers)?;
        entries.push(Entry::new(
            fan_embedded::SYSTEM,
            true,
            FanSystem::Embedded(Box::new(e)),
        ));
    }
    Ok(entries)
}

/// Measures one payload size: a warm-up burst per system, then the repetitions, the systems
/// taking turns slice by slice.
fn measure_size(
    entries: &mut [Entry],
    spec: &FanSpec,
    size: usize,
    config: &Config,
    progress: &Progress,
) -> anyhow::Result<()> {
    let name = spec.scenario;
    for e in entries.iter_mut() {
        progress.step(format!("{name} {} {size} B warm-up", e.name));
        e.burst(
            config.throughput_warmup,
            config.throughput_time,
            size,
            config.stall,
        )?;
    }
    let (n, max) = slice(
        config.throughput_count,
        config.throughput_time,
        config.slices,
    );
    let mut measured: Vec<Measured> = entries.iter().map(|_| Measured::default()).collect();
    for rep in 0..config.reps {
        let mut accs = vec![ThroughputAcc::default(); entries.len()];
        for part in 0..config.slices.max(1) {
            for (i, e) in entries.iter_mut().enumerate() {
                progress.step(format!(
                    "{name} {} {size} B rep {}/{} slice {}/{}",
                    e.name,
                    rep + 1,
                    config.reps,
                    part + 1,
                    config.slices
                ));
                if let Some(b) = e.burst(n, max, size, config.stall)? {
                    measured[i].tally.add(&mut accs[i], &b, spec.subscribers);
                }
            }
        }
        for ((e, m), acc) in entries.iter().zip(&mut measured).zip(&accs) {
            if e.system.is_some() {
                m.push(acc)?;
            }
        }
    }
    for (e, m) in entries.iter_mut().zip(measured) {
        if e.system.is_some() {
            e.measured.push((size, m));
        }
    }
    Ok(())
}

/// Runs a broker throughput scenario: `systems` deployed (those `config` selects) and
/// `mitto-embedded`, every size in turn. Returns the report with its rows and delivery notes.
pub(crate) fn run(
    spec: &FanSpec,
    systems: &[Deployed],
    config: &Config,
    progress: &Progress,
) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport {
        scenario: spec.scenario.to_owned(),
        ..ScenarioReport::default()
    };
    let mut entries = start(spec, systems, config, progress, &mut report)?;
    for &size in spec.sizes {
        measure_size(&mut entries, spec, size, config, progress)?;
    }
    let mut lines = Vec::new();
    for e in &entries {
        for (size, m) in &e.measured {
            report.rows.extend(m.rows(spec, e.name, *size));
            lines.push(m.tally.line(e.name, *size));
        }
    }
    report.notes.push(format!(
        "delivered / published × subscribers, measured repetitions: {}",
        lines.join("; ")
    ));
    for e in entries {
        if let Some(why) = &e.failed {
            report.notes.push(format!("{}: left out, {why}", e.name));
        }
        if let Some(FanSystem::Embedded(emb)) = e.system {
            report.notes.push(format!(
                "{} broker slow_consumer_drops: {}",
                fan_embedded::SYSTEM,
                emb.drops()
            ));
            emb.stop()?;
        }
    }
    Ok(report)
}
