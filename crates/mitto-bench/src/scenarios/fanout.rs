//! `fanout`: one publisher connection, 10 subscriber connections on the same subject, 16 B
//! fire-and-forget publishes; messages per second delivered (the sum over the subscribers,
//! first publish to last receive), through mitto's broker and the nats-server at
//! 127.0.0.1:4222. See `pubsub` for how a burst is measured.

use super::pubsub::{ratios, run_fan, FanSpec};
use crate::config::Config;
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport};
use crate::systems::ends::BrokerKind;

const NAME: &str = "fanout";
/// Subscriber connections.
pub const SUBSCRIBERS: usize = 10;

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let spec = FanSpec {
        scenario: NAME,
        case: "1-to-10",
        subscribers: SUBSCRIBERS,
        sizes: &[16],
        systems: &[BrokerKind::Mitto, BrokerKind::Nats],
    };
    let mut report = run_fan(&spec, config, progress)?;
    let v = ratios(&report, "nats", Metric::MsgsPerS, None);
    report.notes.insert(
        0,
        format!(
            "mitto / nats delivered msgs/s: {}",
            if v.is_empty() {
                "no nats rows".to_owned()
            } else {
                v.join(", ")
            }
        ),
    );
    Ok(report)
}
