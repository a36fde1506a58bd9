//! The goals the broker scenarios state beside their ratios: DESIGN.md's performance targets
//! and those of the deployed-layout issue (pub->sub and fan-out against nats-server and
//! Zenoh, request/reply against both), each checked against the same run's rows of `mitto`
//! (the deployed layout, default configuration).

use super::fan::ratios;
use crate::report::{Metric, ScenarioReport};

/// One goal: `mitto / peer` of `metric` at least (rates) or at most (times) `target`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Goal {
    /// The peer row's system.
    pub(crate) peer: &'static str,
    /// What is compared.
    pub(crate) metric: Metric,
    /// The ratio to reach.
    pub(crate) target: f64,
    /// Where the goal comes from.
    pub(crate) source: &'static str,
}

/// The goals of `pubsub` and `fanout`.
pub(crate) const THROUGHPUT: &[Goal] = &[
    Goal {
        peer: "nats",
        metric: Metric::MsgsPerS,
        target: 2.0,
        source: "deployed-layout goal",
    },
    Goal {
        peer: "nats",
        metric: Metric::MsgsPerS,
        target: 3.0,
        source: "DESIGN.md",
    },
    Goal {
        peer: "zenoh-router",
        metric: Metric::MsgsPerS,
        target: 1.5,
        source: "deployed-layout goal",
    },
    Goal {
        peer: "zenoh-peer",
        metric: Metric::MsgsPerS,
        target: 1.0,
        source: "deployed-layout goal",
    },
];

/// The goals of `reqrep`.
pub(crate) const REQUEST_REPLY: &[Goal] = &[
    Goal {
        peer: "nats",
        metric: Metric::P50Us,
        target: 0.6,
        source: "DESIGN.md and deployed-layout goal",
    },
    Goal {
        peer: "nats",
        metric: Metric::P99Us,
        target: 1.0,
        source: "DESIGN.md",
    },
    Goal {
        peer: "zenoh-router",
        metric: Metric::P50Us,
        target: 0.5,
        source: "deployed-layout goal",
    },
];

/// One line per goal: `goal: mitto / PEER METRIC ≥ T (SOURCE): 16 B 1.49x (MISSED), ...`.
pub(crate) fn lines(report: &ScenarioReport, goals: &[Goal]) -> Vec<String> {
    goals
        .iter()
        .map(|g| {
            let v = ratios(report, g.peer, g.metric, Some(g.target));
            let op = if g.metric.higher_is_better() {
                "≥"
            } else {
                "≤"
            };
            format!(
                "goal: mitto / {} {} {op} {}x ({}): {}",
                g.peer,
                g.metric.label(),
                g.target,
                g.source,
                if v.is_empty() {
                    format!("no {} rows", g.peer)
                } else {
                    v.join(", ")
                }
            )
        })
        .collect()
}
