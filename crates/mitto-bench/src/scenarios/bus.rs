//! `bus`: in-process messaging of small messages (16 B), mitto's broker embedded in the process
//! (`inproc://`: a publish routes in the publisher's task straight into the subscribers' queues,
//! nothing is encoded) beside bounded `tokio::sync::mpsc` and `flume` channels.
//!
//! Cases: `1->1` (one publisher task, one subscriber task) and `1->8` (one publisher, eight
//! subscribers that each get every message: mitto routes one publish to eight subscriptions on
//! the same subject, each on a client of its own; the channels' publisher sends a clone into
//! each of eight channels). Every queue is bounded at [`CAPACITY`] messages and makes the
//! publisher wait when full (mitto: `Policy::Block`, `max_pending` = [`CAPACITY`]), so nothing
//! may be lost: every receiver's count is checked, and a short one fails the run.
//!
//! The value is messages *delivered* per second: what all subscribers received together (N in
//! `1->1`, 8·N in `1->8`) over the time from the first publish to the last subscriber's last
//! receive. Every system runs on the same tokio multi-thread runtime with two workers
//! (publisher and subscribers are spawned tasks), and the systems take turns slice by slice as
//! in the other throughput scenarios. `mitto-typed` publishes an `Arc` of a 16-byte struct with
//! `publish_shared` and reads it with `subscribe_typed` (the `Arc` itself travels).

use crate::config::Config;
use crate::measure::{slice, ThroughputAcc};
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, MITTO};
use crate::runtime::{bus_runtime, BUS_WORKERS};
use crate::systems::bus_sys::{self, BusKind, EmbeddedBroker, Publisher, Receiver};
use std::time::Duration;

const NAME: &str = "bus";
/// The cases: name and number of subscribers.
pub const CASES: [(&str, usize); 2] = [("1->1", 1), ("1->8", 8)];
/// The channel peers.
pub const PEERS: [&str; 2] = ["tokio-mpsc", "flume"];
/// Every queue's bound, in messages.
pub const CAPACITY: usize = bus_sys::CAPACITY;
/// Payload size, bytes.
pub const PAYLOAD: usize = bus_sys::PAYLOAD;

/// How long after the publishing time bound a burst may take to finish before it counts as
/// stuck (which fails the run).
const HANG: Duration = Duration::from_secs(10);

/// One system's ends for one case, between bursts.
struct BusSystem {
    kind: BusKind,
    publisher: Option<Publisher>,
    receivers: Vec<Receiver>,
}

/// What one burst did.
struct Burst {
    delivered: u64,
    elapsed: Duration,
}

impl BusSystem {
    /// Publishes up to `n` messages (or for `max`) from a spawned publisher task while every
    /// receiver counts them in a spawned task of its own; fails if a receiver got fewer than
    /// were published, or the burst does not end.
    async fn burst(&mut self, n: u64, max: Duration) -> anyhow::Result<Burst> {
        let name = self.kind.name();
        let publisher = self
            .publisher
            .take()
            .ok_or_else(|| anyhow::anyhow!("{name}: the publisher was lost in an earlier burst"))?;
        let receivers: Vec<_> = self
            .receivers
            .drain(..)
            .map(|r| tokio::spawn(r.receive()))
            .collect();
        let sender = tokio::spawn(publisher.publish(n, max));
        let joined = tokio::time::timeout(max + HANG, async {
            let sent = sender.await;
            let mut got = Vec::with_capacity(receivers.len());
            for r in receivers {
                got.push(r.await);
            }
            (sent, got)
        })
        .await;
        let Ok((sent, got)) = joined else {
            anyhow::bail!(
                "{name}: the burst had not ended {:?} after it started (a message was lost or a \
                 queue is stuck)",
                max + HANG
            );
        };
        let (publisher, sent) = sent.map_err(|e| anyhow::anyhow!("{name}: publisher: {e}"))?;
        self.publisher = Some(publisher);
        let sent = sent.map_err(|e| e.context(format!("{name}: publishing")))?;
        let mut out = Burst {
            delivered: 0,
            elapsed: Duration::ZERO,
        };
        let mut last = sent.start;
        let mut failed = None;
        for (i, g) in got.into_iter().enumerate() {
            let (receiver, g) = g.map_err(|e| anyhow::anyhow!("{name}: subscriber {i}: {e}"))?;
            self.receivers.push(receiver);
            match g {
                Ok(g) if g.got == sent.sent => {
                    out.delivered += g.got;
                    last = last.max(g.last);
                }
                Ok(g) => {
                    failed.get_or_insert(anyhow::anyhow!(
                        "{name}: subscriber {i} received {} of {} messages: {} LOST",
                        g.got,
                        sent.sent,
                        sent.sent.saturating_sub(g.got)
                    ));
                }
                Err(e) => {
                    failed.get_or_insert(e.context(format!("{name}: subscriber {i}")));
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        out.elapsed = last - sent.start;
        Ok(out)
    }

    async fn close(mut self) {
        if let Some(p) = self.publisher.take() {
            p.close().await;
        }
        for r in self.receivers {
            r.close().await;
        }
    }
}

/// `mitto / peer` per case, for the notes: `1->1 1.23x, 1->8 0.87x`.
fn ratios(report: &ScenarioReport, peer: &str) -> String {
    let v: Vec<String> = report
        .rows_of(peer)
        .filter_map(|r| Some(format!("{} {:.2}x", r.case, report.mitto_ratio(r)?)))
        .collect();
    if v.is_empty() {
        "no rows".to_owned()
    } else {
        v.join(", ")
    }
}

/// `mitto-typed / peer` per case.
fn typed_ratios(report: &ScenarioReport, peer: &str) -> String {
    let typed = BusKind::MittoTyped.name();
    let v: Vec<String> = report
        .rows_of(peer)
        .filter(|r| r.value > 0.0)
        .filter_map(|r| {
            let t = report.matching(r, typed)?;
            Some(format!("{} {:.2}x", r.case, t.value / r.value))
        })
        .collect();
    v.join(", ")
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let rt = bus_runtime()?;
    let mut report = ScenarioReport {
        scenario: NAME.to_owned(),
        ..ScenarioReport::default()
    };
    let drops = rt.block_on(async {
        progress.step(format!("{NAME}: starting the embedded broker"));
        let broker = EmbeddedBroker::start().await?;
        let drops_before = broker.stat("slow_consumer_drops");
        let (n, max) = slice(config.bus_count, config.bus_time, config.slices);
        for (case, k) in CASES {
            progress.step(format!("{NAME} {case}: connecting"));
            let mut systems = Vec::with_capacity(BusKind::ALL.len());
            for kind in BusKind::ALL {
                // A subject per system and case: a subject carries one type, and no
                // subscription may see another burst's messages.
                let subject = format!("bench.bus.{}.{k}", kind.name());
                let (publisher, receivers) = bus_sys::connect(kind, &broker, &subject, k).await?;
                systems.push(BusSystem {
                    kind,
                    publisher: Some(publisher),
                    receivers,
                });
            }
            for s in &mut systems {
                progress.step(format!("{NAME} {case} {} warm-up", s.kind.name()));
                s.burst(config.bus_warmup, config.bus_time).await?;
            }
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
            for rep in 0..config.reps {
                let mut accs = vec![ThroughputAcc::default(); systems.len()];
                for part in 0..config.slices.max(1) {
                    for (s, acc) in systems.iter_mut().zip(accs.iter_mut()) {
                        progress.step(format!(
                            "{NAME} {case} {} rep {}/{} slice {}/{}",
                            s.kind.name(),
                            rep + 1,
                            config.reps,
                            part + 1,
                            config.slices
                        ));
                        let b = s.burst(n, max).await?;
                        acc.add(b.delivered, b.elapsed);
                    }
                }
                for (out, acc) in samples.iter_mut().zip(&accs) {
                    out.push(acc.msgs_per_s()?);
                }
            }
            for (s, values) in systems.iter().zip(&samples) {
                report.rows.push(super::row_from(
                    NAME,
                    case,
                    s.kind.name(),
                    Metric::MsgsPerS,
                    PAYLOAD,
                    values,
                ));
            }
            for s in systems {
                s.close().await;
            }
        }
        let drops = broker.stat("slow_consumer_drops") - drops_before;
        broker.stop().await;
        anyhow::Ok(drops)
    })?;
    anyhow::ensure!(
        drops == 0,
        "mitto's broker dropped {drops} messages of Policy::Block subscriptions"
    );
    let mut head = Vec::new();
    for peer in PEERS {
        head.push(format!(
            "{MITTO} / {peer} delivered msgs/s: {}; mitto-typed / {peer}: {}",
            ratios(&report, peer),
            typed_ratios(&report, peer)
        ));
    }
    report.notes.splice(0..0, head);
    report.notes.push(format!(
        "msgs/s = messages delivered (received by all subscribers together: N in 1->1, 8·N in \
         1->8) / (last subscriber's last receive - first publish); every subscriber's count \
         checked against the published count (mitto broker slow_consumer_drops: {drops})."
    ));
    report.notes.push(format!(
        "one publisher task, 1 or 8 subscriber tasks, all on one tokio multi-thread runtime \
         with {BUS_WORKERS} workers; every queue bounded at {CAPACITY} messages, the publisher \
         waits when one is full (mitto: inproc:// embedded broker, Policy::Block, \
         max_pending {CAPACITY}, one client per subscriber plus one publishing client; peers: \
         one bounded channel per subscriber, the publisher sends a Bytes clone into each); the \
         systems take turns in {} slices per repetition.",
        config.slices
    ));
    Ok(report)
}
