//! `pubsub`: one publisher connection, one subscriber connection, fire-and-forget publishes of
//! 16 B and 128 B, messages per second end to end (first publish to last receive, counting only
//! what the subscriber actually received), through mitto's broker (in process on the server
//! thread), the nats-server at 127.0.0.1:4222 (`async-nats`) and the mosquitto at
//! 127.0.0.1:1883 (`rumqttc`, QoS 0). Peers that cannot be reached are left out with a note.
//!
//! The machinery here (bursts, taking turns, delivery accounting) is shared with `fanout`.

use crate::config::Config;
use crate::measure::{slice, ThroughputAcc};
use crate::progress::Progress;
use crate::report::{format_value, Metric, ScenarioReport};
use crate::runtime::{client_runtime, ServerRuntime};
use crate::systems::broker_sys::InProcBroker;
use crate::systems::ends::{connect_fan, BrokerKind, Publisher, Subscriber};
use crate::systems::nats_peer;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "pubsub";
/// The target stated beside the ratio: mitto's end-to-end rate at least this times nats'.
pub const TARGET_VS_NATS: f64 = 2.0;
/// Payload sizes.
pub const SIZES: [usize; 2] = [16, 128];

/// A subscriber that received nothing for this long, after the publisher finished, is done
/// (what is missing was dropped).
const STALL: Duration = Duration::from_millis(500);
/// How long after the publishing time bound a burst may still wait for deliveries.
const DRAIN: Duration = Duration::from_secs(5);

/// What a broker throughput scenario measures.
pub(crate) struct FanSpec {
    pub(crate) scenario: &'static str,
    pub(crate) case: &'static str,
    pub(crate) subscribers: usize,
    pub(crate) sizes: &'static [usize],
    pub(crate) systems: &'static [BrokerKind],
}

/// One broker's connections.
struct FanSystem {
    kind: BrokerKind,
    publisher: Publisher,
    subscribers: Vec<Subscriber>,
    next_tag: u8,
    failed: Option<String>,
}

impl FanSystem {
    fn tag(&mut self) -> u8 {
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        self.next_tag
    }
}

/// What one burst did.
#[derive(Clone, Copy, Debug, Default)]
struct Burst {
    published: u64,
    delivered: u64,
    stale: u64,
    elapsed: Duration,
    /// The publisher was still blocked (in a publish or the flush) at the burst's time bound.
    blocked: bool,
}

/// Shared by the publisher and the subscribers of one burst.
struct BurstState {
    /// Messages each subscriber should get: the planned count, lowered to the count actually
    /// published when the time bound stopped the publisher early.
    expected: AtomicU64,
    /// The publisher is done.
    done: AtomicBool,
}

/// What one subscriber got in a burst.
struct Received {
    got: u64,
    stale: u64,
    last: Option<Instant>,
}

/// Receives until the subscriber has every message, or nothing came for [`STALL`] after the
/// publisher finished, or `hard` has passed. Messages of another burst (another tag) or of the
/// wrong length are counted apart.
async fn receive(
    mut sub: Subscriber,
    tag: u8,
    len: usize,
    st: Arc<BurstState>,
    hard: Instant,
) -> (Subscriber, anyhow::Result<Received>) {
    let mut r = Received {
        got: 0,
        stale: 0,
        last: None,
    };
    let stall = tokio::time::sleep(STALL);
    tokio::pin!(stall);
    let mut at_tick = 0u64;
    let result = loop {
        if r.got >= st.expected.load(Ordering::Acquire) {
            r.last = Some(Instant::now());
            break Ok(());
        }
        tokio::select! {
            biased;
            m = sub.next() => match m {
                Ok(Some((t, l))) if t == tag && l == len => {
                    r.got += 1;
                    // A clock read every 64 messages is enough for the end of the burst.
                    if r.got < 64 || r.got.is_multiple_of(64) {
                        r.last = Some(Instant::now());
                    }
                }
                Ok(Some(_)) => r.stale += 1,
                Ok(None) => break Err(anyhow::anyhow!("the subscription ended")),
                Err(e) => break Err(e),
            },
            () = &mut stall => {
                let now = Instant::now();
                if now >= hard || (r.got == at_tick && st.done.load(Ordering::Acquire)) {
                    break Ok(());
                }
                at_tick = r.got;
                stall.as_mut().reset(tokio::time::Instant::from_std(now + STALL));
            }
        }
    };
    (sub, result.map(|()| r))
}

/// Publishes up to `n` messages (or for `max`) while every subscriber receives them, on the
/// caller's runtime (the subscribers as tasks of their own).
async fn burst(sys: &mut FanSystem, n: u64, max: Duration, size: usize) -> anyhow::Result<Burst> {
    let tag = sys.tag();
    let mut body = vec![0x5Au8; size.max(1)];
    body[0] = tag;
    let payload = Bytes::from(body);
    let st = Arc::new(BurstState {
        expected: AtomicU64::new(n),
        done: AtomicBool::new(false),
    });
    let start = Instant::now();
    let hard = start + max + DRAIN;
    let tasks: Vec<_> = sys
        .subscribers
        .drain(..)
        .map(|s| tokio::spawn(receive(s, tag, payload.len(), st.clone(), hard)))
        .collect();
    let mut sent = 0u64;
    // One publish can block (the connection's queue is full); the whole loop, flush included,
    // is bounded by the same time as the subscribers.
    let publishing = async {
        while sent < n {
            sys.publisher.publish(&payload).await?;
            sent += 1;
            if sent.is_multiple_of(64) && start.elapsed() >= max {
                break;
            }
        }
        sys.publisher.flush().await
    };
    let mut blocked = false;
    let mut published: anyhow::Result<()> =
        match tokio::time::timeout(max + DRAIN, publishing).await {
            Ok(r) => r,
            Err(_) => {
                blocked = true;
                Ok(())
            }
        };
    st.expected.store(sent, Ordering::Release);
    st.done.store(true, Ordering::Release);
    let mut out = Burst {
        published: sent,
        blocked,
        ..Burst::default()
    };
    let mut last = None;
    for t in tasks {
        let (sub, r) = match t.await {
            Ok(x) => x,
            Err(e) => anyhow::bail!("a subscriber task failed: {e}"),
        };
        sys.subscribers.push(sub);
        match r {
            Ok(r) => {
                out.delivered += r.got;
                out.stale += r.stale;
                last = last.max(r.last);
            }
            Err(e) => published = published.and(Err(e)),
        }
    }
    published?;
    out.elapsed = last.map(|l| l - start).unwrap_or_default();
    Ok(out)
}

/// Delivered and expected messages of one system at one size, over the repetitions.
#[derive(Default)]
struct Tally {
    expected: u64,
    delivered: u64,
    stale: u64,
    bursts: u64,
    blocked: u64,
}

async fn connect(
    kind: BrokerKind,
    broker: &InProcBroker,
    subject: &str,
    subscribers: usize,
) -> anyhow::Result<FanSystem> {
    if let Some(addr) = kind.external_addr() {
        nats_peer::reachable(addr).await?;
    }
    let (publisher, subscribers) = tokio::time::timeout(
        Duration::from_secs(30),
        connect_fan(kind, &broker.url, subject, subscribers),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting took over 30 s"))??;
    Ok(FanSystem {
        kind,
        publisher,
        subscribers,
        next_tag: 0,
        failed: None,
    })
}

/// Runs one burst of `sys`; a peer's failure takes it out of the run (with a note), mitto's
/// fails the scenario.
async fn run_burst(
    sys: &mut FanSystem,
    n: u64,
    max: Duration,
    size: usize,
) -> anyhow::Result<Option<Burst>> {
    if sys.failed.is_some() {
        return Ok(None);
    }
    match burst(sys, n, max, size).await {
        Ok(b) if b.delivered > 0 || sys.kind == BrokerKind::Mitto => Ok(Some(b)),
        Ok(b) => {
            sys.failed = Some(format!(
                "{} B: none of {} messages arrived",
                size, b.published
            ));
            Ok(None)
        }
        Err(e) if sys.kind != BrokerKind::Mitto => {
            sys.failed = Some(format!("{size} B: {e:#}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs a broker throughput scenario: for every payload size, a warm-up burst per system,
/// then the repetitions, the systems taking turns slice by slice.
pub(crate) fn run_fan(
    spec: &FanSpec,
    config: &Config,
    progress: &Progress,
) -> anyhow::Result<ScenarioReport> {
    let srt = ServerRuntime::start()?;
    let rt = client_runtime()?;
    let mut report = ScenarioReport {
        scenario: spec.scenario.to_owned(),
        ..ScenarioReport::default()
    };
    let name = spec.scenario;
    let mut tallies: Vec<(&'static str, usize, Tally)> = Vec::new();
    let drops = rt.block_on(async {
        progress.step(format!("{name}: connecting"));
        let broker = InProcBroker::start(&srt).await?;
        let subject = format!("bench.{}.{name}", std::process::id());
        let mut systems = Vec::new();
        for &kind in spec.systems {
            match connect(kind, &broker, &subject, spec.subscribers).await {
                Ok(s) => systems.push(s),
                Err(e) if kind != BrokerKind::Mitto => report
                    .notes
                    .push(format!("{}: skipped, {e:#}", kind.name())),
                Err(e) => return Err(e.context("connecting to mitto's broker")),
            }
        }
        let drops_before = broker.stat("slow_consumer_drops");
        let k = spec.subscribers as u64;
        let (n, max) = slice(
            config.throughput_count,
            config.throughput_time,
            config.slices,
        );
        for &size in spec.sizes {
            for s in &mut systems {
                progress.step(format!("{name} {} {size} B warm-up", s.kind.name()));
                let (w, wmax) = (config.throughput_warmup, config.throughput_time);
                run_burst(s, w, wmax, size).await?;
            }
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
            let mut tally: Vec<Tally> = systems.iter().map(|_| Tally::default()).collect();
            for rep in 0..config.reps {
                let mut accs = vec![ThroughputAcc::default(); systems.len()];
                for part in 0..config.slices.max(1) {
                    for (i, s) in systems.iter_mut().enumerate() {
                        progress.step(format!(
                            "{name} {} {size} B rep {}/{} slice {}/{}",
                            s.kind.name(),
                            rep + 1,
                            config.reps,
                            part + 1,
                            config.slices
                        ));
                        if let Some(b) = run_burst(s, n, max, size).await? {
                            accs[i].add(b.delivered, b.elapsed);
                            tally[i].expected += b.published * k;
                            tally[i].delivered += b.delivered;
                            tally[i].stale += b.stale;
                            tally[i].bursts += 1;
                            tally[i].blocked += u64::from(b.blocked);
                        }
                    }
                }
                for (i, s) in systems.iter().enumerate() {
                    if s.failed.is_none() {
                        samples[i].push(accs[i].msgs_per_s()?);
                    }
                }
            }
            for ((s, values), t) in systems.iter().zip(&samples).zip(tally) {
                if s.failed.is_none() {
                    report.rows.push(super::row_from(
                        name,
                        spec.case,
                        s.kind.name(),
                        Metric::MsgsPerS,
                        size,
                        values,
                    ));
                    tallies.push((s.kind.name(), size, t));
                }
            }
        }
        let drops = broker.stat("slow_consumer_drops") - drops_before;
        for s in systems {
            if let Some(why) = &s.failed {
                report
                    .notes
                    .push(format!("{}: left out, {why}", s.kind.name()));
            }
            s.publisher.close().await;
            for sub in s.subscribers {
                sub.close().await;
            }
        }
        broker.stop(&srt).await?;
        anyhow::Ok(drops)
    })?;
    let mut lines = Vec::new();
    for (system, size, t) in &tallies {
        let pct = if t.expected > 0 {
            100.0 * t.delivered as f64 / t.expected as f64
        } else {
            0.0
        };
        let count = |n: u64| format_value(Metric::MsgsPerS, n as f64);
        let mut line = format!(
            "{system} {size} B {} of {} ({pct:.2}%)",
            count(t.delivered),
            count(t.expected)
        );
        if t.stale > 0 {
            line.push_str(&format!(", {} late from an earlier burst", t.stale));
        }
        if t.blocked > 0 {
            line.push_str(&format!(
                ", publisher still blocked at the time bound in {} of {} bursts",
                t.blocked, t.bursts
            ));
        }
        lines.push(line);
    }
    report.notes.push(format!(
        "delivered / published × subscribers, measured repetitions: {}; mitto broker \
         slow_consumer_drops: {drops}",
        lines.join("; ")
    ));
    report.notes.push(format!(
        "one publisher connection, {} subscriber connection(s), fire-and-forget publishes \
         (mitto's subscriptions with the block policy: a full one holds the publisher, as \
         nats-server's TCP backpressure does, so neither drops); rate = messages received by the subscribers / (last receive - first publish); clients on \
         one current-thread runtime, mitto's broker on the server thread, nats-server and \
         mosquitto in their own processes; the systems take turns in {} slices per repetition.",
        spec.subscribers, config.slices
    ));
    Ok(report)
}

/// `mitto / peer` for every row of `peer` with `metric`: `SIZE B RATIOx`, followed by
/// `(met)` or `(MISSED)` when a target is given.
pub(crate) fn ratios(
    report: &ScenarioReport,
    peer: &str,
    metric: Metric,
    target: Option<f64>,
) -> Vec<String> {
    report
        .rows
        .iter()
        .filter(|r| r.system == peer && r.metric == metric)
        .filter_map(|r| {
            let x = report.mitto_ratio(r)?;
            let verdict = match target {
                None => "",
                Some(t) if (metric.higher_is_better() && x >= t) => " (met)",
                Some(t) if (!metric.higher_is_better() && x <= t) => " (met)",
                Some(_) => " (MISSED)",
            };
            Some(format!("{} B {x:.2}x{verdict}", r.payload_bytes))
        })
        .collect()
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let spec = FanSpec {
        scenario: NAME,
        case: "1-to-1",
        subscribers: 1,
        sizes: &SIZES,
        systems: &[BrokerKind::Mitto, BrokerKind::Nats, BrokerKind::Mosquitto],
    };
    let mut report = run_fan(&spec, config, progress)?;
    let mut head = Vec::new();
    let v = ratios(&report, "nats", Metric::MsgsPerS, Some(TARGET_VS_NATS));
    head.push(format!(
        "mitto / nats msgs/s (target ≥ {TARGET_VS_NATS}x): {}",
        if v.is_empty() {
            "no nats rows".to_owned()
        } else {
            v.join(", ")
        }
    ));
    let v = ratios(&report, "mosquitto", Metric::MsgsPerS, None);
    if !v.is_empty() {
        head.push(format!(
            "mitto / mosquitto msgs/s: {} (rumqttc writes and flushes every publish on its own, \
             so that row is bound by the client as much as by mosquitto)",
            v.join(", ")
        ));
    }
    report.notes.splice(0..0, head);
    Ok(report)
}
