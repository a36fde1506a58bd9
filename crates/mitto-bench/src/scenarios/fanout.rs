//! `fanout`: one publisher, 10 subscribers on the same subject, 16 B fire-and-forget
//! publishes; messages per second delivered (the sum over the subscribers, first publish to
//! last receive) and CPU per delivered message, every system in the deployed layout (each
//! client a process of its own) beside the embedded layout's `mitto-embedded`. See
//! `fan_deployed` for how a burst is measured.

use super::fan::FanSpec;
use super::{fan_deployed, goals, pubsub};
use crate::config::Config;
use crate::progress::Progress;
use crate::report::ScenarioReport;
use crate::systems::deployed::Deployed;

const NAME: &str = "fanout";
/// Subscriber connections.
pub const SUBSCRIBERS: usize = 10;
/// The deployed systems, in row order.
const SYSTEMS: &[Deployed] = &[
    Deployed::Mitto,
    Deployed::MittoBlock,
    Deployed::Nats,
    Deployed::Nats4Mi,
    Deployed::ZenohRouter,
    Deployed::ZenohPeer,
];

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let spec = FanSpec {
        scenario: NAME,
        case: "1-to-10",
        subscribers: SUBSCRIBERS,
        sizes: &[16],
    };
    let mut report = fan_deployed::run(&spec, SYSTEMS, config, progress)?;
    let head = goals::lines(&report, goals::THROUGHPUT);
    report.notes.splice(0..0, head);
    report
        .notes
        .extend(pubsub::method_notes(&spec, SYSTEMS, config));
    Ok(report)
}
