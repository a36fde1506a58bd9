//! `pubsub`: one publisher, one subscriber, fire-and-forget publishes of 16 B and 128 B;
//! messages per second end to end (first publish to last receive, counting only what the
//! subscriber received), CPU per delivered message of all the system's processes, and what
//! was lost. Every system runs in the deployed layout: its broker in a process of its own
//! (`mitto server`, nats-server, a Zenoh router, mosquitto; none for Zenoh peer-to-peer), the
//! publisher and the subscriber in processes of their own (`mitto-bench child pub|sub`). The
//! embedded layout (`mitto-embedded`: the broker inside the benchmark process) is a row of its
//! own. See `fan_deployed` for how a burst is measured.

use super::fan::{ratios, FanSpec};
use super::{fan_deployed, fan_embedded, goals};
use crate::config::Config;
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport};
use crate::systems::deployed::Deployed;

const NAME: &str = "pubsub";
/// Payload sizes.
pub const SIZES: [usize; 2] = [16, 128];
/// The deployed systems, in row order.
const SYSTEMS: &[Deployed] = &[
    Deployed::Mitto,
    Deployed::MittoBlock,
    Deployed::Nats,
    Deployed::Nats4Mi,
    Deployed::ZenohRouter,
    Deployed::ZenohPeer,
    Deployed::Mosquitto,
];

/// How the systems were configured and measured, for the notes of `pubsub` and `fanout`.
pub(crate) fn method_notes(spec: &FanSpec, systems: &[Deployed], config: &Config) -> Vec<String> {
    let mut notes: Vec<String> = systems
        .iter()
        .filter(|s| config.runs(s.name()))
        .map(|s| s.describe())
        .collect();
    notes.push(format!(
        "{}: mitto's broker inside the benchmark process (one current-thread runtime), its \
         publisher and subscribers on another thread of the same process, subscriptions with \
         the block policy",
        fan_embedded::SYSTEM
    ));
    notes.push(format!(
        "one publisher, {} subscriber(s), each a process of its own (`mitto-bench child`, one \
         current-thread runtime; Zenoh on its own runtime threads); fire-and-forget publishes; \
         rate = messages received by the subscribers / (last receive - first publish); CPU \
         µs/msg = CPU time of every process of the system (broker and clients, /proc/PID/stat) \
         over the bursts / messages received; lost = published × subscribers - received; the \
         systems take turns in {} slices per repetition.",
        spec.subscribers, config.slices
    ));
    notes
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let spec = FanSpec {
        scenario: NAME,
        case: "1-to-1",
        subscribers: 1,
        sizes: &SIZES,
    };
    let mut report = fan_deployed::run(&spec, SYSTEMS, config, progress)?;
    let mut head = goals::lines(&report, goals::THROUGHPUT);
    let v = ratios(&report, "mosquitto", Metric::MsgsPerS, None);
    if !v.is_empty() {
        head.push(format!(
            "mitto / mosquitto msgs/s: {} (rumqttc writes and flushes every publish on its own, \
             so that row is bound by the client as much as by mosquitto)",
            v.join(", ")
        ));
    }
    report.notes.splice(0..0, head);
    report.notes.extend(method_notes(&spec, SYSTEMS, config));
    Ok(report)
}
